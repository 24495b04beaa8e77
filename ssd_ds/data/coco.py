"""The COCO 2017 detection Dataset over a COCO-laid-out directory (SPEC section 5): finds a split's images and
annotation file, reads each image and applies the transform.

`root/{train2017,val2017}/` hold the images, `root/annotations/` the instances JSON (the bbox-only copy
`bbox_only_instances_<split>2017.json` is preferred when present, as NVIDIA did, else `instances_<split>2017.json`).
Reading and validating that JSON into records is ssd_ds.data.annotations.

A missing or corrupt image is skipped with a warning and counted, never a crash: a training sample falls back to the
next image (so batches keep their fixed shape), an evaluation sample comes back as None.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Callable

import torch
from PIL import Image, UnidentifiedImageError

from ssd_ds.data.annotations import load_json, parse_coco
from ssd_ds.errors import BadInput, NotFound

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
MAX_FALLBACKS = 16  # consecutive unreadable images tolerated before the dataset is declared broken


def image_dir(root: str | Path, split: str) -> Path:
    """Where a split's images are: `root/<split>2017/`."""
    return Path(root) / f"{split}2017"


def instances_file(root: str | Path, split: str) -> Path:
    """A split's instances JSON as COCO names it: `root/annotations/instances_<split>2017.json`."""
    return Path(root) / "annotations" / f"instances_{split}2017.json"


def annotation_file(root: Path, split: str) -> Path:
    """The annotation file for a split, preferring the bbox-only copy; a clear error when none exists."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    instances = instances_file(root, split)
    if not instances.parent.is_dir():
        raise NotFound(f"{instances.parent}: annotations directory not found (is {root} a COCO-laid-out dataset?)")
    for path in (instances.with_name(f"bbox_only_{instances.name}"), instances):
        if path.is_file():
            return path
    raise NotFound(f"{instances}: annotation file not found")


def read_image_bytes(path: str | Path) -> tuple[torch.Tensor, int, int] | None:
    """(the file's bytes [N] uint8, width, height), or None (with a warning) when the file is missing or its header
    unreadable. PIL reads only the header here; the device decodes (ssd_ds.data.device_input)."""
    try:
        raw = Path(path).read_bytes()
        with Image.open(io.BytesIO(raw)) as img:
            width, height = img.size
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        log.warning("skipping unreadable image %s (%s)", path, exc)
        return None
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8), width, height


class CocoDetection(torch.utils.data.Dataset):
    """Images and boxes of one COCO split; each sample is `transform(image, rec, skipped)`.

    `image` is the RGB PIL image (with `decode=False`, `read_image_bytes`'s (bytes [N] uint8, width, height)), `rec`
    its `ImageRecord` (boxes in pixel ltrb, labels, id, original size) and `skipped` the number of unreadable images
    passed over to reach it. Without a transform a sample is (image, boxes_ltrb [G,4], labels [G], skipped).

    Indexing takes an int, or an `(index, seed)` pair from `TrainSampler`: the seed makes the sample's augmentation
    a pure function of (run seed, epoch, index), independent of workers and of where a resumed run restarts.
    """

    def __init__(self, root: str | Path, split: str, transform: Callable | None = None, skip_to_next: bool = True,
                 decode: bool = True):
        """`decode=False`: samples carry the file's bytes and size (`read_image_bytes`) for the device to decode."""
        root = Path(root)
        if not root.is_dir():
            raise NotFound(f"{root}: dataset directory not found")
        self.image_dir = image_dir(root, split)
        if not self.image_dir.is_dir():
            raise NotFound(f"{self.image_dir}: image directory not found")
        self.ann_file = annotation_file(root, split)
        data = load_json(self.ann_file)
        self.records, self.label_to_category, self.stats = parse_coco(data, self.image_dir, self.ann_file)
        names = {cat["id"]: str(cat.get("name", cat["id"])) for cat in data["categories"]}
        self.class_names = ["background"] + [names[self.label_to_category[label]]
                                             for label in range(1, len(self.label_to_category) + 1)]
        if not self.records:
            raise BadInput(f"{self.ann_file}: no image with a usable box")
        self.num_classes = len(self.label_to_category) + 1  # + background
        self.transform = transform
        self.skip_to_next = skip_to_next
        self.decode = decode
        log.info("%s: %s", self.ann_file, self.stats.summary())

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, index: int) -> Image.Image | tuple[torch.Tensor, int, int] | None:
        """The decoded RGB image (or with `decode=False` the file's bytes and size), or None (with a warning) when the
        file is missing or corrupt."""
        path = self.records[index].path
        if not self.decode:
            return read_image_bytes(path)
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            log.warning("skipping unreadable image %s (%s)", path, exc)
            return None

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        skipped = 0
        image = self.load_image(index)
        while image is None and self.skip_to_next:
            skipped += 1
            if skipped > MAX_FALLBACKS:
                raise RuntimeError(f"{self.image_dir}: {MAX_FALLBACKS} consecutive images unreadable near index "
                                   f"{index}")
            index = (index + 1) % len(self.records)
            image = self.load_image(index)
        if image is None:
            return None
        rec = self.records[index]
        if self.transform is None:
            return image, rec.boxes_ltrb.clone(), rec.labels.clone(), skipped
        if seed is None:
            return self.transform(image, rec, skipped)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image, rec, skipped)

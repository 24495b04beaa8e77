"""COCO 2017 detection dataset over a COCO-laid-out directory (SPEC section 5).

`root/{train2017,val2017}/` hold the images, `root/annotations/` the instances JSON (the bbox-only copy
`bbox_only_instances_<split>2017.json` is preferred when present, as NVIDIA did, else `instances_<split>2017.json`).

- Category ids map to contiguous labels 1..K in the JSON's category order (0 is background); `label_to_category`
  maps back when writing detections.
- Crowd annotations are trained as ordinary boxes, as the reference does.
- Degenerate boxes (zero or negative width/height, or nothing left after clipping to the image) are dropped and
  counted; images left without a box are dropped and counted (117,266 train / 4,952 val remain on COCO 2017).
- A missing or corrupt image is skipped with a warning and counted, never a crash: a training sample falls back to
  the next image (so batches keep their fixed shape), an evaluation sample comes back as None.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
MAX_FALLBACKS = 16  # consecutive unreadable images tolerated before the dataset is declared broken


@dataclass
class DatasetStats:
    """What loading the annotations dropped, reported at start-up."""

    images_in_json: int = 0
    images_without_boxes: int = 0  # dropped: no annotation, or only degenerate ones
    degenerate_boxes: int = 0  # dropped: empty after clipping to the image
    crowd_boxes: int = 0  # kept as ordinary boxes
    kept_images: int = 0
    kept_boxes: int = 0
    per_category: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageRecord:
    """One kept image: its id, file, original size and its boxes in pixel ltrb with contiguous labels."""

    image_id: int
    path: Path
    height: int
    width: int
    boxes_ltrb: torch.Tensor  # [G,4] float32, pixels, clipped to the image
    labels: torch.Tensor  # [G] int64 in 1..K


def annotation_file(root: Path, split: str) -> Path:
    """The annotation file for a split, preferring the bbox-only copy; a clear error when none exists."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    ann_dir = root / "annotations"
    if not ann_dir.is_dir():
        raise FileNotFoundError(f"{ann_dir}: annotations directory not found (is {root} a COCO-laid-out dataset?)")
    for name in (f"bbox_only_instances_{split}2017.json", f"instances_{split}2017.json"):
        if (ann_dir / name).is_file():
            return ann_dir / name
    raise FileNotFoundError(f"{ann_dir / f'instances_{split}2017.json'}: annotation file not found")


def load_json(path: Path) -> dict:
    """Parse a COCO JSON, naming the file on any problem."""
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: malformed JSON ({exc})") from exc
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or key not in data:
            raise ValueError(f"{path}: not a COCO instances file (no '{key}' list)")
    return data


def parse_coco(data: dict, image_dir: Path) -> tuple[list[ImageRecord], dict[int, int], DatasetStats]:
    """Kept images, the contiguous-label -> category-id map, and what was dropped."""
    category_ids = [c["id"] for c in data["categories"]]
    category_to_label = {cid: i + 1 for i, cid in enumerate(category_ids)}
    stats = DatasetStats(images_in_json=len(data["images"]))
    images = {img["id"]: img for img in data["images"]}
    per_image: dict[int, list[tuple[list[float], int]]] = {}
    for ann in data["annotations"]:
        img = images.get(ann["image_id"])
        if img is None:
            stats.degenerate_boxes += 1
            continue
        x, y, w, h = ann["bbox"]
        l, t = max(x, 0.0), max(y, 0.0)
        r, b = min(x + w, img["width"]), min(y + h, img["height"])
        if w <= 0 or h <= 0 or r <= l or b <= t:
            stats.degenerate_boxes += 1
            continue
        stats.crowd_boxes += int(ann.get("iscrowd", 0))
        label = category_to_label[ann["category_id"]]
        stats.per_category[ann["category_id"]] = stats.per_category.get(ann["category_id"], 0) + 1
        per_image.setdefault(img["id"], []).append(([l, t, r, b], label))
    records = []
    for img in data["images"]:  # JSON order, so indices are stable across runs
        anns = per_image.get(img["id"])
        if not anns:
            stats.images_without_boxes += 1
            continue
        records.append(
            ImageRecord(
                image_id=img["id"],
                path=image_dir / img["file_name"],
                height=img["height"],
                width=img["width"],
                boxes_ltrb=torch.tensor([a[0] for a in anns], dtype=torch.float32),
                labels=torch.tensor([a[1] for a in anns], dtype=torch.int64),
            )
        )
        stats.kept_boxes += len(anns)
    stats.kept_images = len(records)
    return records, {v: k for k, v in category_to_label.items()}, stats


class CocoDetection(torch.utils.data.Dataset):
    """Images and boxes of one COCO split; `transform(image, boxes_ltrb_px, labels) -> sample`.

    Indexing takes an int, or an `(index, seed)` pair from `TrainSampler`: the seed makes the sample's augmentation
    a pure function of (run seed, epoch, index), independent of workers and of where a resumed run restarts.
    """

    def __init__(self, root: str | Path, split: str, transform: Callable | None = None, skip_to_next: bool = True):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: dataset directory not found")
        self.image_dir = root / f"{split}2017"
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"{self.image_dir}: image directory not found")
        self.ann_file = annotation_file(root, split)
        self.records, self.label_to_category, self.stats = parse_coco(load_json(self.ann_file), self.image_dir)
        if not self.records:
            raise ValueError(f"{self.ann_file}: no image with a usable box")
        self.num_classes = len(self.label_to_category) + 1  # + background
        self.transform = transform
        self.skip_to_next = skip_to_next
        log.info(
            "%s: %d images kept of %d (%d without boxes dropped), %d boxes (%d degenerate dropped, %d crowd kept)",
            self.ann_file, self.stats.kept_images, self.stats.images_in_json, self.stats.images_without_boxes,
            self.stats.kept_boxes, self.stats.degenerate_boxes, self.stats.crowd_boxes,
        )

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, index: int) -> Image.Image | None:
        """The decoded RGB image, or None (with a warning) when the file is missing or corrupt."""
        path = self.records[index].path
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
                raise RuntimeError(f"{self.image_dir}: {MAX_FALLBACKS} consecutive images unreadable near index {index}")
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

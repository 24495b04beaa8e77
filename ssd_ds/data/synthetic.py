"""A synthetic dataset laid out exactly like COCO 2017, for tests, the CPU demo and runs without the download.

`python -m ssd_ds.data.synthetic OUT_DIR [--train N] [--val N] [--seed S] [--min-size PX] [--max-size PX]
[--workers W] [--hard [--classes K]]`

Writes `train2017/*.jpg`, `val2017/*.jpg` and `annotations/instances_{train,val}2017.json` in the standard COCO
instances format, so the loaders, `bbox_only` and COCOeval run on it unchanged (SPEC section 5). Images are drawn
by `shapes.draw_image`, or with `--hard` by `shapes_hard.draw_hard_image` (K confusable classes, 2-85% object sizes,
occlusion, textured backgrounds); this module plans the splits, writes the files and keeps them trustworthy:

- Deterministic: each image draws from its own generator keyed by (seed, split, index), so the JSON and JPEG
  bytes depend on the seed only, not on the number of worker processes or their scheduling.
- Like COCO in its awkward cases: about 3% of images have no annotations (COCO drops them, SPEC section 5) and
  about 2% of annotations are crowd regions (iscrowd=1, RLE segmentation).
- Atomic: the dataset is written into a hidden sibling directory and renamed into place after its manifest
  (`synthetic.json`) is written, so a killed run never leaves a directory that looks complete.
- Identified: the manifest holds every parameter (the hard variant's adds `"variant": "hard"` and its class count),
  so a directory made with other settings is refused, never taken for the one asked for.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ssd_ds.data import shapes_hard
from ssd_ds.data.shapes import CLASSES, DrawnObject, DrawParams, ShapeClass, draw_image
from ssd_ds.data.shapes_hard import HardParams
from ssd_ds.errors import AlreadyExists, BadInput
from ssd_ds.fileio import atomic_write, read_json

MANIFEST = "synthetic.json"
FORMAT_VERSION = 1  # bump when the drawing changes, so an old directory is not taken for a new one
HARD_VERSION = 3  # the same for the hard variant's drawing alone (2: no object over one of its own colour; 3: 2-6
# objects an image, not 2-12, 0-2 distractors, not 0-6, and overlap 0.35, not 0.5: see docs/data.md)
SPLITS = ("train2017", "val2017")
VAL_ID_OFFSET = 1_000_000  # image and annotation ids are unique across both splits, as in COCO
EMPTY_FRACTION = 0.03  # images listed without annotations
CROWD_IMAGE_FRACTION = 0.07  # images with one crowd region: with 3.5 objects an image, ~2% of annotations
# Below this many images, starting worker processes (each imports numpy and PIL) costs more than it saves.
MIN_IMAGES_FOR_WORKERS = 64


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines the dataset's bytes; written as its manifest and compared on reuse."""

    num_train: int = 2000  # images in train2017
    num_val: int = 300  # images in val2017
    seed: int = 0  # the only source of randomness
    draw: DrawParams = field(default_factory=DrawParams)  # image and object sizes, noise, JPEG; HardParams: hard

    def __post_init__(self) -> None:
        if self.num_train < 1 or self.num_val < 1:
            raise BadInput(f"need at least one image per split, got train={self.num_train}, val={self.num_val}")

    def to_json(self) -> dict:
        """The manifest: these fields plus the format version of the drawing code, and the variant unless default
        (so a default manifest reads as before the hard variant existed, and its directories are still reused)."""
        variant = _variant(self.draw)
        extra = {} if variant.name == "default" else {"variant": variant.name, "variant_version": HARD_VERSION}
        return {"format_version": FORMAT_VERSION, **extra, **asdict(self)}


@dataclass(frozen=True)
class _Variant:
    """What the drawing parameters' type selects: a name for the manifest, the classes, the drawing function."""

    name: str
    classes: tuple[ShapeClass, ...]
    draw_image: Callable  # (rng, params, kind) -> (PIL image, [DrawnObject])


def _variant(draw: DrawParams) -> _Variant:
    if isinstance(draw, HardParams):
        return _Variant("hard", shapes_hard.hard_classes(draw.classes), shapes_hard.draw_hard_image)
    return _Variant("default", CLASSES, draw_image)


@dataclass(frozen=True)
class _ImageTask:
    """One image to draw and write; small, so it pickles cheaply to a worker."""

    seed: int
    split_code: int
    index: int
    kind: str  # "objects", "crowd" or "empty" (see shapes.draw_image)
    path: str
    draw: DrawParams


def _plan_kinds(seed: int, split_code: int, n: int) -> list[str]:
    """Which images are empty and which hold a crowd: fixed counts at seeded places, so even a small split has
    at least one of each (while keeping at least one ordinary image)."""
    n_empty = min(math.ceil(EMPTY_FRACTION * n), n - 1)
    n_crowd = min(math.ceil(CROWD_IMAGE_FRACTION * n), n - 1 - n_empty)
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, split_code))).permutation(n)
    kinds = ["objects"] * n
    for i in order[:n_empty]:
        kinds[i] = "empty"
    for i in order[n_empty : n_empty + n_crowd]:
        kinds[i] = "crowd"
    return kinds


def _render(task: _ImageTask) -> tuple[int, int, list[DrawnObject]]:
    """Draw one image, write its JPEG; -> (width, height, objects). Runs in a worker process."""
    rng = np.random.default_rng(np.random.SeedSequence(task.seed, spawn_key=(1, task.split_code, task.index)))
    image, objects = _variant(task.draw).draw_image(rng, task.draw, task.kind)
    image.save(task.path, format="JPEG", quality=task.draw.jpeg_quality)
    return image.width, image.height, objects


def _coco_json(
    split: str, drawn: list[tuple[int, int, list[DrawnObject]]], id_offset: int, draw: DrawParams
) -> dict:
    """The COCO instances document for one split, in image order (ids are 1-based, as in COCO)."""
    images, annotations = [], []
    for index, (width, height, objects) in enumerate(drawn):
        image_id = id_offset + index + 1
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": height, "width": width})
        for obj in objects:
            annotations.append(
                {
                    "id": id_offset + len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj.category_id,
                    "bbox": list(obj.bbox_xywh),
                    "area": obj.area,
                    "iscrowd": obj.iscrowd,
                    "segmentation": obj.segmentation,
                }
            )
    variant = _variant(draw)
    title = "ssd_ds synthetic shapes" if variant.name == "default" else f"ssd_ds synthetic shapes ({variant.name})"
    return {
        "info": {"description": f"{title}, {split}", "version": str(FORMAT_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c.category_id, "name": c.name, "supercategory": "shape"} for c in variant.classes],
    }


def _write_split(root: Path, split_code: int, n: int, cfg: SynthConfig, pool: ProcessPoolExecutor | None) -> None:
    """Draw split `split_code` (0 train, 1 val) into root/<split>/ and write its annotation file."""
    split = SPLITS[split_code]
    id_offset = VAL_ID_OFFSET * split_code
    (root / split).mkdir()
    tasks = [
        _ImageTask(
            seed=cfg.seed, split_code=split_code, index=i, kind=kind,
            path=str(root / split / f"{id_offset + i + 1:012d}.jpg"), draw=cfg.draw,
        )
        for i, kind in enumerate(_plan_kinds(cfg.seed, split_code, n))
    ]
    drawn = list(pool.map(_render, tasks, chunksize=16) if pool is not None else map(_render, tasks))
    doc = _coco_json(split, drawn, id_offset, cfg.draw)
    atomic_write(root / "annotations" / f"instances_{split}.json", json.dumps(doc, separators=(",", ":")))


def _write_dataset(root: Path, cfg: SynthConfig, workers: int) -> None:
    (root / "annotations").mkdir()
    pool = None
    if workers > 1 and cfg.num_train + cfg.num_val >= MIN_IMAGES_FOR_WORKERS:
        # spawn, not fork: the caller may hold torch's thread pools, which a forked child can deadlock on.
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        _write_split(root, 0, cfg.num_train, cfg, pool)
        _write_split(root, 1, cfg.num_val, cfg, pool)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    # Written last: its presence is what marks the directory complete.
    atomic_write(root / MANIFEST, json.dumps(cfg.to_json(), indent=2, sort_keys=True) + "\n")


def is_complete(out_dir: str | Path) -> bool:
    """True when out_dir holds a finished synthetic dataset: its manifest and the COCO layout are present."""
    root = Path(out_dir)
    expected = [root / MANIFEST]
    for split in SPLITS:
        expected += [root / split, root / "annotations" / f"instances_{split}.json"]
    return all(p.exists() for p in expected)


def read_manifest(out_dir: str | Path) -> dict:
    """The parameters a finished synthetic dataset was generated with (the JSON of `SynthConfig.to_json`)."""
    return read_json(Path(out_dir) / MANIFEST, "synthetic data set manifest")


def _config(
    num_train: int, num_val: int, seed: int, min_size: int, max_size: int, hard_classes: int | None
) -> SynthConfig:
    if hard_classes is None:
        return SynthConfig(num_train, num_val, seed, DrawParams(min_size=min_size, max_size=max_size))
    return SynthConfig(num_train, num_val, seed, HardParams(min_size=min_size, max_size=max_size, classes=hard_classes))


def _default_workers() -> int:
    """The CPUs this process may use (affinity, not the machine's count), at most 8."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, usable))


def generate(
    out_dir: str | Path,
    num_train: int = 2000,
    num_val: int = 300,
    seed: int = 0,
    *,
    min_size: int = 160,
    max_size: int = 480,
    workers: int | None = None,
    hard_classes: int | None = None,
) -> Path:
    """Write a new synthetic COCO-2017-style dataset at out_dir and return its path.

    out_dir must not exist or be empty (FileExistsError otherwise). The dataset appears there only when complete.
    workers: processes drawing images (default: the usable CPUs, at most 8); the output does not depend on it.
    hard_classes: None for the default six-class set, K for the hard variant with K classes (shapes_hard.py).
    """
    cfg = _config(num_train, num_val, seed, min_size, max_size, hard_classes)
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        raise AlreadyExists(f"{root} exists and is not empty; remove it or choose another directory")
    root.parent.mkdir(parents=True, exist_ok=True)
    # A sibling, so the final rename stays on one filesystem and is atomic.
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset should read like any other directory
        _write_dataset(tmp, cfg, workers or _default_workers())
        try:
            os.rename(tmp, root)  # replaces an empty directory; fails if another writer finished first
        except OSError as exc:
            raise AlreadyExists(f"{root} appeared while generating; not replacing it") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def ensure_synthetic(
    out_dir: str | Path,
    num_train: int = 2000,
    num_val: int = 300,
    seed: int = 0,
    *,
    min_size: int = 160,
    max_size: int = 480,
    workers: int | None = None,
    hard_classes: int | None = None,
) -> Path:
    """The synthetic dataset at out_dir, generated first if absent; safe to call from several processes.

    An existing complete dataset made with other parameters raises ValueError, and a non-empty directory that is
    not a complete dataset raises FileExistsError: neither is deleted, since it may be someone's data.
    """
    wanted = _config(num_train, num_val, seed, min_size, max_size, hard_classes).to_json()
    root = Path(out_dir)
    if not is_complete(root):
        try:
            return generate(root, num_train, num_val, seed, min_size=min_size, max_size=max_size, workers=workers,
                            hard_classes=hard_classes)
        except FileExistsError:
            if not is_complete(root):  # not a concurrent writer that won the race: a foreign or broken directory
                raise AlreadyExists(
                    f"{root} exists but is not a complete synthetic dataset (no {MANIFEST} or missing files); "
                    f"remove it to regenerate"
                ) from None
    found = read_manifest(root)
    if found != wanted:
        raise BadInput(f"{root} holds a synthetic dataset made with {found}, not the requested {wanted}")
    return root


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--train", type=int, default=2000, help="images in train2017")
    parser.add_argument("--val", type=int, default=300, help="images in val2017")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-size", type=int, default=160, help="shortest image side, pixels")
    parser.add_argument("--max-size", type=int, default=480, help="longest image side, pixels")
    parser.add_argument("--workers", type=int, default=None, help="drawing processes (default: usable CPUs, <= 8)")
    parser.add_argument("--hard", action="store_true", help="the hard variant (shapes_hard.py) instead of the default")
    parser.add_argument("--classes", type=int, default=None, help=f"classes of the hard variant, "
                        f"{shapes_hard.MIN_CLASSES}..{shapes_hard.MAX_CLASSES} (default {HardParams.classes})")
    args = parser.parse_args(argv)
    if args.classes is not None and not args.hard:
        parser.error("--classes needs --hard: the default variant has its six classes")
    hard = (HardParams.classes if args.classes is None else args.classes) if args.hard else None
    start = time.perf_counter()
    existed = is_complete(args.out_dir)
    root = ensure_synthetic(
        args.out_dir, args.train, args.val, args.seed,
        min_size=args.min_size, max_size=args.max_size, workers=args.workers, hard_classes=hard,
    )
    verb = "already present" if existed else f"written in {time.perf_counter() - start:.1f} s"
    variant = "" if hard is None else f", hard variant with {hard} classes"
    print(f"synthetic COCO ({args.train} train, {args.val} val, seed {args.seed}{variant}) at {root}: {verb}")
    return root


if __name__ == "__main__":
    from ssd_ds.cli import run_cli

    run_cli(main)

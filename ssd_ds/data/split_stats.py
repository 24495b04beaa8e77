"""What `python -m ssd_ds.data.check` measures of one split, as the trainer reads it: the readable images' boxes
(`scan_split` decodes every image), their COCO size buckets and boxes per image, and how well a set of default boxes
covers them (`measure_coverage`). `ssd_ds.data.check` prints it, `ssd_ds.data.check_report` draws it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from pycocotools.cocoeval import Params
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ssd_ds.anchor_fit import best_default_iou, is_covered, share_by_group
from ssd_ds.anchors import AnchorConfig, default_boxes_ltrb
from ssd_ds.data.annotations import DatasetStats
from ssd_ds.data.coco import CocoDetection

# COCOeval's area ranges (pycocotools Params.areaRng): small up to 32^2, medium up to 96^2, large above, in pixels of
# the original image. A box exactly on a bound counts in the lower bucket here; COCOeval counts it in both.
SIZE_NAMES = ("small", "medium", "large")
SIZE_BOUNDS = torch.tensor([float(hi) for _, hi in Params(iouType="bbox").areaRng[1:3]], dtype=torch.float64)
BOXES_PER_IMAGE_BINS = ((1, 1), (2, 5), (6, 10), (11, 20), (21, 50), (51, 100), (101, None))


@dataclass
class SplitCheck:
    """One split as the trainer reads it; the boxes are those of the readable kept images."""

    name: str
    ann_file: Path
    stats: DatasetStats
    class_names: list[str]  # index = label, 0 = background
    images: int  # readable kept images
    unreadable: list[Path]
    resized: list[str]  # images whose decoded size is not the annotation file's
    longest_unreadable_run: int  # consecutive unreadable images, in the trainer's wrap-around order
    boxes_per_image: torch.Tensor  # [N] long, per readable image
    gt_ltrb: torch.Tensor  # [G,4] relative to the image (so to the square input)
    labels: torch.Tensor  # [G] long, 1..K
    area: torch.Tensor  # [G] float64, pixels^2 of the original image

    @property
    def size_bucket(self) -> torch.Tensor:
        """[G] 0 small, 1 medium, 2 large (COCO's buckets by box area in the original image)."""
        return torch.bucketize(self.area, SIZE_BOUNDS)

    def input_wh(self, input_size: int) -> torch.Tensor:
        """[G,2] box width and height in pixels of the square input."""
        return (self.gt_ltrb[:, 2:] - self.gt_ltrb[:, :2]) * input_size


@dataclass
class Coverage:
    """Best default-box IoU of each box of a split under one set of default boxes, and its covered shares."""

    label: str  # "cpu_small's scales", "fitted scales"
    scales: tuple[float, ...]
    best_iou: torch.Tensor  # [G]
    overall: float
    per_size: torch.Tensor  # [3], NaN where no box
    per_class: torch.Tensor  # [K+1], index = label; NaN where no box


def measure_coverage(check: SplitCheck, anchors: AnchorConfig, label: str) -> Coverage:
    best = best_default_iou(check.gt_ltrb, default_boxes_ltrb(anchors))
    covered = is_covered(best)
    return Coverage(label, tuple(anchors.scales), best, covered.double().mean().item(),
                    share_by_group(covered, check.size_bucket, len(SIZE_NAMES)),
                    share_by_group(covered, check.labels, len(check.class_names)))


def longest_cyclic_run(flags: list[bool]) -> int:
    """The longest run of True in `flags` read as a ring (the trainer's fallback wraps from the last image to the
    first)."""
    if all(flags):
        return len(flags)
    best = run = 0
    for flag in flags + flags:  # twice round: a run across the end is counted whole
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def scan_split(dataset: CocoDetection, split: str, workers: int) -> SplitCheck:
    """Decode every kept image as the trainer does (`CocoDetection.load_image`) and gather the readable ones' boxes."""

    def decoded_size(index: int) -> tuple[int, int] | None:
        image = dataset.load_image(index)  # None, with the dataset's own warning, when unreadable
        return None if image is None else image.size

    with logging_redirect_tqdm(), ThreadPoolExecutor(max(1, workers)) as pool:
        sizes = list(tqdm(pool.map(decoded_size, range(len(dataset))), total=len(dataset), unit="img",
                          desc=f"decoding {split}", disable=None))
    readable = [rec for rec, size in zip(dataset.records, sizes) if size is not None]
    resized = [f"{rec.path}: {size[0]}x{size[1]}, the annotations say {rec.width}x{rec.height}"
               for rec, size in zip(dataset.records, sizes) if size is not None and size != (rec.width, rec.height)]
    if readable:
        gt_px = torch.cat([rec.boxes_ltrb for rec in readable]).double()
        whwh = torch.cat([torch.tensor([[rec.width, rec.height] * 2], dtype=torch.float64).expand(len(rec.labels), 4)
                          for rec in readable])
        labels = torch.cat([rec.labels for rec in readable])
    else:
        gt_px, whwh, labels = torch.zeros(0, 4, dtype=torch.float64), torch.ones(0, 4), torch.zeros(0, dtype=torch.long)
    return SplitCheck(
        name=split, ann_file=dataset.ann_file, stats=dataset.stats, class_names=dataset.class_names,
        images=len(readable), unreadable=[rec.path for rec, size in zip(dataset.records, sizes) if size is None],
        resized=resized, longest_unreadable_run=longest_cyclic_run([size is None for size in sizes]),
        boxes_per_image=torch.tensor([len(rec.labels) for rec in readable], dtype=torch.long),
        gt_ltrb=(gt_px / whwh).float(), labels=labels,
        area=(gt_px[:, 2] - gt_px[:, 0]) * (gt_px[:, 3] - gt_px[:, 1]))


def boxes_per_image_counts(boxes_per_image: torch.Tensor) -> list[tuple[str, int]]:
    """(bucket label, images) over BOXES_PER_IMAGE_BINS."""
    counts = []
    for lo, hi in BOXES_PER_IMAGE_BINS:
        inside = boxes_per_image >= lo if hi is None else (boxes_per_image >= lo) & (boxes_per_image <= hi)
        counts.append((f"{lo}+" if hi is None else str(lo) if lo == hi else f"{lo}-{hi}", int(inside.sum())))
    return counts

"""The training batch: one named shape from the loader workers to the step, whoever encodes the boxes.

A batch always carries the augmented boxes, padded, with their labels and counts; when the loader workers encoded
them against the default boxes (the CPU path) it also carries the encoded targets, and otherwise the device encodes
them in the step (`ssd_ds.loop.train_step`). Which of the two happens is decided once per run
(`ssd_ds.speedups.input_on_device`) and reaches the step as `DeviceOps.encode` (None: the workers encode); the step
follows that decision and raises on a batch that disagrees with it, never inferring it from the tensors.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

MIN_BOX_SLOTS = 8  # boxes per image in a batch: the largest count rounded up to a power of two, at least this


class TrainSample(NamedTuple):
    """One augmented image as a loader worker returns it."""

    image: torch.Tensor  # [3,S,S] uint8
    boxes: torch.Tensor  # [G,4] float32, relative ltrb
    labels: torch.Tensor  # [G] int64 in 1..K
    loc_t: torch.Tensor | None  # [A,4] encoded in the worker, or None
    labels_t: torch.Tensor | None  # [A] int64, or None
    skipped: int  # unreadable images passed over to reach this one


class Batch(NamedTuple):
    """A micro-batch: images, padded boxes, and the encoded targets when the workers encoded them."""

    images: torch.Tensor  # [B,3,S,S] uint8 (normalised on the device)
    boxes: torch.Tensor  # [B,G,4] float32 relative ltrb; rows past num_boxes are zero
    labels: torch.Tensor  # [B,G] int64; 0 (background) past num_boxes
    num_boxes: torch.Tensor  # [B] int64
    loc_t: torch.Tensor | None  # [B,A,4] float32 encoded by the workers; None: the device encodes
    labels_t: torch.Tensor | None  # [B,A] int64, likewise
    skipped: int  # unreadable images in the batch's draw, replaced by the next readable ones

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        """The batch with every tensor on `device` (dtypes kept: images stay uint8)."""
        return Batch(*(t.to(device, non_blocking=non_blocking) if isinstance(t, torch.Tensor) else t for t in self))

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in self if isinstance(t, torch.Tensor)]


def box_slots(largest: int) -> int:
    """G for a batch whose largest image has `largest` boxes: the next power of two, at least MIN_BOX_SLOTS.

    The device's matching work is B x G x A and COCO images hold far fewer than max_boxes (mean 7, batch maxima
    ~40-90); powers of two bound the encode kernel's specialisations to five (G = 8 ... 128). Padding rows never
    match, so the targets do not depend on G."""
    return max(MIN_BOX_SLOTS, 1 << max(largest - 1, 0).bit_length())


def box_slot_counts(max_boxes: int) -> list[int]:
    """Every G a batch of images holding at most `max_boxes` boxes each is padded to (8, 16, ... box_slots(max_boxes)):
    the shapes the encode kernel is compiled for."""
    return sorted({box_slots(n) for n in range(max_boxes + 1)})


def pad_boxes(boxes: list[torch.Tensor], labels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image boxes [G_i,4] and labels [G_i] -> (boxes [B,G,4], labels [B,G], num_boxes [B]), G = box_slots."""
    counts = [len(lab) for lab in labels]
    G = box_slots(max(counts, default=0))
    padded_boxes = torch.zeros(len(boxes), G, 4)
    padded_labels = torch.zeros(len(boxes), G, dtype=torch.int64)
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        padded_boxes[i, : counts[i]] = b
        padded_labels[i, : counts[i]] = lab
    return padded_boxes, padded_labels, torch.tensor(counts, dtype=torch.int64)


def collate_train(samples: list[TrainSample]) -> Batch:
    """Stack samples into a Batch, boxes padded to `box_slots`."""
    boxes, labels, num_boxes = pad_boxes([s.boxes for s in samples], [s.labels for s in samples])
    encoded = samples[0].loc_t is not None
    return Batch(
        images=torch.stack([s.image for s in samples]),
        boxes=boxes,
        labels=labels,
        num_boxes=num_boxes,
        loc_t=torch.stack([s.loc_t for s in samples]) if encoded else None,
        labels_t=torch.stack([s.labels_t for s in samples]) if encoded else None,
        skipped=sum(s.skipped for s in samples),
    )


def synthetic_batch(micro_batch: int, input_size: int, max_boxes: int, generator: torch.Generator | None = None):
    """Random pixels and boxes in the shapes the loader ships (warm-up and benchmarks; no training data touched):
    (images [B,3,S,S] uint8, gt_ltrb [B,max_boxes,4] relative, gt_labels [B,max_boxes]), 8 boxes an image."""
    generator = generator or torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (micro_batch, 3, input_size, input_size), dtype=torch.uint8, generator=generator)
    G = min(max_boxes, 8)
    xy = torch.rand(micro_batch, G, 2, generator=generator) * 0.6
    wh = 0.1 + torch.rand(micro_batch, G, 2, generator=generator) * 0.3
    gt_ltrb = torch.zeros(micro_batch, max_boxes, 4)
    gt_labels = torch.zeros(micro_batch, max_boxes, dtype=torch.int64)
    gt_ltrb[:, :G] = torch.cat([xy, xy + wh], dim=2)
    gt_labels[:, :G] = 1
    return images, gt_ltrb, gt_labels

"""Inference post-processing (SPEC section 6): decode, softmax, per-class threshold/top-k/NMS, per-image top-k,
then COCO result records in original-image coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torchvision.ops import box_convert, nms

from ssd_ds.box_coder import BoxCoder, decode_offsets


@dataclass(frozen=True)
class PostprocessConfig:
    """SPEC section 6 constants."""

    score_threshold: float = 0.05  # keep class scores strictly above this
    topk_per_class: int = 200  # candidates per class before NMS
    nms_iou: float = 0.5  # greedy NMS IoU threshold, per class
    max_detections: int = 200  # detections kept per image over all classes


def detect_image(
    boxes_ltrb: torch.Tensor, scores: torch.Tensor, cfg: PostprocessConfig = PostprocessConfig()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image: boxes_ltrb [A,4] relative, scores [A,C] softmax -> (boxes [N,4], scores [N], labels [N] in 1..C-1).

    Sorted by score, descending; N <= max_detections.
    """
    A, C = scores.shape
    cls_scores = scores[:, 1:]  # skip background
    k = min(cfg.topk_per_class, A)
    top_scores, top_idx = cls_scores.topk(k, dim=0)  # [k, C-1] per class
    keep = top_scores > cfg.score_threshold
    anchor_idx = top_idx[keep]
    labels = torch.arange(1, C, device=scores.device).expand(k, C - 1)[keep]
    cand_scores = top_scores[keep]
    cand_boxes = boxes_ltrb[anchor_idx]
    kept = nms_by_group(cand_boxes, cand_scores, labels, cfg.nms_iou)[: cfg.max_detections]
    return cand_boxes[kept], cand_scores[kept], labels[kept]


class Detections(NamedTuple):
    """A batch's detections, padded to max_detections: image i's are the first counts[i] rows, by decreasing score."""

    boxes: torch.Tensor  # [B,M,4] relative ltrb
    scores: torch.Tensor  # [B,M]
    labels: torch.Tensor  # [B,M] int64 in 1..C-1 (0 in the padding)
    counts: torch.Tensor  # [B] int64

    def per_image(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(boxes [N,4], scores [N], labels [N]) per image: the one host sync, for what reads them on the host."""
        return [(self.boxes[i, :n], self.scores[i, :n], self.labels[i, :n]) for i, n in enumerate(self.counts.tolist())]


def select_detections(
    boxes_ltrb: torch.Tensor, scores: torch.Tensor, cfg: PostprocessConfig = PostprocessConfig(),
    multiclass_nms: Callable[..., torch.Tensor] | None = None,
) -> Detections:
    """`detect_image` for a whole batch at once: boxes_ltrb [B,A,4], scores [B,A,C] -> Detections, image by image
    the same detections in the same order.

    One top-k, one threshold and one NMS over the batch: every (image, class) pair is an NMS group, kept apart by
    offsetting its boxes (in float64, so the offsets cost the IoUs no precision), then each image's first
    max_detections by rank. No loop over images or classes; the outputs have fixed shapes, but the threshold's mask
    and the NMS keep data-dependent numbers of candidates, so on CUDA the host waits for the device there (a few
    syncs a batch, none an image).

    `multiclass_nms(boxes [B,A,4], scores [B,C-1,A], iou, score_threshold) -> [N,3] (image, class, anchor)` replaces
    the threshold and the NMS when given: ONNX's NonMaxSuppression, which has no float64 (ssd_ds.export)."""
    B, A, C = scores.shape
    k = min(cfg.topk_per_class, A)
    top_scores, top_idx = scores[:, :, 1:].topk(k, dim=1)  # [B, k, C-1] per image and class
    if multiclass_nms is None:
        keep = top_scores > cfg.score_threshold
        image = torch.arange(B, device=scores.device).view(B, 1, 1).expand_as(top_idx)[keep]
        labels = torch.arange(1, C, device=scores.device).expand_as(top_idx)[keep]
        cand_scores = top_scores[keep]
        cand_boxes = boxes_ltrb[image, top_idx[keep]]
        kept = nms_by_group(cand_boxes, cand_scores, image * C + labels, cfg.nms_iou)  # score order, all images
    else:  # the top-k as a dense [B, C-1, A] score map (0 elsewhere), thresholded and NMSed by the op
        dense = torch.zeros_like(scores[:, :, 1:]).scatter(1, top_idx, top_scores).transpose(1, 2)
        image, cls, anchor = multiclass_nms(boxes_ltrb, dense, cfg.nms_iou, cfg.score_threshold).unbind(1)
        labels, cand_scores, cand_boxes = cls + 1, dense[image, cls, anchor], boxes_ltrb[image, anchor]
        kept = cand_scores.argsort(descending=True)
    return _first_per_image(cand_boxes, cand_scores, labels, image, kept, B, cfg.max_detections)


def _first_per_image(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, image: torch.Tensor,
                     kept: torch.Tensor, B: int, M: int) -> Detections:
    """Detections from candidates (boxes [N,4], scores, labels, image [N]) kept in score order (`kept`): each image's
    first M, padded."""
    order = image[kept] * kept.numel() + torch.arange(kept.numel(), device=kept.device)  # unique: no stable sort
    kept = kept[order.argsort()]  # by image, score order within each
    owner = image[kept]
    counts = torch.zeros(B, dtype=torch.int64, device=scores.device).scatter_add_(0, owner, torch.ones_like(owner))
    rank = torch.ones_like(owner).cumsum(0) - 1 - (counts.cumsum(0) - counts)[owner]  # position within its image
    first = rank < M
    kept, owner, rank = kept[first], owner[first], rank[first]
    out = Detections(boxes.new_zeros(B, M, 4, dtype=torch.float32), scores.new_zeros(B, M),
                     torch.zeros(B, M, dtype=torch.int64, device=scores.device), counts.clamp(max=M))
    out.boxes[owner, rank] = boxes[kept].float()
    out.scores[owner, rank] = scores[kept]
    out.labels[owner, rank] = labels[kept]
    return out


def nms_by_group(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou: float) -> torch.Tensor:
    """Indices kept by greedy NMS within each group, in decreasing score: torchvision's coordinate trick, always
    (batched_nms switches to a Python loop over groups for large inputs: thousands of image-class groups here).

    Two sentinel boxes, each alone in a group below every real one and scoring below every real box, are always kept
    and always last, and sliced off: they make the span of the coordinates defined when there are no boxes, without a
    branch on the data-dependent box count, and they keep an exported program valid on a batch with fewer than two
    candidates (torchvision's fake `nms` declares at least two kept boxes, which torch.export asserts at run time)."""
    sentinels = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2, dtype=torch.float64, device=boxes.device)
    boxes = torch.cat([boxes.double(), sentinels])
    scores = torch.cat([scores.double(), torch.full((2,), -1.0, dtype=torch.float64, device=scores.device)])
    groups = torch.cat([groups, torch.tensor([-1, -2], dtype=groups.dtype, device=groups.device)])
    offsets = groups.to(torch.float64) * (boxes.max() - boxes.min() + 1)
    kept = nms(boxes + offsets[:, None], scores, iou)
    return kept[: kept.shape[0] - 2]


def decode_scores(
    locs: torch.Tensor, logits: torch.Tensor, dboxes_cxcywh: torch.Tensor, score_threshold: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """locs [B,A,4], logits [B,A,C] -> (boxes_ltrb [B,A,4], softmax scores [B,A,C]), both fp32.

    Scores <= score_threshold are set to 0: `detect_image` keeps only scores above the threshold, so the zeros change
    no detection. This is the spec of the fused Triton kernel (triton_kernels/decode.py).
    """
    scores = torch.softmax(logits.float(), dim=-1)
    return decode_offsets(locs, dboxes_cxcywh), scores.masked_fill(scores <= score_threshold, 0.0)


@torch.no_grad()
def postprocess(
    locs: torch.Tensor,
    logits: torch.Tensor,
    coder: BoxCoder,
    cfg: PostprocessConfig = PostprocessConfig(),
    decode: Callable[..., tuple[torch.Tensor, torch.Tensor]] = decode_scores,
) -> Detections:
    """Batch: locs [B,A,4], logits [B,A,C] -> Detections (per image: boxes_ltrb relative, scores, labels).

    `decode` is `decode_scores` or a kernel of the same signature (ssd_ds.device_ops.decode_scores_fn).
    """
    boxes, scores = decode(locs, logits, coder.dboxes_cxcywh, cfg.score_threshold)
    return select_detections(boxes, scores, cfg)


def to_coco_results(
    detections: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    image_ids: list[int],
    sizes_hw: list[tuple[int, int]],
    label_to_category: dict[int, int],
) -> list[dict]:
    """COCO result records `{image_id, bbox: [x, y, w, h], score, category_id}` in original pixel coordinates."""
    results = []
    for (boxes, scores, labels), image_id, (h, w) in zip(detections, image_ids, sizes_hw):
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=boxes.device)
        xywh = box_convert(boxes.clamp(0, 1) * scale, "xyxy", "xywh").tolist()
        for box, score, label in zip(xywh, scores.tolist(), labels.tolist()):
            results.append(
                {
                    "image_id": int(image_id),
                    "bbox": box,
                    "score": score,
                    "category_id": label_to_category[int(label)],
                }
            )
    return results

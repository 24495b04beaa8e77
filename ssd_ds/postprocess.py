"""Inference post-processing (SPEC section 6): decode, softmax, per-class threshold/top-k/NMS, per-image top-k,
then COCO result records in original-image coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torchvision.ops import batched_nms, box_convert

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
    kept = batched_nms(cand_boxes, cand_scores, labels, cfg.nms_iou)[: cfg.max_detections]
    return cand_boxes[kept], cand_scores[kept], labels[kept]


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
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Batch: locs [B,A,4], logits [B,A,C] -> per image (boxes_ltrb [N,4] relative, scores [N], labels [N]).

    `decode` is `decode_scores` or a kernel of the same signature (triton_kernels.select.decode_scores_fn).
    """
    boxes, scores = decode(locs, logits, coder.dboxes_cxcywh, cfg.score_threshold)
    return [detect_image(b, s, cfg) for b, s in zip(boxes, scores)]


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

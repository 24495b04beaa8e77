"""Matching ground truth to default boxes, offset encoding and decoding (SPEC section 3).

`BoxCoder.encode_batch` takes a padded batch (`gt_ltrb[B,G,4]`, `gt_labels[B,G]`, `num_gt[B]`) and returns fixed-shape
targets (`loc_t[B,A,4]`, `labels_t[B,A]`); `encode` is the one-image form the data pipeline uses, and `encode_batch`
the functional form of tensors only. All handle images with no ground truth (all anchors background). Boxes are
relative ltrb in [0, 1].
"""

from __future__ import annotations

import torch
from torchvision.ops import box_convert, box_iou

# SPEC section 3: centre offsets are scaled by 1/0.1, log size ratios by 1/0.2.
SCALE_XY = 0.1
SCALE_WH = 0.2
FORCED_IOU = 2.0  # the forcing rule's IoU: above any real IoU, so the forced anchor is always positive
IOU_THRESHOLD = 0.5  # positive when IoU > 0.5, strictly


def match(gt_ltrb: torch.Tensor, num_gt: torch.Tensor, dboxes_ltrb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ground truth per default box, with the forcing rule.

    gt_ltrb [B,G,4], num_gt [B], dboxes_ltrb [A,4] -> (best_gt [B,A] long, best_iou [B,A]).
    Padding rows (index >= num_gt) never match. For each real GT its best default box gets IoU 2.0 and is assigned
    to it; when several GTs pick the same default box the later GT wins (the reference's loop order).
    """
    B, G, _ = gt_ltrb.shape
    A = dboxes_ltrb.shape[0]
    if G == 0:
        zeros = torch.zeros(B, A, dtype=torch.long, device=dboxes_ltrb.device)
        return zeros, torch.zeros(B, A, device=dboxes_ltrb.device)
    valid = torch.arange(G, device=gt_ltrb.device)[None, :] < num_gt[:, None]  # [B,G]
    iou = box_iou(gt_ltrb.reshape(B * G, 4).float(), dboxes_ltrb).reshape(B, G, A)
    iou = iou.masked_fill(~valid[:, :, None], -1.0)
    best_iou, best_gt = iou.max(dim=1)  # [B,A]: ties go to the first GT, as torch.max does in the reference
    best_anchor = iou.argmax(dim=2)  # [B,G]
    # Forcing: the highest GT index that picked an anchor wins it (scatter with amax is deterministic).
    gt_index = torch.arange(G, device=gt_ltrb.device).expand(B, G).masked_fill(~valid, -1)
    forced = torch.full((B, A), -1, dtype=torch.long, device=gt_ltrb.device)
    forced.scatter_reduce_(1, best_anchor, gt_index, reduce="amax")
    is_forced = forced >= 0
    best_gt = torch.where(is_forced, forced, best_gt)
    best_iou = best_iou.masked_fill(is_forced, FORCED_IOU)
    return best_gt, best_iou


def encode_offsets(boxes_ltrb: torch.Tensor, dboxes_cxcywh: torch.Tensor) -> torch.Tensor:
    """Offsets of boxes [...,A,4] against default boxes [A,4]: (g_xy - d_xy)/(0.1 d_wh), log(g_wh/d_wh)/0.2."""
    g = box_convert(boxes_ltrb, "xyxy", "cxcywh")
    t_xy = (g[..., :2] - dboxes_cxcywh[..., :2]) / (SCALE_XY * dboxes_cxcywh[..., 2:])
    t_wh = torch.log(g[..., 2:] / dboxes_cxcywh[..., 2:]) / SCALE_WH
    return torch.cat([t_xy, t_wh], dim=-1)


def decode_offsets(locs: torch.Tensor, dboxes_cxcywh: torch.Tensor) -> torch.Tensor:
    """Inverse of `encode_offsets`: locs [...,A,4] -> ltrb boxes [...,A,4] (computed in fp32)."""
    locs = locs.float()
    xy = SCALE_XY * locs[..., :2] * dboxes_cxcywh[..., 2:] + dboxes_cxcywh[..., :2]
    wh = torch.exp(SCALE_WH * locs[..., 2:]) * dboxes_cxcywh[..., 2:]
    return box_convert(torch.cat([xy, wh], dim=-1), "cxcywh", "xyxy")


class BoxCoder:
    """Encodes ground truth against a fixed set of default boxes and decodes predictions back to boxes."""

    def __init__(self, dboxes_ltrb: torch.Tensor):
        self.dboxes_ltrb = dboxes_ltrb.float()
        self.dboxes_cxcywh = box_convert(self.dboxes_ltrb, "xyxy", "cxcywh")

    def to(self, device: torch.device | str) -> "BoxCoder":
        """The same coder with its default boxes on `device`: decoding and encoding read them beside the model's
        outputs, so they must live where the model runs (a CPU copy beside CUDA outputs fails on mixed devices)."""
        return BoxCoder(self.dboxes_ltrb.to(device))

    def encode_batch(
        self, gt_ltrb: torch.Tensor, gt_labels: torch.Tensor, num_gt: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded batch -> (loc_t [B,A,4] offsets, labels_t [B,A] long; 0 = background)."""
        B = gt_ltrb.shape[0]
        best_gt, best_iou = match(gt_ltrb, num_gt, self.dboxes_ltrb)
        positive = best_iou > IOU_THRESHOLD
        if gt_ltrb.shape[1] == 0:
            matched = self.dboxes_ltrb.expand(B, -1, -1)
            labels = torch.zeros_like(best_gt)
        else:
            matched = torch.gather(gt_ltrb.float(), 1, best_gt[..., None].expand(-1, -1, 4))
            labels = torch.gather(gt_labels.long(), 1, best_gt)
        # Negatives: label 0 and the default box itself as target, so their offsets are exactly 0.
        matched = torch.where(positive[..., None], matched, self.dboxes_ltrb)
        labels = labels.masked_fill(~positive, 0)
        return encode_offsets(matched, self.dboxes_cxcywh), labels

    def encode(self, gt_ltrb: torch.Tensor, gt_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One image: gt_ltrb [G,4], gt_labels [G] -> (loc_t [A,4], labels_t [A])."""
        num_gt = torch.tensor([gt_ltrb.shape[0]], device=gt_ltrb.device)
        loc_t, labels_t = self.encode_batch(gt_ltrb[None], gt_labels[None], num_gt)
        return loc_t[0], labels_t[0]


def encode_batch(
    gt_ltrb: torch.Tensor, gt_labels: torch.Tensor, num_gt: torch.Tensor, dboxes_ltrb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`BoxCoder(dboxes_ltrb).encode_batch(...)` as a function of tensors: the spec of the Triton encode kernel."""
    return BoxCoder(dboxes_ltrb).encode_batch(gt_ltrb, gt_labels, num_gt)

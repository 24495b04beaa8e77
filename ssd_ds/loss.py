"""The SSD loss (SPEC section 4) over dense tensors, always in fp32.

loss = mean_b [ (loc_b + conf_b) / max(npos_b, 1e-6) * (npos_b > 0) ], where loc_b is SmoothL1 (beta 1) summed over
the 4 offsets of the positives, and conf_b is the CE summed over the positives and the hard negatives: the top
min(3 * npos_b, A) anchors ranked by CE with positives' CE set to 0.

Ties at the selection boundary: anchors with equal CE are ranked by anchor index, lowest first (a stable sort).
The Triton kernel breaks ties the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEG_POS_RATIO = 3  # SPEC section 4


def hard_negative_mask(ce: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """ce [B,A] fp32, positive [B,A] bool -> selected [B,A] bool: ranks < min(3 * npos, A) of the positive-zeroed CE."""
    A = ce.shape[1]
    ranked = ce.masked_fill(positive, 0.0)
    order = ranked.argsort(dim=1, descending=True, stable=True)
    rank = order.argsort(dim=1)
    num_neg = (NEG_POS_RATIO * positive.sum(dim=1, keepdim=True)).clamp(max=A)
    return rank < num_neg


def ssd_loss_parts(
    locs: torch.Tensor, logits: torch.Tensor, loc_t: torch.Tensor, labels_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image parts: (loc [B], conf [B], num_pos [B] float), all fp32.

    locs [B,A,4], logits [B,A,C] (any float dtype), loc_t [B,A,4], labels_t [B,A] long.
    """
    positive = labels_t > 0
    num_pos = positive.sum(dim=1).float()
    loc = _positive_smooth_l1(locs, loc_t, positive)
    ce = F.cross_entropy(logits.float().transpose(1, 2), labels_t, reduction="none")  # [B,A]
    selected = hard_negative_mask(ce.detach(), positive)
    # Positives count once as positives and again if selected (SPEC section 4's edge case).
    conf = (ce * (positive.float() + selected.float())).sum(dim=1)
    return loc, conf, num_pos


def ssd_loss(locs: torch.Tensor, logits: torch.Tensor, loc_t: torch.Tensor, labels_t: torch.Tensor) -> torch.Tensor:
    """Scalar fp32 loss: per-image normalisation by the positive count, then the batch mean."""
    loc, conf, num_pos = ssd_loss_parts(locs, logits, loc_t, labels_t)
    return normalise(loc + conf, num_pos)


def _positive_smooth_l1(locs: torch.Tensor, loc_t: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """[B]: SmoothL1 (beta 1) summed over the 4 offsets of each image's positives, in fp32."""
    sl1 = F.smooth_l1_loss(locs.float(), loc_t.float(), reduction="none", beta=1.0).sum(dim=2)  # [B,A]
    return (sl1 * positive).sum(dim=1)


def localisation_loss(locs: torch.Tensor, loc_t: torch.Tensor, labels_t: torch.Tensor) -> torch.Tensor:
    """The localisation part of `ssd_loss` alone, normalised the same way (for logging loc and conf apart)."""
    positive = labels_t > 0
    return normalise(_positive_smooth_l1(locs, loc_t, positive), positive.sum(dim=1).float())


def normalise(per_image: torch.Tensor, num_pos: torch.Tensor) -> torch.Tensor:
    """mean_b per_image_b / max(npos_b, 1e-6) * (npos_b > 0)."""
    return (per_image * (num_pos > 0).float() / num_pos.clamp(min=1e-6)).mean()

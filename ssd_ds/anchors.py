"""Default boxes (SPEC section 2), generated from an AnchorConfig in the reference's order.

Order: level, then box size, then row i, then column j — the same anchor index the model's heads produce.
Coordinates are relative to the input side: ltrb in [0, 1] and cxcywh in [0, 1] after clamping.
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import box_convert

from ssd_ds.model_config import AnchorConfig


def default_boxes_cxcywh(cfg: AnchorConfig) -> torch.Tensor:
    """[A, 4] default boxes as (cx, cy, w, h), each clamped to [0, 1] (SPEC section 2)."""
    per_level = []
    for k, fsize in enumerate(cfg.feat_sizes):
        fk = cfg.fig_size / cfg.steps[k]
        s1 = cfg.scales[k] / cfg.fig_size
        s2 = cfg.scales[k + 1] / cfg.fig_size
        sizes = [(s1, s1), (math.sqrt(s1 * s2), math.sqrt(s1 * s2))]
        for a in cfg.aspect_ratios[k]:
            r = math.sqrt(a)
            sizes += [(s1 * r, s1 / r), (s1 / r, s1 * r)]
        centres = (torch.arange(fsize, dtype=torch.float64) + 0.5) / fk
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")  # row i -> cy, column j -> cx
        for w, h in sizes:
            wh = torch.tensor([w, h], dtype=torch.float64).expand(fsize * fsize, 2)
            per_level.append(torch.cat([cx.reshape(-1, 1), cy.reshape(-1, 1), wh], dim=1))
    return torch.cat(per_level).clamp_(0, 1).float()


def default_boxes_ltrb(cfg: AnchorConfig) -> torch.Tensor:
    """[A, 4] default boxes as (left, top, right, bottom), computed from the clamped cxcywh form."""
    return box_convert(default_boxes_cxcywh(cfg), "cxcywh", "xyxy")

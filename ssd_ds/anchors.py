"""Default boxes (SPEC section 2): their geometry (`AnchorConfig`, part of every model preset in
ssd_ds.model_config) and the boxes generated from it in the reference's order.

Order: level, then box size, then row i, then column j — the same anchor index the model's heads produce.
Coordinates are relative to the input side: ltrb in [0, 1] and cxcywh in [0, 1] after clamping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.ops import box_convert


@dataclass(frozen=True)
class AnchorConfig:
    """Default-box geometry (SPEC section 2), in pixels of the square input."""

    fig_size: int  # input side in pixels
    feat_sizes: tuple[int, ...]  # side of each feature map, in level order
    steps: tuple[float, ...]  # pixel stride per level; fk = fig_size / step
    scales: tuple[float, ...]  # box scale in pixels per level, one more than levels (s_k, s_k+1)
    aspect_ratios: tuple[tuple[int, ...], ...]  # extra aspect ratios per level (each adds two boxes)

    def __post_init__(self) -> None:
        n = len(self.feat_sizes)
        if not (len(self.steps) == n and len(self.aspect_ratios) == n and len(self.scales) == n + 1):
            raise ValueError(
                f"AnchorConfig: {n} feature sizes need {n} steps, {n} aspect-ratio lists and {n + 1} scales; "
                f"got {len(self.steps)}, {len(self.aspect_ratios)}, {len(self.scales)}"
            )

    @property
    def boxes_per_location(self) -> tuple[int, ...]:
        """`nd` per level: the two square boxes plus two per extra aspect ratio."""
        return tuple(2 + 2 * len(ar) for ar in self.aspect_ratios)

    @property
    def num_anchors(self) -> int:
        """A: total default boxes over all levels."""
        return sum(nd * f * f for nd, f in zip(self.boxes_per_location, self.feat_sizes))


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

"""How well a model's default boxes fit a data set's boxes, and default-box scales fitted to them.

Coverage: the share of ground-truth boxes whose best default box has IoU > 0.5 with them, the threshold at which
matching makes a default box positive (SPEC section 3). A box below it still gets one positive, through the forcing
rule, but only a poorly fitting one, and far fewer than a covered box gets. IoU is taken in coordinates relative to
the image, which are those of the square input as well: IoU is invariant under the resize's per-axis scaling.

Fitting (`fit_scales`) changes the scales only (`AnchorConfig.scales`, one more than the levels): the boxes per
location, so the heads' shapes and the weights' layout, stay the model's. The candidates are progressions from s_min
to s_max (shares of the input side) over the L levels: linear, `s_k = s_min + (s_max - s_min) k / L` (the SSD paper's
rule, which the presets other than mlperf use with 0.1 and 0.95), or geometric, `s_k = s_min (s_max / s_min)^(k/L)`;
first on a coarse grid of (s_min, s_max), then on a finer one around the best. Scales are rounded to 0.1 px, so that
the flag's value is what was measured. Each candidate is scored by its coverage, ties broken by the mean best IoU; one
that covers fewer COCO-small boxes than the model's own scales is passed over (the guard: small boxes are the least
covered, and the first a fit to the many larger ones gives up), and one must beat the model's own scales to be
proposed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torchvision.ops import box_iou

from ssd_ds.anchors import AnchorConfig, default_boxes_ltrb
from ssd_ds.box_coder import IOU_THRESHOLD

CHUNK_ELEMENTS = 2**24  # IoU entries per chunk, 64 MiB of float32: 100k boxes x 8732 default boxes in 53 chunks
SEARCH_BOXES = 10_000  # boxes the search scores candidates on (a fixed random sample of larger sets)
PROGRESSIONS = {  # scale of level k of L, from s_min to s_max; t = k / L
    "linear": lambda s_min, s_max, t: s_min + (s_max - s_min) * t,
    "geometric": lambda s_min, s_max, t: s_min * (s_max / s_min) ** t,
}
COARSE_S_MIN = (0.02, 0.06, 0.10, 0.14, 0.18, 0.22, 0.26, 0.30)  # shares of the input side
COARSE_S_MAX = (0.5, 0.7, 0.9, 1.1)
FINE_S_MIN = (-0.02, -0.01, 0.0, 0.01, 0.02)  # offsets around the coarse grid's best
FINE_S_MAX = (-0.1, -0.05, 0.0, 0.05, 0.1)


def best_default_iou(gt_ltrb: torch.Tensor, dboxes_ltrb: torch.Tensor) -> torch.Tensor:
    """gt_ltrb [G,4], dboxes_ltrb [A,4], both relative -> [G] the IoU of each box with its best default box; in chunks
    of boxes so that [G, A] is never held whole."""
    rows = max(1, CHUNK_ELEMENTS // max(1, dboxes_ltrb.shape[0]))
    gt_ltrb = gt_ltrb.float()
    if gt_ltrb.shape[0] == 0:
        return gt_ltrb.new_zeros(0)
    return torch.cat([box_iou(chunk, dboxes_ltrb).amax(dim=1) for chunk in gt_ltrb.split(rows)])


def is_covered(best_iou: torch.Tensor) -> torch.Tensor:
    """[G] bool: the best default box is a positive by the threshold alone (IoU > 0.5, SPEC section 3)."""
    return best_iou > IOU_THRESHOLD


def share_by_group(covered: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """[n_groups] the covered share of each group's boxes (NaN for a group without boxes)."""
    total = torch.bincount(groups, minlength=n_groups).double()
    hit = torch.bincount(groups, weights=covered.double(), minlength=n_groups)
    return hit / total  # 0/0 is NaN: no box of that group


def progression_scales(kind: str, s_min: float, s_max: float, levels: int, input_size: int) -> tuple[float, ...]:
    """`levels + 1` scales in pixels of the input, a `PROGRESSIONS[kind]` from s_min to s_max, rounded to 0.1 px."""
    return tuple(round(PROGRESSIONS[kind](s_min, s_max, k / levels) * input_size, 1) for k in range(levels + 1))


@dataclass(frozen=True)
class Fit:
    """The outcome of `fit_scales`, scored on the searched boxes."""

    scales: tuple[float, ...]  # proposed scales in pixels of the input (the model's own when none beat them)
    rule: str  # how they were made: "linear from 0.16 to 1.00 of the input side", or "the model's own"
    coverage_before: float  # the model's own scales
    coverage_after: float
    candidates: int  # progressions scored
    boxes: int  # boxes they were scored on

    @property
    def improved(self) -> bool:
        """Whether a progression covers more than the model's own scales."""
        return self.rule != "the model's own"


def _score(anchors: AnchorConfig, gt_ltrb: torch.Tensor, small: torch.Tensor) -> tuple[float, float, float]:
    """(coverage, mean best IoU, coverage of the small boxes or 1 when there are none)."""
    best = best_default_iou(gt_ltrb, default_boxes_ltrb(anchors))
    covered = is_covered(best)
    small_share = covered[small].double().mean().item() if small.any() else 1.0
    return covered.double().mean().item(), best.double().mean().item(), small_share


def fit_scales(anchors: AnchorConfig, gt_ltrb: torch.Tensor, small: torch.Tensor, seed: int = 0) -> Fit:
    """Scales for `anchors`' levels that cover more of `gt_ltrb` ([G,4] relative ltrb, G > 0) than its own; `small`
    [G] marks the COCO-small boxes the guard protects. The search (module docstring) runs on at most SEARCH_BOXES
    boxes, a sample fixed by `seed`."""
    if gt_ltrb.shape[0] > SEARCH_BOXES:
        keep = torch.randperm(gt_ltrb.shape[0], generator=torch.Generator().manual_seed(seed))[:SEARCH_BOXES]
        gt_ltrb, small = gt_ltrb[keep], small[keep]
    levels, size = len(anchors.feat_sizes), anchors.fig_size
    own = _score(anchors, gt_ltrb, small)
    best = (own[:2], anchors.scales, "the model's own", None)  # (score, scales, rule, (kind, s_min, s_max))
    scored: set[tuple[float, ...]] = set()

    def consider(kind: str, s_min: float, s_max: float) -> None:
        nonlocal best
        if s_min <= 0 or s_max <= s_min:
            return
        scales = progression_scales(kind, s_min, s_max, levels, size)
        if scales in scored:
            return
        scored.add(scales)
        score = _score(replace(anchors, scales=scales), gt_ltrb, small)
        if score[2] >= own[2] and score[:2] > best[0]:  # the guard, then coverage and mean IoU
            best = (score[:2], scales, f"{kind} from {s_min:.2f} to {s_max:.2f} of the input side",
                    (kind, s_min, s_max))

    for kind in PROGRESSIONS:
        for s_min in COARSE_S_MIN:
            for s_max in COARSE_S_MAX:
                consider(kind, s_min, s_max)
    if best[3] is not None:
        kind, s_min, s_max = best[3]
        for d_min in FINE_S_MIN:
            for d_max in FINE_S_MAX:
                consider(kind, round(s_min + d_min, 4), round(s_max + d_max, 4))
    return Fit(tuple(best[1]), best[2], own[0], best[0][0], len(scored), gt_ltrb.shape[0])


def scales_flag(scales: tuple[float, ...]) -> str:
    """The trainer's flag value: `12.8,20.1,...` (no trailing `.0` on whole pixels)."""
    return ",".join(f"{s:g}" for s in scales)

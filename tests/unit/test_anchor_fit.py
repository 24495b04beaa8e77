"""Default-box coverage against IoUs worked out by hand, and the scale search (ssd_ds/anchor_fit.py)."""

from dataclasses import replace

import pytest
import torch
from torchvision.ops import box_iou

from ssd_ds import anchor_fit
from ssd_ds.anchor_fit import best_default_iou, fit_scales, is_covered, progression_scales, share_by_group
from ssd_ds.anchors import AnchorConfig, default_boxes_ltrb
from ssd_ds.model_config import build_model_config

# One level of one cell, no extra aspect ratios: two default boxes, both the centred square of side 0.5.
TINY = AnchorConfig(fig_size=100, feat_sizes=(1,), steps=(100,), scales=(50, 50), aspect_ratios=((),))


def centred(side):
    return [0.5 - side / 2, 0.5 - side / 2, 0.5 + side / 2, 0.5 + side / 2]


# (box, its IoU with the square [0.25, 0.75]^2): a centred square of side a < 0.5 gives a^2 / 0.25, one of side
# b > 0.5 gives 0.25 / b^2; the square shifted right by d overlaps (0.5 - d) * 0.5 of a union 0.5 - that.
KNOWN = [
    (centred(0.13**0.5), 0.52),
    (centred(0.12**0.5), 0.48),
    (centred(0.48**0.5), 0.25 / 0.48),  # 0.5208
    (centred(0.52**0.5), 0.25 / 0.52),  # 0.4808
    ([0.35, 0.25, 0.85, 0.75], 0.2 / 0.3),  # shifted by 0.1
    ([0.45, 0.25, 0.95, 0.75], 0.15 / 0.35),  # shifted by 0.2: 0.4286
    ([0.0, 0.0, 0.2, 0.2], 0.0),  # no overlap
]


def test_best_iou_and_coverage_of_boxes_with_known_ious():
    gt = torch.tensor([b for b, _ in KNOWN])
    best = best_default_iou(gt, default_boxes_ltrb(TINY))
    assert best.tolist() == pytest.approx([iou for _, iou in KNOWN], abs=1e-6)
    assert is_covered(best).tolist() == [True, False, True, False, True, False, False]


def test_chunks_give_the_unchunked_answer(monkeypatch):
    """Every chunk size, down to one box per chunk, gives the IoU matrix's row maxima."""
    dboxes = default_boxes_ltrb(build_model_config("cpu_small").anchors)
    xy = torch.rand(300, 2)
    gt = torch.cat([xy, xy + 0.02 + 0.5 * torch.rand(300, 2)], 1).clamp(0, 1)
    want = box_iou(gt, dboxes).amax(1)
    for elements in (1, dboxes.shape[0] * 7, 2**24):
        monkeypatch.setattr(anchor_fit, "CHUNK_ELEMENTS", elements)
        assert torch.equal(best_default_iou(gt, dboxes), want)
    assert best_default_iou(torch.zeros(0, 4), dboxes).shape == (0,)


def test_share_by_group():
    shares = share_by_group(torch.tensor([True, False, True, True]), torch.tensor([0, 0, 2, 2]), 4)
    assert shares.tolist() == pytest.approx([0.5, float("nan"), 1.0, float("nan")], nan_ok=True)


def test_progressions():
    cpu_small = build_model_config("cpu_small").anchors  # the SSD paper's linear rule from 0.1 to 0.95
    assert progression_scales("linear", 0.1, 0.95, 5, 128) == tuple(round(s, 1) for s in cpu_small.scales)
    assert progression_scales("geometric", 0.1, 0.8, 3, 100) == (10.0, 20.0, 40.0, 80.0)


def test_fitting_raises_coverage_where_the_preset_misses():
    """Squares of 6% of the side at cpu_small's finest cell centres: its smallest default boxes (10%) reach IoU 0.36
    with them, so none is covered; a fit reaches most of them, and its figure is the coverage measured again."""
    anchors = build_model_config("cpu_small").anchors
    centres = (torch.arange(16) + 0.5) / 16
    cx, cy = torch.meshgrid(centres, centres, indexing="xy")
    centre = torch.stack([cx.reshape(-1), cy.reshape(-1)], 1)
    gt = torch.cat([centre - 0.03, centre + 0.03], 1)[::5]  # 52 of the 256 cells
    fit = fit_scales(anchors, gt, torch.zeros(len(gt), dtype=torch.bool))
    assert fit.coverage_before == 0.0 and fit.improved and fit.coverage_after > 0.9
    assert len(fit.scales) == len(anchors.scales) and fit.scales[0] < anchors.scales[0]
    fitted = AnchorConfig(anchors.fig_size, anchors.feat_sizes, anchors.steps, fit.scales, anchors.aspect_ratios)
    assert is_covered(best_default_iou(gt, default_boxes_ltrb(fitted))).double().mean() == fit.coverage_after
    assert fitted.num_anchors == anchors.num_anchors  # scales only: the heads keep their shapes


def test_the_models_own_scales_stay_when_nothing_beats_them():
    anchors = build_model_config("cpu_small").anchors
    gt = default_boxes_ltrb(anchors)[::23]  # the default boxes themselves: coverage 1 and mean IoU 1
    fit = fit_scales(anchors, gt, torch.zeros(len(gt), dtype=torch.bool))
    assert not fit.improved and fit.scales == anchors.scales and fit.coverage_after == fit.coverage_before == 1.0


def test_the_guard_keeps_the_small_boxes_covered():
    """One centred square of side 0.05 (the own scales' 5 px box: IoU 1) and nine of side 0.6 (no box near): no
    progression on the grid covers both, so covering the nine is allowed only when the first box is not small. (The
    guarded fit may still move the scales, for a better mean IoU at the same coverage.)"""
    own = AnchorConfig(fig_size=100, feat_sizes=(1,), steps=(100,), scales=(5, 10), aspect_ratios=((),))
    gt = torch.tensor([centred(0.05)] + [centred(0.6)] * 9)
    small = torch.tensor([True] + [False] * 9)
    guarded = fit_scales(own, gt, small)
    assert guarded.coverage_before == guarded.coverage_after == pytest.approx(0.1)
    fitted = AnchorConfig(100, (1,), (100,), guarded.scales, ((),))
    assert is_covered(best_default_iou(gt[:1], default_boxes_ltrb(fitted))).item()
    free = fit_scales(own, gt, torch.zeros(10, dtype=torch.bool))
    assert free.improved and free.coverage_after == pytest.approx(0.9)
    assert not is_covered(best_default_iou(gt[:1], default_boxes_ltrb(replace(own, scales=free.scales)))).item()


def test_large_sets_are_searched_on_a_fixed_sample(monkeypatch):
    monkeypatch.setattr(anchor_fit, "SEARCH_BOXES", 50)
    anchors = AnchorConfig(fig_size=100, feat_sizes=(2, 1), steps=(50, 100), scales=(20, 50, 90),
                           aspect_ratios=((2,), ()))
    xy = torch.rand(400, 2) * 0.8
    gt = torch.cat([xy, xy + 0.05 + 0.15 * torch.rand(400, 2)], 1)
    fits = [fit_scales(anchors, gt, torch.zeros(400, dtype=torch.bool)) for _ in range(2)]
    assert fits[0].boxes == 50 and fits[0] == fits[1]

import math

import torch

from ssd_ds.anchors import default_boxes_cxcywh, default_boxes_ltrb
from ssd_ds.model_config import mlperf

# SPEC section 2, written out again here so the test does not read the code's config.
FEATS = [38, 19, 10, 5, 3, 1]
STEPS = [8, 16, 32, 64, 100, 300]
SCALES = [21, 45, 99, 153, 207, 261, 315]
RATIOS = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]


def expected_box(index):
    """Walk level -> size -> row -> column to the anchor at `index` and compute it from the SPEC formulas."""
    for k, f in enumerate(FEATS):
        s1, s2 = SCALES[k] / 300, SCALES[k + 1] / 300
        sizes = [(s1, s1), (math.sqrt(s1 * s2),) * 2]
        for a in RATIOS[k]:
            sizes += [(s1 * math.sqrt(a), s1 / math.sqrt(a)), (s1 / math.sqrt(a), s1 * math.sqrt(a))]
        n = len(sizes) * f * f
        if index < n:
            d, rest = divmod(index, f * f)
            i, j = divmod(rest, f)
            fk = 300 / STEPS[k]
            box = [(j + 0.5) / fk, (i + 0.5) / fk, sizes[d][0], sizes[d][1]]
            return [min(max(v, 0.0), 1.0) for v in box]
        index -= n
    raise IndexError


def test_count_is_8732():
    assert default_boxes_cxcywh(mlperf().anchors).shape == (8732, 4)
    assert mlperf().anchors.num_anchors == 8732


def test_values_at_several_indices():
    boxes = default_boxes_cxcywh(mlperf().anchors)
    for index in [0, 1, 37, 38, 1443, 1444, 5775, 5776, 5776 + 361 * 3 + 20, 7941, 8541, 8700, 8727, 8731]:
        assert torch.allclose(boxes[index], torch.tensor(expected_box(index)), atol=1e-6), index


def test_last_level_box_is_clamped():
    # Level 5 (1x1), size index 2: (s1*sqrt2, s1/sqrt2) with s1 = 0.87 -> w = 1.23 clamped to 1.
    boxes = default_boxes_cxcywh(mlperf().anchors)
    assert boxes[8730, :3].tolist() == [0.5, 0.5, 1.0]
    assert abs(boxes[8730, 3].item() - expected_box(8730)[3]) < 1e-6
    assert expected_box(8730)[2] == 1.0


def test_ltrb_from_clamped_cxcywh():
    cxcywh = default_boxes_cxcywh(mlperf().anchors)
    ltrb = default_boxes_ltrb(mlperf().anchors)
    assert torch.allclose(ltrb[:, :2], cxcywh[:, :2] - cxcywh[:, 2:] / 2)
    assert torch.allclose(ltrb[:, 2:], cxcywh[:, :2] + cxcywh[:, 2:] / 2)

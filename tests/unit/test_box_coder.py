import torch

from ssd_ds.anchors import default_boxes_ltrb
from ssd_ds.box_coder import BoxCoder, decode_offsets, match
from ssd_ds.model_config import mlperf


def mlperf_coder():
    return BoxCoder(default_boxes_ltrb(mlperf().anchors))


def random_gt(g, generator=None):
    xy = torch.rand(g, 2, generator=generator) * 0.6
    wh = 0.05 + torch.rand(g, 2, generator=generator) * 0.35
    return torch.cat([xy, xy + wh], dim=1)


def test_encode_then_decode_returns_matched_ground_truth():
    coder = mlperf_coder()
    gt = random_gt(5)
    labels = torch.tensor([3, 7, 1, 80, 12])
    loc_t, labels_t = coder.encode(gt, labels)
    assert loc_t.shape == (8732, 4) and labels_t.shape == (8732,)
    positive = labels_t > 0
    assert positive.sum() >= 5  # at least each GT's forced anchor
    decoded = decode_offsets(loc_t, coder.dboxes_cxcywh)
    best_gt, _ = match(gt[None], torch.tensor([5]), coder.dboxes_ltrb)
    assert torch.allclose(decoded[positive], gt[best_gt[0][positive]], atol=1e-5)
    assert torch.equal(labels_t[positive], labels[best_gt[0][positive]])
    # Negatives encode their own default box: zero offsets, decoding to the default box.
    assert torch.allclose(loc_t[~positive], torch.zeros(1), atol=1e-5)
    assert torch.allclose(decoded[~positive], coder.dboxes_ltrb[~positive], atol=1e-5)


def test_zero_ground_truth_is_all_background():
    coder = mlperf_coder()
    loc_t, labels_t = coder.encode(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert labels_t.shape == (8732,) and not labels_t.any()
    assert torch.allclose(loc_t, torch.zeros(8732, 4), atol=1e-5)


def test_batch_with_padding_equals_per_image():
    coder = mlperf_coder()
    gts = [random_gt(3), random_gt(0), random_gt(6)]
    labels = [torch.randint(1, 81, (len(g),)) for g in gts]
    G = 6
    gt_pad = torch.zeros(3, G, 4)
    lab_pad = torch.zeros(3, G, dtype=torch.long)
    for b, (g, l) in enumerate(zip(gts, labels)):
        gt_pad[b, : len(g)] = g
        lab_pad[b, : len(l)] = l
    # Padding rows hold a box that would otherwise match: it must be ignored.
    gt_pad[1, 0] = torch.tensor([0.1, 0.1, 0.5, 0.5])
    loc_b, lab_b = coder.encode_batch(gt_pad, lab_pad, torch.tensor([3, 0, 6]))
    for b in range(3):
        loc_1, lab_1 = coder.encode(gts[b], labels[b])
        assert torch.equal(lab_b[b], lab_1)
        assert torch.allclose(loc_b[b], loc_1)


def test_strict_threshold_and_forcing_rule():
    dboxes = torch.tensor([
        [0.0, 0.0, 1.0, 1.0],   # IoU exactly 0.5 with gt 0: must stay negative (strict >)
        [0.0, 0.0, 0.5, 1.0],   # identical to gt 0: its best
        [0.0, 0.0, 0.52, 1.0],  # IoU 0.5 / 0.52 > 0.5: positive without forcing
        [0.8, 0.8, 0.9, 0.9],   # best (IoU 0.1... low) for gt 1, which overlaps nothing well: forced positive
        [0.6, 0.0, 0.7, 0.1],   # overlaps nothing
    ])
    coder = BoxCoder(dboxes)
    gt = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.75, 0.75, 0.95, 0.95]])
    _, labels_t = coder.encode(gt, torch.tensor([4, 9]))
    assert labels_t.tolist() == [0, 4, 4, 9, 0]
    best_gt, best_iou = match(gt[None], torch.tensor([2]), dboxes)
    assert best_iou[0, 0] == 0.5
    assert best_iou[0, 1] == 2.0 and best_iou[0, 3] == 2.0


def test_forcing_later_ground_truth_wins_a_shared_anchor():
    dboxes = torch.tensor([[0.0, 0.0, 0.4, 0.4], [0.6, 0.6, 1.0, 1.0]])
    # Both GTs have anchor 0 as their best; GT 0 overlaps it more, but the later GT 1 is forced onto it.
    gt = torch.tensor([[0.0, 0.0, 0.4, 0.4], [0.0, 0.0, 0.2, 0.2]])
    best_gt, best_iou = match(gt[None], torch.tensor([2]), dboxes)
    assert best_gt[0, 0] == 1 and best_iou[0, 0] == 2.0
    _, labels_t = BoxCoder(dboxes).encode(gt, torch.tensor([5, 6]))
    assert labels_t.tolist() == [6, 0]

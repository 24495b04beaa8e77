"""The Triton matching and encoding against `ssd_ds.box_coder.encode_batch`: labels exactly, offsets to rounding."""

import pytest
import torch
from torchvision.ops import box_convert

from ssd_ds.anchors import default_boxes_ltrb
from ssd_ds.box_coder import encode_batch as encode_batch_reference
from ssd_ds.model_config import cpu_small, mlperf
from triton_kernels.encode import MAX_BOXES, encode_batch


def random_boxes(*shape, min_size=0.02, max_size=0.45):
    """Relative ltrb boxes of varied size inside [0, 1], shape [*shape, 4]."""
    wh = min_size + torch.rand(*shape, 2) * (max_size - min_size)
    xy = torch.rand(*shape, 2) * (1 - wh)
    return torch.cat([xy, xy + wh], dim=-1)


def make_batch(num_gt, G, device, dtype=torch.float32):
    """Padded batch: num_gt[b] real boxes per image; padding rows hold random boxes that must never match."""
    gt_ltrb = random_boxes(len(num_gt), G)
    gt_labels = torch.randint(1, 81, (len(num_gt), G))
    return gt_ltrb.to(device, dtype), gt_labels.to(device), torch.tensor(num_gt, device=device)


def check(gt_ltrb, gt_labels, num_gt, dboxes_ltrb, assert_close):
    loc_t, labels_t = encode_batch(gt_ltrb, gt_labels, num_gt, dboxes_ltrb)
    want_loc, want_labels = encode_batch_reference(gt_ltrb, gt_labels, num_gt, dboxes_ltrb)
    assert labels_t.dtype == torch.int64 and torch.equal(labels_t, want_labels)
    assert_close(loc_t, want_loc, "loc_t")
    return labels_t


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("A,num_gt,G", [(512, [4, 16, 1, 9], 16), (301, [3, 0, 7], 7)])  # aligned, odd
def test_matches_reference(A, num_gt, G, dtype, device, assert_close):
    dboxes = random_boxes(A, min_size=0.05, max_size=0.6).to(device)
    labels_t = check(*make_batch(num_gt, G, device, dtype), dboxes, assert_close)
    assert (labels_t > 0).sum(dim=1).ge(torch.tensor(num_gt, device=device)).all()  # every box got an anchor
    if 0 in num_gt:
        assert not labels_t[num_gt.index(0)].any()


def test_model_default_boxes(device, assert_close):
    dboxes = default_boxes_ltrb(cpu_small().anchors).to(device)
    check(*make_batch([12, 0, 30], 30, device), dboxes, assert_close)


def test_no_boxes_in_the_batch(device, assert_close):
    gt_ltrb, gt_labels, num_gt = make_batch([0, 0], 0, device)
    labels_t = check(gt_ltrb, gt_labels, num_gt, random_boxes(301).to(device), assert_close)
    assert not labels_t.any()


def test_every_anchor_positive(device, assert_close):
    # Default boxes jittered around one box: every IoU with it exceeds 0.5.
    box = torch.tensor([0.3, 0.3, 0.6, 0.7])
    dboxes = (box + (torch.rand(301, 4) - 0.5) * 0.02).to(device)
    gt_ltrb, gt_labels, num_gt = make_batch([1, 3], 3, device)
    gt_ltrb[:, 0] = box.to(device)
    labels_t = check(gt_ltrb, gt_labels, num_gt, dboxes, assert_close)
    assert (labels_t[0] == gt_labels[0, 0]).all()


def test_strict_threshold_ties_and_forcing(device, assert_close):
    dboxes = torch.tensor([
        [0.0, 0.0, 1.0, 1.0],  # IoU exactly 0.5 with box 0: stays negative (strict >)
        [0.0, 0.0, 0.5, 1.0],  # identical to boxes 0 and 2 (a tie: the first box matches, the last is forced)
        [0.0, 0.0, 0.52, 1.0],  # IoU > 0.5 without forcing
        [0.8, 0.8, 0.9, 0.9],  # the best anchor of box 1, which overlaps nothing well: forced positive
        [0.6, 0.0, 0.7, 0.1],  # overlaps nothing
    ], device=device)
    gt_ltrb = torch.tensor([[[0.0, 0.0, 0.5, 1.0], [0.75, 0.75, 0.95, 0.95], [0.0, 0.0, 0.5, 1.0]]], device=device)
    gt_labels = torch.tensor([[4, 9, 7]], device=device)
    labels_t = check(gt_ltrb, gt_labels, torch.tensor([3], device=device), dboxes, assert_close)
    assert labels_t.tolist() == [[0, 7, 4, 9, 0]]


def test_best_anchor_ties_go_to_the_lowest_index(device, assert_close):
    # Each box's best anchor is duplicated further on (another tile, another program of the matching pass); its IoU
    # is below 0.5, so only the forced anchor, the first of the duplicates, becomes positive.
    dboxes = 0.7 + 0.3 * random_boxes(301)  # far from both boxes
    dboxes[[10, 40]] = torch.tensor([0.05, 0.05, 0.45, 0.45])
    dboxes[[100, 280]] = torch.tensor([0.3, 0.3, 0.6, 0.6])
    gt_ltrb, gt_labels, num_gt = make_batch([2], 100, device)  # G = 100: 32-anchor tiles, 256 anchors a program
    gt_ltrb[0, :2] = torch.tensor([[0.05, 0.05, 0.15, 0.15], [0.3, 0.3, 0.4, 0.4]], device=device)
    labels_t = check(gt_ltrb, gt_labels, num_gt, dboxes.to(device), assert_close)
    assert labels_t[0].nonzero().squeeze(1).tolist() == [10, 100]


def test_best_anchor_ties_across_reduction_chunks(device, assert_close):
    # G = 256: 16-anchor tiles, 128 anchors a program, and the second pass reduces the programs' partials 16 at a time
    # (2048 anchors), so with 2500 anchors a tie can span two chunks (10 and 2300) or sit in the second (2100, 2400).
    dboxes = 0.7 + 0.3 * random_boxes(2500)
    dboxes[[10, 2300]] = torch.tensor([0.05, 0.05, 0.45, 0.45])
    dboxes[[2100, 2400]] = torch.tensor([0.3, 0.3, 0.6, 0.6])
    gt_ltrb, gt_labels, num_gt = make_batch([2], MAX_BOXES, device)
    gt_ltrb[0, :2] = torch.tensor([[0.05, 0.05, 0.15, 0.15], [0.3, 0.3, 0.4, 0.4]], device=device)
    labels_t = check(gt_ltrb, gt_labels, num_gt, dboxes.to(device), assert_close)
    assert labels_t[0].nonzero().squeeze(1).tolist() == [10, 2100]


def test_rejects_bad_shapes(device):
    gt_ltrb, gt_labels, num_gt = make_batch([1, 2], 2, device)
    dboxes = random_boxes(16).to(device)
    with pytest.raises(ValueError, match="want gt_ltrb"):
        encode_batch(gt_ltrb, gt_labels[:, :1], num_gt, dboxes)
    with pytest.raises(ValueError, match="MAX_BOXES"):
        encode_batch(*make_batch([1], MAX_BOXES + 1, device), dboxes)


def test_opcheck(device):
    torch.library.opcheck(encode_batch, (*make_batch([3, 0, 5], 5, device), random_boxes(301).to(device)))


def test_compiles_without_graph_break(device, assert_close):
    gt_ltrb, gt_labels, num_gt = make_batch([3, 0, 5], 5, device)
    dboxes = random_boxes(301).to(device)
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    # The xywh -> ltrb conversion around the op is traced in the same graph.
    compiled = torch.compile(
        lambda xywh: encode_batch(box_convert(xywh, "xywh", "xyxy"), gt_labels, num_gt, dboxes),
        fullgraph=True, backend=backend,
    )
    loc_t, labels_t = compiled(box_convert(gt_ltrb, "xyxy", "xywh"))
    want_loc, want_labels = encode_batch_reference(gt_ltrb, gt_labels, num_gt, dboxes)
    assert torch.equal(labels_t, want_labels)
    assert_close(loc_t, want_loc, "loc_t")


@pytest.mark.cuda
def test_real_size(device, assert_close):
    # SSD300's 8732 default boxes, up to 100 boxes per image, some images empty or full.
    num_gt = [int(n) for n in torch.randint(1, 101, (30,))] + [0, 100]
    dboxes = default_boxes_ltrb(mlperf().anchors).to(device)
    check(*make_batch(num_gt, 100, device), dboxes, assert_close)

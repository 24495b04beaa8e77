"""The Triton SSD loss against `ssd_ds.loss.ssd_loss`: value and both gradients, the mining edges, registration."""

import pytest
import torch
import torch.nn.functional as F

from ssd_ds.loss import hard_negative_mask
from ssd_ds.loss import ssd_loss as ssd_loss_reference
from triton_kernels.loss import MAX_ANCHORS, ssd_loss, ssd_loss_backward, ssd_loss_forward

SHAPES = [(4, 512, 16), (3, 301, 11)]  # (B, A, C): aligned, odd


def make_batch(num_pos, A, C, device, dtype=torch.float32, logits=None):
    """Random locs, logits, loc_t and labels with num_pos[b] positives in image b (generated on CPU).

    Random logits are drawn again while any image has a near-tie at its mining boundary: selection is discontinuous
    there, so CE values within rounding of each other may rank differently in two correct implementations. Exact
    ties (as in the tie tests, which pass their own logits) rank the same in both.
    """
    B = len(num_pos)
    locs = torch.randn(B, A, 4) * 1.5  # wide enough that |locs - loc_t| > 1 happens (SmoothL1's linear part)
    loc_t = torch.randn(B, A, 4)
    labels_t = torch.zeros(B, A, dtype=torch.long)
    for b, n in enumerate(num_pos):
        labels_t[b, torch.randperm(A)[:n]] = torch.randint(1, C, (n,))
    if logits is None:
        logits = torch.randn(B, A, C) * 2
        while boundary_gap(logits.to(dtype), labels_t) < 1e-5:
            logits = torch.randn(B, A, C) * 2
    return locs.to(device, dtype), logits.to(device, dtype), loc_t.to(device), labels_t.to(device)


def boundary_gap(logits, labels_t):
    """Smallest non-zero gap, over the images, between the last mined CE and the next one (inf if there is none)."""
    positive = labels_t > 0
    ce = F.cross_entropy(logits.float().transpose(1, 2), labels_t, reduction="none").masked_fill(positive, 0.0)
    ranked = ce.sort(dim=1, descending=True).values
    k = 3 * positive.sum(dim=1, keepdim=True)
    has_boundary = (k > 0) & (k < labels_t.shape[1])
    k = k.clamp(1, labels_t.shape[1] - 1)
    gaps = ranked.gather(1, k - 1) - ranked.gather(1, k)
    gaps = gaps[has_boundary & (gaps > 0)]
    return gaps.min().item() if gaps.numel() else float("inf")


def loss_and_grads(fn, locs, logits, loc_t, labels_t):
    locs = locs.clone().requires_grad_(True)
    logits = logits.clone().requires_grad_(True)
    loss = fn(locs, logits, loc_t, labels_t)
    (1.7 * loss).backward()  # an upstream gradient other than 1
    return loss.detach(), locs.grad, logits.grad


def check_against_reference(batch, assert_close):
    got = loss_and_grads(ssd_loss, *batch)
    want = loss_and_grads(ssd_loss_reference, *batch)
    assert got[0].dtype == torch.float32
    for name, g, w in zip(("loss", "d locs", "d logits"), got, want):
        assert_close(g, w, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("B,A,C", SHAPES)
def test_matches_reference(B, A, C, dtype, device, assert_close):
    # Positive counts from none to "3 * num_pos exceeds the negatives" (positives counted twice).
    num_pos = [A // 50, 0, A // 3, A // 10][:B]
    check_against_reference(make_batch(num_pos, A, C, device, dtype), assert_close)


def test_model_layout_read_in_place(device, assert_close):
    # The model's locs [B,A,4] and logits [B,A,C] are transposed views of [B,4,A] and [B,C,A] head outputs.
    locs, logits, loc_t, labels_t = make_batch([5, 90, 0], 301, 11, device, torch.bfloat16)
    views = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (locs, logits)]
    assert not views[1].is_contiguous()
    check_against_reference((*views, loc_t, labels_t), assert_close)


def test_fp16(device, assert_close):
    check_against_reference(make_batch([7, 30, 0], 301, 11, device, torch.float16), assert_close)


def test_every_anchor_positive(device, assert_close):
    # k = min(3 * A, A) = A: every anchor is selected, so every CE counts twice.
    check_against_reference(make_batch([301, 4, 301], 301, 11, device), assert_close)


def test_no_positive_anywhere_is_zero_with_zero_gradients(device):
    loss, d_locs, d_logits = loss_and_grads(ssd_loss, *make_batch([0, 0], 301, 11, device))
    assert loss.item() == 0.0
    assert not d_locs.any() and not d_logits.any()


@pytest.mark.parametrize("num_pos", [[10, 3, 60], [1, 0, 2]])
def test_ties_at_the_mining_boundary(num_pos, device, assert_close):
    # Logit rows drawn from 3 distinct rows: CE takes few distinct values per class, so the k-th largest is tied
    # with many anchors and the selection among them (lowest index first) decides which rows get a gradient.
    A, C = 301, 11
    rows = torch.randn(3, C) * 2
    logits = rows[torch.randint(0, 3, (len(num_pos), A))]
    batch = make_batch(num_pos, A, C, device, logits=logits)
    check_against_reference(batch, assert_close)
    # The anchors with a gradient weight are exactly the reference's positives and mined negatives.
    locs, logits, loc_t, labels_t = batch
    _, weight, _ = ssd_loss_forward(*batch)
    positive = labels_t > 0
    ce = F.cross_entropy(logits.transpose(1, 2), labels_t, reduction="none")
    assert torch.equal(weight > 0, hard_negative_mask(ce, positive) | positive)


def test_all_negatives_tied_selects_lowest_indices(device):
    # Every CE equals log(C): the mined negatives must be the 3 * num_pos negatives of lowest anchor index.
    A, C = 301, 11
    batch = make_batch([5, 20], A, C, device, logits=torch.zeros(2, A, C))
    _, weight, _ = ssd_loss_forward(*batch)
    for b, positive in enumerate(batch[3] > 0):
        want = positive.clone()
        want[(~positive).nonzero().squeeze(1)[: 3 * int(positive.sum())]] = True
        assert torch.equal(weight[b] > 0, want)


def test_rejects_bad_shapes(device):
    locs, logits, loc_t, labels_t = make_batch([2], 64, 5, device)
    with pytest.raises(ValueError, match="want locs"):
        ssd_loss(locs[:, :-1], logits, loc_t, labels_t)
    with pytest.raises(ValueError, match="integer"):
        ssd_loss(locs, logits, loc_t, labels_t.float())
    A = MAX_ANCHORS + 1
    with pytest.raises(ValueError, match="MAX_ANCHORS"):
        ssd_loss(*make_batch([1], A, 2, device))


def test_opcheck(device):
    locs, logits, loc_t, labels_t = make_batch([5, 0], 301, 11, device)
    torch.library.opcheck(ssd_loss_forward, (locs.requires_grad_(), logits.requires_grad_(), loc_t, labels_t))
    _, weight, scale = ssd_loss_forward(locs.detach(), logits.detach(), loc_t, labels_t)
    grad = torch.tensor(0.5, device=device)
    torch.library.opcheck(ssd_loss_backward, (grad, locs.detach(), logits.detach(), loc_t, labels_t, weight, scale))


def test_compiles_without_graph_break(device, assert_close):
    batch = make_batch([5, 40], 301, 11, device)
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    compiled = torch.compile(lambda *b: ssd_loss(*b) * 2.0, fullgraph=True, backend=backend)
    got = loss_and_grads(compiled, *batch)
    want = loss_and_grads(lambda *b: ssd_loss_reference(*b) * 2.0, *batch)
    for name, g, w in zip(("loss", "d locs", "d logits"), got, want):
        assert_close(g, w, name)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_real_size(dtype, device, assert_close):
    # SSD300: A = 8732, C = 81; positive counts as in COCO batches, plus none and "all".
    num_pos = [int(n) for n in torch.randint(5, 400, (30,))] + [0, 8732]
    check_against_reference(make_batch(num_pos, 8732, 81, device, dtype), assert_close)

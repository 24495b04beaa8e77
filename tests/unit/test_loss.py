import torch
import torch.nn.functional as F

from ssd_ds.loss import hard_negative_mask, ssd_loss

A, C = 300, 11


def reference_loss(locs, logits, loc_t, labels_t):
    """Slow per-image form of SPEC section 4, with ties ranked by anchor index."""
    total = 0.0
    B = locs.shape[0]
    for b in range(B):
        pos = [a for a in range(A) if labels_t[b, a] > 0]
        ce = [F.cross_entropy(logits[b, a][None].double(), labels_t[b, a][None]).item() for a in range(A)]
        loc = sum(F.smooth_l1_loss(locs[b, a].double(), loc_t[b, a].double(), reduction="sum").item() for a in pos)
        masked = [0.0 if a in pos else ce[a] for a in range(A)]
        ranked = sorted(range(A), key=lambda a: (-masked[a], a))
        chosen = ranked[: min(3 * len(pos), A)]
        conf = sum(ce[a] for a in pos) + sum(ce[a] for a in chosen)
        if pos:
            total += (loc + conf) / len(pos)
    return total / B


def make_batch(num_pos_per_image):
    B = len(num_pos_per_image)
    locs = torch.randn(B, A, 4)
    logits = torch.randn(B, A, C) * 2
    loc_t = torch.randn(B, A, 4)
    labels_t = torch.zeros(B, A, dtype=torch.long)
    for b, n in enumerate(num_pos_per_image):
        idx = torch.randperm(A)[:n]
        labels_t[b, idx] = torch.randint(1, C, (n,))
    return locs, logits, loc_t, labels_t


def test_matches_per_image_reference():
    # Includes an image with no positives and one where 3 * num_pos > number of negatives (positives counted twice).
    batch = make_batch([5, 0, 40, 120])
    got = ssd_loss(*batch)
    assert got.dtype == torch.float32
    assert abs(got.item() - reference_loss(*batch)) < 1e-5 * max(1.0, abs(got.item()))


def test_bf16_inputs_are_computed_in_fp32():
    locs, logits, loc_t, labels_t = make_batch([7, 3])
    got = ssd_loss(locs.bfloat16(), logits.bfloat16(), loc_t, labels_t)
    want = reference_loss(locs.bfloat16().float(), logits.bfloat16().float(), loc_t, labels_t)
    assert got.dtype == torch.float32
    assert abs(got.item() - want) < 1e-5 * max(1.0, abs(want))


def test_ties_are_ranked_by_anchor_index():
    # Every negative has the same CE: the lowest anchor indices must be chosen (stable ranking).
    ce = torch.tensor([[1.0, 2.0, 2.0, 0.5, 2.0, 2.0, 2.0, 2.0]])
    positive = torch.tensor([[False, False, False, True, False, False, False, False]])
    assert hard_negative_mask(ce, positive).tolist() == [[False, True, True, False, True, False, False, False]]


def test_gradients_flow_to_locs_and_logits():
    locs, logits, loc_t, labels_t = make_batch([4, 9])
    locs.requires_grad_(True)
    logits.requires_grad_(True)
    ssd_loss(locs, logits, loc_t, labels_t).backward()
    positive = labels_t > 0
    assert locs.grad[positive].abs().sum() > 0
    assert locs.grad[~positive].abs().sum() == 0  # negatives carry no localisation loss
    assert logits.grad.abs().sum() > 0

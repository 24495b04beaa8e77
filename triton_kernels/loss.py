"""The SSD loss of SPEC section 4 (reference: `ssd_ds.loss.ssd_loss`) in two forward passes and one backward pass.

Forward, `torch.ops.ssd_kernels.ssd_loss_forward(locs [B,A,4], logits [B,A,C], loc_t [B,A,4], labels_t [B,A])`:
1. `_ce_kernel`, grid (A blocks, B): reads each anchor's C logits once; writes its cross-entropy (log-softmax in
   fp32) and, per block, the SmoothL1 sum, the CE sum and the count of the positives.
2. `_mine_kernel`, grid (B,): one program per image holds the image's A CE values in registers and finds the
   k-th largest of the positive-zeroed CE, k = min(3 * num_pos, A), by a 31-step bisection on its float bits
   (CE >= 0, so the bits order like the values); it selects the values above that threshold and, among the values
   equal to it, the lowest anchor indices until k are selected (a second bisection, on the anchor index). It
   writes the image's normalised loss and each anchor's gradient weight `(pos + selected) / max(num_pos, 1e-6)`
   for the backward.
The batch mean of the B per-image losses is the output (a [B] -> [] torch mean).

Ties at the selection boundary are broken by anchor index, lowest first: the same rule as the stable sort in
`ssd_ds.loss.hard_negative_mask`. As there, when 3 * num_pos exceeds the negatives, positives (key 0) are selected
after the negatives and their CE counts twice.

Backward, `torch.ops.ssd_kernels.ssd_loss_backward`, one `_backward_kernel` pass, grid (A blocks, B):
d logits = g/B * weight * (softmax - onehot(label)), reading only the rows with a non-zero weight (positives and mined
negatives); d locs = g/B * pos / max(num_pos, 1e-6) * clamp(locs - loc_t, -1, 1). The targets get no gradient.

Dtypes: locs and logits fp32, bf16 or fp16, and strided (the model's outputs are transposed views, read in place;
gradients come back in the same dtype and layout); loc_t any float; labels_t integer in [0, C). All arithmetic and
accumulation is fp32; the loss is an fp32 scalar. A <= MAX_ANCHORS, so that one image's CE values fit one program's
registers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ssd_ds.loss import NEG_POS_RATIO
from triton_kernels._common import NAMESPACE, check_device, softmax_rows

__all__ = ["MAX_ANCHORS", "ssd_loss"]

MAX_ANCHORS = 32768  # one image's CE values live in one program: 8732 for SSD300 needs a 16384-lane block


@triton.jit
def _loc_diff(locs_ptr, loc_t_ptr, b, a, pos, A, slb, sla, slk):
    """[BLOCK_A, 4] fp32 locs - loc_t of the positives (0 elsewhere); locs strided, loc_t contiguous [B,A,4]."""
    k = tl.arange(0, 4)
    m = pos[:, None]
    p = tl.load(locs_ptr + b * slb + a[:, None] * sla + k[None, :] * slk, mask=m, other=0.0).to(tl.float32)
    t = tl.load(loc_t_ptr + (b * A + a[:, None]) * 4 + k[None, :], mask=m, other=0.0).to(tl.float32)
    return p - t


@triton.jit
def _ce_kernel(
    locs_ptr, loc_t_ptr, logits_ptr, labels_ptr, ce_ptr, partials_ptr,
    A, C, NB, slb, sla, slk, sxb, sxa, sxc,
    BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    a = pid * BLOCK_A + tl.arange(0, BLOCK_A)
    a_ok = a < A
    label = tl.load(labels_ptr + b * A + a, mask=a_ok, other=0)
    pos = label > 0

    x, m, _, s = softmax_rows(logits_ptr, b * sxb + a * sxa, a_ok, C, sxc, BLOCK_C)
    x_label = tl.sum(tl.where(tl.arange(0, BLOCK_C)[None, :] == label[:, None], x, 0.0), axis=1)
    # CE = logsumexp - x_label, written so that both terms are >= 0: the mining bisection needs CE >= 0.
    ce = (m - x_label) + tl.log(s)
    tl.store(ce_ptr + b * A + a, ce, mask=a_ok)

    d = _loc_diff(locs_ptr, loc_t_ptr, b, a, pos, A, slb, sla, slk)
    ad = tl.abs(d)
    smooth_l1 = tl.sum(tl.where(ad < 1.0, 0.5 * d * d, ad - 0.5), axis=1)  # beta 1, SPEC section 4

    base = partials_ptr + b * 3 * NB + pid
    tl.store(base, tl.sum(tl.where(pos, smooth_l1, 0.0), axis=0))
    tl.store(base + NB, tl.sum(tl.where(pos, ce, 0.0), axis=0))
    tl.store(base + 2 * NB, tl.sum(pos.to(tl.float32), axis=0))


@triton.jit
def _mine_kernel(
    ce_ptr, labels_ptr, partials_ptr, weight_ptr, scale_ptr, loss_ptr,
    A, NB,
    NEG_POS_RATIO: tl.constexpr, BLOCK: tl.constexpr, LOG2_BLOCK: tl.constexpr, BLOCK_NB: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, BLOCK_NB)
    j_ok = j < NB
    base = partials_ptr + b * 3 * NB + j
    loc = tl.sum(tl.load(base, mask=j_ok, other=0.0), axis=0)
    ce_pos = tl.sum(tl.load(base + NB, mask=j_ok, other=0.0), axis=0)
    num_pos = tl.sum(tl.load(base + 2 * NB, mask=j_ok, other=0.0), axis=0)

    a = tl.arange(0, BLOCK)
    a_ok = a < A
    ce = tl.load(ce_ptr + b * A + a, mask=a_ok, other=0.0)
    pos = tl.load(labels_ptr + b * A + a, mask=a_ok, other=0) > 0
    # The ranking key as orderable int32 bits; lanes past A get -1, below every key (CE >= 0), so the searches below
    # need no mask.
    bits = tl.where(a_ok, tl.where(pos, 0.0, ce).to(tl.int32, bitcast=True), -1)

    k = tl.minimum(NEG_POS_RATIO * num_pos.to(tl.int32), A)
    # Both searches below are loops, not unrolled (tl.static_range): each step ends in a sum over the block, whose
    # cross-warp phase Triton 3.6 compiles to a predicated shared-memory load that leaves its register undefined where
    # the predicate is off. Unrolled, the searches make 46 such registers, all live from the kernel's start, and the
    # kernel spills (144 B of stack on sm_90, compile_check); looped, they make 2. On 3.8 (plain loads) the loops
    # leave room as well: no spill under a 56-register cap, where the unrolled searches spilled.
    # Largest t with #(key >= t) >= k, i.e. the k-th largest key, set bit by bit from the top (bit 31 is the sign).
    t = tl.zeros((), dtype=tl.int32)
    for bit in range(30, -1, -1):
        cand = t | (1 << bit)
        t = tl.where(tl.sum((bits >= cand).to(tl.int32), axis=0) >= k, cand, t)
    above = bits > t
    tie = bits == t
    # Ties ranked by anchor index, lowest first: the `need` lowest are those below the largest cut with
    # #(tie, a < cut) <= need, found by a second bisection (a scan over BLOCK lanes would spill registers).
    need = k - tl.sum(above.to(tl.int32), axis=0)
    cut = tl.zeros((), dtype=tl.int32)
    for bit in range(LOG2_BLOCK, -1, -1):
        cand = cut | (1 << bit)
        cut = tl.where(tl.sum((tie & (a < cand)).to(tl.int32), axis=0) <= need, cand, cut)
    selected = above | (tie & (a < cut))

    conf = ce_pos + tl.sum(tl.where(selected, ce, 0.0), axis=0)
    # SPEC section 4: (loc + conf) / max(num_pos, 1e-6) * (num_pos > 0), in the reference's order of operations.
    has_pos = (num_pos > 0).to(tl.float32)
    denom = tl.maximum(num_pos, 1e-6)
    tl.store(loss_ptr + b, (loc + conf) * has_pos / denom)
    scale = has_pos / denom
    tl.store(scale_ptr + b, scale)
    tl.store(weight_ptr + b * A + a, (pos.to(tl.float32) + selected.to(tl.float32)) * scale, mask=a_ok)


@triton.jit
def _backward_kernel(
    grad_ptr, locs_ptr, loc_t_ptr, logits_ptr, labels_ptr, weight_ptr, scale_ptr, grad_locs_ptr, grad_logits_ptr,
    A, C, inv_B, slb, sla, slk, sxb, sxa, sxc, sgb, sga, sgk, syb, sya, syc,
    BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    a = tl.program_id(0) * BLOCK_A + tl.arange(0, BLOCK_A)
    a_ok = a < A
    g = tl.load(grad_ptr) * inv_B  # d mean / d loss_b
    label = tl.load(labels_ptr + b * A + a, mask=a_ok, other=0)
    weight = tl.load(weight_ptr + b * A + a, mask=a_ok, other=0.0)

    # Unselected negatives (weight 0) have zero gradient: their logits are not read.
    _, _, e, s = softmax_rows(logits_ptr, b * sxb + a * sxa, a_ok & (weight != 0.0), C, sxc, BLOCK_C)
    c = tl.arange(0, BLOCK_C)
    onehot = (c[None, :] == label[:, None]).to(tl.float32)
    d_logits = (g * weight)[:, None] * (e / s[:, None] - onehot)
    tl.store(
        grad_logits_ptr + b * syb + a[:, None] * sya + c[None, :] * syc,
        d_logits.to(grad_logits_ptr.dtype.element_ty),
        mask=a_ok[:, None] & (c < C)[None, :],
    )

    # SmoothL1' (beta 1) is clamp(d, -1, 1); d is 0 off the positives.
    d = _loc_diff(locs_ptr, loc_t_ptr, b, a, label > 0, A, slb, sla, slk)
    d_locs = (g * tl.load(scale_ptr + b)) * tl.minimum(tl.maximum(d, -1.0), 1.0)
    k = tl.arange(0, 4)
    tl.store(
        grad_locs_ptr + b * sgb + a[:, None] * sga + k[None, :] * sgk,
        d_locs.to(grad_locs_ptr.dtype.element_ty),
        mask=a_ok[:, None],
    )


def _check_shapes(locs, logits, loc_t, labels_t) -> None:
    B, A = labels_t.shape[:2] if labels_t.dim() == 2 else (-1, -1)
    if not (
        labels_t.dim() == 2
        and locs.shape == (B, A, 4)
        and loc_t.shape == (B, A, 4)
        and logits.dim() == 3
        and logits.shape[:2] == (B, A)
    ):
        raise ValueError(
            "ssd_loss: want locs [B,A,4], logits [B,A,C], loc_t [B,A,4], labels_t [B,A]; got "
            f"{tuple(locs.shape)}, {tuple(logits.shape)}, {tuple(loc_t.shape)}, {tuple(labels_t.shape)}"
        )
    if labels_t.dtype.is_floating_point or labels_t.dtype == torch.bool:
        raise ValueError(f"ssd_loss: labels_t must be an integer tensor, got {labels_t.dtype}")
    if A > MAX_ANCHORS:
        raise ValueError(f"ssd_loss: A = {A} anchors exceeds MAX_ANCHORS = {MAX_ANCHORS}; use the torch backend")


def _tiles(C: int) -> tuple[int, int]:
    """(BLOCK_A, BLOCK_C): a 4096-value logits tile per program, whole rows of C classes."""
    block_c = triton.next_power_of_2(C)
    return max(1, 4096 // block_c), block_c


def _launch_forward(locs, logits, loc_t, labels_t):
    """The forward passes (the body of `ssd_loss_forward`, also what `compile_check` compiles)."""
    _check_shapes(locs, logits, loc_t, labels_t)
    check_device("ssd_loss", locs, logits, loc_t, labels_t)
    B, A, C = logits.shape
    loc_t, labels_t = loc_t.contiguous(), labels_t.contiguous()
    block_a, block_c = _tiles(C)
    nb = triton.cdiv(A, block_a)
    dev = logits.device
    ce = torch.empty(B, A, device=dev, dtype=torch.float32)
    partials = torch.empty(B, 3, nb, device=dev, dtype=torch.float32)
    weight = torch.empty(B, A, device=dev, dtype=torch.float32)
    # Zeros, not empty: with A = 0 no kernel runs and every image contributes 0 (no positives), as in the reference.
    scale = torch.zeros(B, device=dev, dtype=torch.float32)
    per_image = torch.zeros(B, device=dev, dtype=torch.float32)
    if B * A > 0:
        _ce_kernel[(nb, B)](
            locs, loc_t, logits, labels_t, ce, partials, A, C, nb, *locs.stride(), *logits.stride(),
            BLOCK_A=block_a, BLOCK_C=block_c, num_warps=4,
        )
        block = triton.next_power_of_2(A)
        _mine_kernel[(B,)](
            ce, labels_t, partials, weight, scale, per_image, A, nb,
            NEG_POS_RATIO=NEG_POS_RATIO, BLOCK=block, LOG2_BLOCK=block.bit_length() - 1,
            BLOCK_NB=triton.next_power_of_2(nb),
            num_warps=min(32, max(4, block // 512)),
        )
    return per_image.mean(), weight, scale


@torch.library.custom_op(f"{NAMESPACE}::ssd_loss_forward", mutates_args=())
def ssd_loss_forward(
    locs: torch.Tensor, logits: torch.Tensor, loc_t: torch.Tensor, labels_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (loss [] fp32, weight [B,A] fp32, scale [B] fp32); weight and scale are what the backward needs."""
    return _launch_forward(locs, logits, loc_t, labels_t)


@ssd_loss_forward.register_fake
def _ssd_loss_forward_fake(locs, logits, loc_t, labels_t):
    _check_shapes(locs, logits, loc_t, labels_t)
    check_device("ssd_loss", locs, logits, loc_t, labels_t)  # fake tensors too: fail where a GPU run would
    B, A = labels_t.shape
    f32 = dict(dtype=torch.float32)
    return logits.new_empty((), **f32), logits.new_empty((B, A), **f32), logits.new_empty((B,), **f32)


def _launch_backward(grad_loss, locs, logits, loc_t, labels_t, weight, scale):
    """The backward pass (the body of `ssd_loss_backward`)."""
    check_device("ssd_loss", grad_loss, locs, logits, loc_t, labels_t, weight, scale)
    B, A, C = logits.shape
    loc_t, labels_t = loc_t.contiguous(), labels_t.contiguous()
    grad_locs = torch.empty_like(locs)
    grad_logits = torch.empty_like(logits)
    if B * A > 0:
        block_a, block_c = _tiles(C)
        _backward_kernel[(triton.cdiv(A, block_a), B)](
            grad_loss.float(), locs, loc_t, logits, labels_t, weight.contiguous(), scale.contiguous(),
            grad_locs, grad_logits, A, C, 1.0 / B,
            *locs.stride(), *logits.stride(), *grad_locs.stride(), *grad_logits.stride(),
            BLOCK_A=block_a, BLOCK_C=block_c, num_warps=4,
        )
    return grad_locs, grad_logits


@torch.library.custom_op(f"{NAMESPACE}::ssd_loss_backward", mutates_args=())
def ssd_loss_backward(
    grad_loss: torch.Tensor,
    locs: torch.Tensor,
    logits: torch.Tensor,
    loc_t: torch.Tensor,
    labels_t: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """d loss / d (locs, logits), in the dtypes of locs and logits."""
    return _launch_backward(grad_loss, locs, logits, loc_t, labels_t, weight, scale)


@ssd_loss_backward.register_fake
def _ssd_loss_backward_fake(grad_loss, locs, logits, loc_t, labels_t, weight, scale):
    check_device("ssd_loss", grad_loss, locs, logits, loc_t, labels_t, weight, scale)
    return torch.empty_like(locs), torch.empty_like(logits)


def _setup_context(ctx, inputs, output) -> None:
    _, weight, scale = output
    ctx.save_for_backward(*inputs, weight, scale)
    ctx.mark_non_differentiable(weight, scale)


def _backward(ctx, grad_loss, _grad_weight, _grad_scale):
    grad_locs, grad_logits = ssd_loss_backward(grad_loss, *ctx.saved_tensors)
    return grad_locs, grad_logits, None, None


ssd_loss_forward.register_autograd(_backward, setup_context=_setup_context)


def ssd_loss(locs: torch.Tensor, logits: torch.Tensor, loc_t: torch.Tensor, labels_t: torch.Tensor) -> torch.Tensor:
    """Scalar fp32 SSD loss (Triton), differentiable in locs and logits; same contract as `ssd_ds.loss.ssd_loss`."""
    return ssd_loss_forward(locs, logits, loc_t, labels_t)[0]

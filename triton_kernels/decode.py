"""Box decoding (the inverse of SPEC section 3) fused with the class softmax and score threshold of SPEC section 6,
so that evaluation post-processing reads the logits once.

The op, registered as `torch.ops.ssd_kernels.decode_scores` (no gradients: evaluation only):
`decode_scores(locs [B,A,4], logits [B,A,C], dboxes_cxcywh [A,4], score_threshold) -> (boxes_ltrb [B,A,4] fp32,
scores [B,A,C] fp32)`: one pass per anchor block reads the 4 offsets and the C logits, writes the ltrb box and the
softmax scores, and writes every score <= score_threshold as 0.

locs and logits may be fp32, bf16 or fp16, and strided (the model's outputs are transposed views, read in place);
all arithmetic is fp32. The zeroed scores change nothing downstream:
`ssd_ds.postprocess.detect_image` keeps only scores > threshold, and a zero is never kept.

The reference (the spec and the CPU fallback) is `ssd_ds.postprocess.decode_scores`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ssd_ds.box_coder import SCALE_WH, SCALE_XY
from triton_kernels._common import NAMESPACE, check_device, softmax_rows

__all__ = ["decode_scores"]


@triton.jit
def _decode_kernel(
    locs_ptr, dboxes_ptr, boxes_ptr, logits_ptr, scores_ptr,
    A, C, score_threshold, slb, sla, slk, sxb, sxa, sxc,
    SCALE_XY: tl.constexpr, SCALE_WH: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Grid (cdiv(A, BLOCK_A), B): one block of anchors of one image.
    b = tl.program_id(1).to(tl.int64)
    a = tl.program_id(0) * BLOCK_A + tl.arange(0, BLOCK_A)
    a_ok = a < A
    row = b * A + a  # anchor's row in the contiguous outputs
    loc = locs_ptr + b * slb + a * sla

    px = tl.load(loc, mask=a_ok, other=0.0).to(tl.float32)
    py = tl.load(loc + slk, mask=a_ok, other=0.0).to(tl.float32)
    pw = tl.load(loc + 2 * slk, mask=a_ok, other=0.0).to(tl.float32)
    ph = tl.load(loc + 3 * slk, mask=a_ok, other=0.0).to(tl.float32)
    dcx = tl.load(dboxes_ptr + a * 4 + 0, mask=a_ok, other=0.0)
    dcy = tl.load(dboxes_ptr + a * 4 + 1, mask=a_ok, other=0.0)
    dw = tl.load(dboxes_ptr + a * 4 + 2, mask=a_ok, other=0.0)
    dh = tl.load(dboxes_ptr + a * 4 + 3, mask=a_ok, other=0.0)
    # SPEC section 3: xy = 0.1 * p_xy * d_wh + d_xy, wh = exp(0.2 * p_wh) * d_wh, then centre-size -> ltrb.
    cx = SCALE_XY * px * dw + dcx
    cy = SCALE_XY * py * dh + dcy
    w = tl.exp(SCALE_WH * pw) * dw
    h = tl.exp(SCALE_WH * ph) * dh
    tl.store(boxes_ptr + row * 4 + 0, cx - 0.5 * w, mask=a_ok)
    tl.store(boxes_ptr + row * 4 + 1, cy - 0.5 * h, mask=a_ok)
    tl.store(boxes_ptr + row * 4 + 2, cx + 0.5 * w, mask=a_ok)
    tl.store(boxes_ptr + row * 4 + 3, cy + 0.5 * h, mask=a_ok)

    _, _, e, s = softmax_rows(logits_ptr, b * sxb + a * sxa, a_ok, C, sxc, BLOCK_C)
    p = e / s[:, None]
    c = tl.arange(0, BLOCK_C)
    ok = a_ok[:, None] & (c < C)[None, :]
    tl.store(scores_ptr + row[:, None] * C + c[None, :], tl.where(p > score_threshold, p, 0.0), mask=ok)


def _check_shapes(locs: torch.Tensor, dboxes_cxcywh: torch.Tensor, logits: torch.Tensor) -> None:
    if locs.dim() != 3 or locs.shape[2] != 4 or dboxes_cxcywh.shape != (locs.shape[1], 4):
        raise ValueError(
            "decode: want locs [B,A,4] and dboxes_cxcywh [A,4], "
            f"got {tuple(locs.shape)} and {tuple(dboxes_cxcywh.shape)}"
        )
    if logits.dim() != 3 or logits.shape[:2] != locs.shape[:2]:
        raise ValueError(
            f"decode: want logits [B,A,C] with locs [B,A,4], got {tuple(logits.shape)} and {tuple(locs.shape)}"
        )


def _launch(locs, dboxes_cxcywh, logits, score_threshold):
    """(boxes, scores). locs and logits are read in place whatever their strides (the model's are views)."""
    _check_shapes(locs, dboxes_cxcywh, logits)
    check_device("decode", locs, dboxes_cxcywh, logits)
    B, A, _ = locs.shape
    C = logits.shape[2]
    boxes = locs.new_empty((B, A, 4), dtype=torch.float32)
    scores = logits.new_empty((B, A, C), dtype=torch.float32)
    block_c = triton.next_power_of_2(C)
    block_a = max(1, 4096 // block_c)  # a 4096-value logits tile per program
    if B * A > 0:
        _decode_kernel[(triton.cdiv(A, block_a), B)](
            locs, dboxes_cxcywh.float().contiguous(), boxes, logits, scores, A, C, score_threshold,
            *locs.stride(), *logits.stride(),
            SCALE_XY=SCALE_XY, SCALE_WH=SCALE_WH, BLOCK_A=block_a, BLOCK_C=block_c, num_warps=4,
        )
    return boxes, scores


@torch.library.custom_op(f"{NAMESPACE}::decode_scores", mutates_args=())
def decode_scores(
    locs: torch.Tensor, logits: torch.Tensor, dboxes_cxcywh: torch.Tensor, score_threshold: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """locs [B,A,4], logits [B,A,C] -> (ltrb boxes [B,A,4] fp32, softmax scores [B,A,C] fp32, 0 where <= threshold)."""
    return _launch(locs, dboxes_cxcywh, logits, score_threshold)


@decode_scores.register_fake
def _decode_scores_fake(locs, logits, dboxes_cxcywh, score_threshold=0.05):
    _check_shapes(locs, dboxes_cxcywh, logits)
    check_device("decode", locs, logits, dboxes_cxcywh)
    return locs.new_empty(locs.shape, dtype=torch.float32), logits.new_empty(logits.shape, dtype=torch.float32)


"""What the kernel files share: whether Triton runs interpreted, the device check every launcher makes, the library
namespace of their custom ops, and the row softmax that the loss and the decoder both read logits with."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# `triton.jit` reads TRITON_INTERPRET when a kernel module is imported, so the value at import time is the one that
# decides how the kernels run; launchers check it instead of re-reading the environment.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

# Every op registers as torch.ops.ssd_kernels.<name>.
NAMESPACE = "ssd_kernels"


def check_device(op: str, *tensors: torch.Tensor) -> None:
    """Raise a clear error when a kernel would be launched on tensors Triton cannot reach."""
    for t in tensors:
        if t.device.type != "cuda" and not INTERPRETED:
            raise RuntimeError(
                f"{op}: the Triton kernel needs CUDA tensors, got {t.device}. On CPU use the torch backend, or set "
                "TRITON_INTERPRET=1 before importing triton_kernels to run the kernel in Triton's interpreter."
            )
    if len({t.device for t in tensors}) > 1:
        raise RuntimeError(f"{op}: all tensors must be on one device, got {sorted({str(t.device) for t in tensors})}")


@triton.jit
def softmax_rows(ptr, offsets, row_ok, C, stride_c, BLOCK_C: tl.constexpr):
    """Load [N, BLOCK_C] logits (row n at ptr + offsets[n], class c at + c * stride_c) as fp32, with its softmax parts.

    Returns (x, m, e, s): the tile (-inf outside C and outside row_ok), the row max, exp(x - max) and its row sum,
    so that softmax = e / s and logsumexp = m + log(s). Rows outside row_ok get max 0 and sum 1, which keeps them free
    of inf - inf and 0/0.
    """
    c = tl.arange(0, BLOCK_C)
    ok = row_ok[:, None] & (c < C)[None, :]
    x = tl.load(ptr + offsets[:, None] + c[None, :] * stride_c, mask=ok, other=float("-inf")).to(tl.float32)
    m = tl.where(row_ok, tl.max(x, axis=1), 0.0)
    e = tl.exp(x - m[:, None])
    s = tl.where(row_ok, tl.sum(e, axis=1), 1.0)
    return x, m, e, s

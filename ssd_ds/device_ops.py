"""The ops of one run resolved for its device: the torch reference or the Triton kernel of the loss, the decode and
the box encoding, bound to the default boxes they read, built on that device.

Kernel choice: `resolve_backend(requested, device)` turns a config value ("auto", "torch" or "triton") into the
backend that will run; `op_fn(op, backend)` (and the typed helpers below it) return a callable with the same signature
for either backend. Modules are imported only when their backend is chosen, so a run on the torch backend never
imports Triton.

Everything that lives on the device is built for the device here (`DeviceOps`): the default boxes that evaluation
decodes against and that on-device encoding matches against. The trainer gets them through
`ssd_ds.speedups.build_training_setup`, evaluation, prediction and export through `ssd_ds.inference.inference_ops`.
`tests/unit/test_fake_cuda.py` runs these paths with fake CUDA tensors, which raise on any CPU tensor mixed into them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from ssd_ds.anchors import default_boxes_ltrb
from ssd_ds.box_coder import BoxCoder
from ssd_ds.model_config import ModelConfig

BACKENDS = ("auto", "torch", "triton")


def _ssd_loss(triton: bool) -> Callable:
    if triton:
        from triton_kernels.loss import ssd_loss
    else:
        from ssd_ds.loss import ssd_loss
    return ssd_loss


def _decode_scores(triton: bool) -> Callable:
    if triton:
        from triton_kernels.decode import decode_scores
    else:
        from ssd_ds.postprocess import decode_scores
    return decode_scores


def _encode(triton: bool) -> Callable:
    if triton:
        from triton_kernels.encode import encode_batch
    else:
        from ssd_ds.box_coder import encode_batch
    return encode_batch


# op -> a function of (Triton or not) that imports that side when asked for. Both sides take and return the same
# tensors.
OPS = {"ssd_loss": _ssd_loss, "decode_scores": _decode_scores, "encode": _encode}


def triton_unavailable_reason(device: torch.device | str) -> str | None:
    """Why the Triton kernels cannot run on `device`, or None when they can."""
    device = torch.device(device)
    try:
        import triton  # noqa: F401
    except Exception as e:  # not installed, or installed but broken: either way the kernels cannot run
        return f"triton does not import ({type(e).__name__}: {e})"
    if device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
        return None
    return (
        f"Triton kernels need a CUDA device, got {device}; on CPU they run only in Triton's interpreter "
        "(TRITON_INTERPRET=1 set before importing triton_kernels), which is for tests"
    )


def resolve_backend(requested: str, device: torch.device | str) -> str:
    """"auto" -> "triton" on CUDA when Triton imports, else "torch"; "triton" where it cannot run is an error."""
    if requested not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {requested!r}")
    if requested == "torch" or (requested == "auto" and torch.device(device).type != "cuda"):
        return "torch"
    reason = triton_unavailable_reason(device)
    if requested == "auto":
        return "torch" if reason else "triton"
    if reason is not None:
        raise RuntimeError(f"kernel backend 'triton' requested but {reason}; use 'auto' or 'torch'")
    return "triton"


def op_fn(op: str, backend: str) -> Callable:
    """The callable for `op` (a key of OPS) on a resolved backend, "torch" or "triton"."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; choose from {sorted(OPS)}")
    if backend not in ("torch", "triton"):
        raise ValueError(f"backend must be 'torch' or 'triton' (resolve 'auto' with resolve_backend), got {backend!r}")
    return OPS[op](backend == "triton")


def ssd_loss_fn(backend: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """`loss(locs [B,A,4], logits [B,A,C], loc_t [B,A,4], labels_t [B,A]) -> fp32 scalar` (SPEC section 4)."""
    return op_fn("ssd_loss", backend)


def decode_scores_fn(backend: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """`decode_scores(locs, logits [B,A,C], dboxes_cxcywh, score_threshold=0.05) -> (boxes_ltrb, scores)`, fp32,
    scores <= threshold written as 0; pass it as `ssd_ds.postprocess.postprocess(..., decode=...)`."""
    return op_fn("decode_scores", backend)


def encode_fn(backend: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """`encode(gt_ltrb [B,G,4], gt_labels [B,G], num_gt [B], dboxes_ltrb [A,4]) -> (loc_t [B,A,4], labels_t [B,A])`."""
    return op_fn("encode", backend)


@dataclass
class DeviceOps:
    """The ops of one run resolved for its device, with the default boxes they read on that device."""

    backend: str  # "torch" or "triton" (resolve_backend)
    device: torch.device
    coder: BoxCoder  # default boxes on `device`: evaluation decodes and on-device encoding matches against them
    loss: Callable  # loss(locs, logits, loc_t, labels_t) -> fp32 scalar
    decode_scores: Callable  # decode_scores(locs, logits, dboxes_cxcywh, threshold) -> (boxes, scores)
    encode: Callable | None  # encode(gt_ltrb, gt_labels, num_gt) -> (loc_t, labels_t) on `device`; None: workers do


def should_encode_on_device(setting: str, device: torch.device) -> bool:
    """--encode_on_device auto|on|off: auto matches and encodes on the GPU (NVIDIA's GPU box encoder) on CUDA."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def build_device_ops(model_cfg: ModelConfig, device: torch.device, kernels: str = "auto",
                     encode_on_device: str = "auto") -> DeviceOps:
    """The run's `DeviceOps`: the torch or Triton implementation of every op, bound to default boxes on `device`."""
    backend = resolve_backend(kernels, device)
    coder = BoxCoder(default_boxes_ltrb(model_cfg.anchors)).to(device)
    encode = None
    if should_encode_on_device(encode_on_device, device):
        encode_batch = encode_fn(backend)
        dboxes_ltrb = coder.dboxes_ltrb
        encode = lambda gt_ltrb, gt_labels, num_gt: encode_batch(gt_ltrb, gt_labels, num_gt, dboxes_ltrb)  # noqa: E731
    return DeviceOps(backend, device, coder, ssd_loss_fn(backend), decode_scores_fn(backend), encode)

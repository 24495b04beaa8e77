"""The ops of one run resolved for its device: the torch or Triton implementation of the loss, the decode and the
box encoding (triton_kernels.select), bound to the default boxes they read, built on that device.

Everything that lives on the device is built for the device here (`DeviceOps`): the default boxes that evaluation
decodes against and that on-device encoding matches against. The trainer gets them through
`ssd_ds.speedups.build_training_setup`, evaluation, prediction and export through `ssd_ds.inference.inference_ops`.
`tests/unit/test_fake_cuda.py` runs these paths with fake CUDA tensors, which raise on any CPU tensor mixed into them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ssd_ds.anchors import default_boxes_ltrb
from ssd_ds.box_coder import BoxCoder
from ssd_ds.model_config import ModelConfig
from triton_kernels.select import decode_scores_fn, encode_fn, resolve_backend, ssd_loss_fn


@dataclass
class DeviceOps:
    """The ops of one run resolved for its device, with the default boxes they read on that device."""

    backend: str  # "torch" or "triton" (triton_kernels.select)
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

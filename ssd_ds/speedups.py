"""Speed-ups, applied to the plain single-device model from one place and in the one order that works:
kernel choice -> torch.compile -> deepspeed.initialize -> memory format.

`build_training_setup` is what the trainer and `python -m ssd_ds.bench train` both call, so the benchmark times exactly
the configuration that trains. Why this order: compile wraps the step module before DeepSpeed holds it; DeepSpeed's
start-up broadcast views every parameter as bytes, which needs the default layout, so channels_last comes after it
(converting then swaps the tensors under the same Parameter objects the optimizer holds), and torch.compile traces
lazily, at the first step, so it still sees the final layout.

The ops on the device (`DeviceOps`: the kernel choice and the default boxes) are built by `ssd_ds.device_ops`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ssd_ds.data.device_input import should_decode_on_device
from ssd_ds.device_ops import DeviceOps, build_device_ops, should_encode_on_device
from ssd_ds.ds_config import engine_settings
from ssd_ds.model_config import ModelConfig
from ssd_ds.run_config import RunConfig
from ssd_ds.step import SSDTrainStep


def should_compile(setting: str, device: torch.device) -> bool:
    """--compile auto|on|off: auto compiles on CUDA (on CPU compiling costs minutes and gains little)."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def apply_compile(step: SSDTrainStep, setting: str, device: torch.device) -> bool:
    """torch.compile the model + loss module in place (traced lazily, at its first call); True when compiled."""
    if should_compile(setting, device):
        step.compile()
        return True
    return False


def build_optimizer(model: torch.nn.Module, lr: float, momentum: float, weight_decay: float,
                    device: torch.device) -> torch.optim.SGD:
    """SGD with momentum on every parameter (SPEC section 7); on CUDA the fused implementation (one kernel for all
    parameters instead of a launch per tensor)."""
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, **fused)


def init_deepspeed(step: SSDTrainStep, optimizer, scheduler, ds_config: dict):
    """deepspeed.initialize around the (compiled) step module; imported here because DS_ACCELERATOR is read then."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=step, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    return engine


def apply_memory_format(engine, channels_last: bool) -> torch.memory_format:
    """NHWC activations and weights for the cuDNN/oneDNN convolutions; after deepspeed.initialize (module doc)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    engine.module.to(memory_format=memory_format)
    return memory_format


@dataclass
class TrainingSetup:
    """What the training step and evaluation need: the DeepSpeed engine, the ops on its device, the memory format
    batches are put in, and the model evaluation runs."""

    deepspeed: object  # deepspeed.DeepSpeedEngine around an SSDTrainStep
    ops: DeviceOps
    memory_format: torch.memory_format
    compiled: bool
    eval_model: torch.nn.Module  # the model evaluation runs: compiled (for inference) where the step is


def build_training_setup(model: torch.nn.Module, model_cfg: ModelConfig, device: torch.device, ds_config: dict, *,
                         kernels: str = "auto", compile: str = "auto", encode_on_device: str = "auto",
                         channels_last: bool = True, optimizer_fn: Callable | None = None,
                         scheduler_fn: Callable | None = None) -> TrainingSetup:
    """kernel choice -> torch.compile -> deepspeed.initialize -> memory format, on a model already on `device`.

    optimizer_fn(model) builds the optimizer (default: SGD lr 1e-3 for benchmarks); scheduler_fn(optimizer) the LR
    scheduler or None.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: autotune each convolution once
    ops = build_device_ops(model_cfg, device, kernels, encode_on_device)
    step = SSDTrainStep(model, ops.loss)
    compiled = apply_compile(step, compile, device)
    optimizer = (optimizer_fn or (lambda m: build_optimizer(m, 1e-3, 0.9, 0.0, device)))(model)
    scheduler = scheduler_fn(optimizer) if scheduler_fn else None
    engine = init_deepspeed(step, optimizer, scheduler, engine_settings(ds_config, device))
    memory_format = apply_memory_format(engine, channels_last)
    eval_model = torch.compile(model) if compiled else model  # shares the parameters; traced at the first evaluation
    return TrainingSetup(engine, ops, memory_format, compiled, eval_model)


def input_on_device(cfg: RunConfig, device: torch.device) -> tuple[bool, bool]:
    """Where a run of `cfg` on `device` prepares its batches: (images decoded and augmented on the device, boxes
    encoded on the device). Decoding on the device leaves the boxes to the device too."""
    decode = should_decode_on_device(cfg.input, device)
    return decode, decode or should_encode_on_device(cfg.encode_on_device, device)


def training_setup_options(cfg: RunConfig, device: torch.device, lr: float) -> dict:
    """The settings a run of `cfg` passes to `build_training_setup` on `device`, the LR schedule aside: the trainer
    and `python -m ssd_ds.bench train` (which times the setup they build as the trainer's configuration) both call
    this."""
    _, encode_on_device = input_on_device(cfg, device)
    return dict(kernels=cfg.kernels, compile=cfg.compile, encode_on_device="on" if encode_on_device else "off",
                channels_last=cfg.channels_last,
                optimizer_fn=lambda m: build_optimizer(m, lr, cfg.momentum, cfg.weight_decay, device))

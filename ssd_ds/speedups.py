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

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ssd_ds.data.batch import box_slot_counts, box_slots
from ssd_ds.data.transforms import normalize_images
from ssd_ds.device_ops import DeviceOps, build_device_ops
from ssd_ds.ds_config import engine_settings
from ssd_ds.fileio import atomic_write
from ssd_ds.inference import detect_batch
from ssd_ds.model_config import ModelConfig
from ssd_ds.rng import rng_state, set_rng_state
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


def synthetic_batch(micro_batch: int, input_size: int, max_boxes: int, generator: torch.Generator | None = None):
    """Random pixels and boxes in the shapes the loader ships (warm-up and benchmarks; no training data touched):
    (images [B,3,S,S] uint8, gt_ltrb [B,max_boxes,4] relative, gt_labels [B,max_boxes]), 8 boxes an image."""
    generator = generator or torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (micro_batch, 3, input_size, input_size), dtype=torch.uint8, generator=generator)
    G = min(max_boxes, 8)
    xy = torch.rand(micro_batch, G, 2, generator=generator) * 0.6
    wh = 0.1 + torch.rand(micro_batch, G, 2, generator=generator) * 0.3
    gt_ltrb = torch.zeros(micro_batch, max_boxes, 4)
    gt_labels = torch.zeros(micro_batch, max_boxes, dtype=torch.int64)
    gt_ltrb[:, :G] = torch.cat([xy, xy + wh], dim=2)
    gt_labels[:, :G] = 1
    return images, gt_ltrb, gt_labels


def warm_up(built: TrainingSetup, micro_batch: int, input_size: int, max_boxes: int, eval_batch: int,
            autocast_dtype: torch.dtype | None, steps: int = 2) -> float:
    """Compile everything the run will run, on synthetic tensors, before MLPerf's `run_start` (which forbids touching
    the training data earlier) so that nothing compiles inside the timed run: the training step forward and backward
    (torch.compile, cuDNN autotuning, the Triton kernels), the encoding at every box-slot count the loader pads to,
    and one evaluation batch through the evaluation model and its post-processing. Then put back everything these
    change (parameters' gradients, BatchNorm statistics, the model's mode, every RNG), so what trains is unchanged.

    `eval_batch` and `autocast_dtype` are the evaluation's (ssd_ds.loop.evaluate): a compiled evaluation model is
    given every batch at that size, so this is the one shape it compiles for. Returns the seconds the evaluation
    model's part took (its compile, where it compiles)."""
    # the autocast the engine's forward applies
    from deepspeed.runtime.torch_autocast import autocast_if_enabled

    engine, ops = built.deepspeed, built.ops
    step: SSDTrainStep = engine.module
    saved_state = {k: v.clone() for k, v in step.state_dict().items()}
    saved_rng = rng_state()
    images, gt_ltrb, gt_labels = synthetic_batch(micro_batch, input_size, box_slots(max_boxes))
    images = normalize_images(images.to(ops.device), built.memory_format)
    gt_ltrb, gt_labels = gt_ltrb.to(ops.device), gt_labels.to(ops.device)
    num_gt = (gt_labels > 0).sum(dim=1)
    encode = ops.encode or ops.coder.encode_batch  # the workers' encoding, on the device, when they encode
    # The Triton encode kernel specialises on G: once at every count the loader pads to (each slice holds every
    # synthetic box: they are in the first 8 slots).
    for G in box_slot_counts(max_boxes):
        encode(gt_ltrb[:, :G].contiguous(), gt_labels[:, :G].contiguous(), num_gt)
    for _ in range(steps):
        loc_t, labels_t = encode(gt_ltrb, gt_labels, num_gt)
        with autocast_if_enabled(engine):
            loss, _, _ = step(images, loc_t, labels_t)
        loss.backward()
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"warm-up loss is {float(loss)}: the model or loss is broken before training")
    # The evaluation model (compiled apart from the step) as `infer_detections` runs it: in eval mode, where BatchNorm
    # reads its running statistics and leaves them alone, without gradients, at the evaluation's batch size.
    _synchronize(ops.device)
    t0 = time.perf_counter()
    was_training = built.eval_model.training
    built.eval_model.eval()
    eval_images, _, _ = synthetic_batch(eval_batch, input_size, max_boxes=0)  # uint8, as the eval loader ships
    detect_batch(built.eval_model, eval_images, ops.coder, ops.device, autocast_dtype, ops.decode_scores,
                 built.memory_format)
    built.eval_model.train(was_training)
    _synchronize(ops.device)
    eval_seconds = time.perf_counter() - t0
    for p in step.parameters():
        p.grad = None
    step.load_state_dict(saved_state)
    set_rng_state(saved_rng)
    _synchronize(ops.device)
    return eval_seconds


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_compile_cache(path: str) -> bool:
    """Load torch.compile's cache artifacts (`torch.compiler.save_cache_artifacts`) from `path` if it exists, so that
    the compiles of an earlier run with the same torch, GPU, model and shapes are cache hits; False if absent."""
    if not Path(path).is_file():
        return False
    torch.compiler.load_cache_artifacts(Path(path).read_bytes())
    return True


def save_compile_cache(path: str) -> int | None:
    """Save this process's torch.compile cache artifacts to `path` (atomically): their size in bytes, or None when
    nothing compiled."""
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is None:
        return None
    data, _info = artifacts
    atomic_write(path, data)
    return len(data)

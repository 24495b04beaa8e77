"""The DeepSpeed JSON (`ds_configs/*.json`): read, checked against the world size, its precision resolved.

The JSON holds the engine settings only: micro-batch, gradient accumulation, precision. Everything about the run
(schedule, data, logging) is the run config's (ssd_ds.run_config). `load` is what the trainer calls at start-up and
`ssd_ds.launch` before it starts any process, so a mismatch is one clear error naming the file, never a hang.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ssd_ds.errors import BadInput
from ssd_ds.fileio import read_json


@dataclass
class BatchPlan:
    """Batch arithmetic read from the DeepSpeed JSON and checked against the world size."""

    micro_batch: int
    accumulation: int
    world_size: int
    global_batch: int = field(init=False)

    def __post_init__(self) -> None:
        self.global_batch = self.micro_batch * self.accumulation * self.world_size


@dataclass
class DeepSpeedConfig:
    """A checked DeepSpeed JSON: the dict passed to deepspeed.initialize, its batch plan and its autocast dtype."""

    path: str
    settings: dict
    plan: BatchPlan
    autocast_dtype: torch.dtype | None  # None: fp32


def read(path: str) -> dict:
    """The JSON object of `path`, naming the file when it is missing, malformed or not an object."""
    settings = read_json(path, "DeepSpeed config")
    if not isinstance(settings, dict):
        raise BadInput(f"{path}: a DeepSpeed config is a JSON object, got {type(settings).__name__}")
    return settings


def load(path: str, world_size: int) -> DeepSpeedConfig:
    """Read, check the batch arithmetic against `world_size`, resolve the precision; fill in train_batch_size."""
    settings = read(path)
    plan = check_batch(settings, path, world_size)
    settings.setdefault("train_batch_size", plan.global_batch)
    return DeepSpeedConfig(path, settings, plan, precision_of(settings, path))


def check_batch(settings: dict, path: str, world_size: int) -> BatchPlan:
    """micro x accumulation x world must equal train_batch_size; a clear error naming the file otherwise."""
    micro = settings.get("train_micro_batch_size_per_gpu")
    accum = settings.get("gradient_accumulation_steps", 1)
    total = settings.get("train_batch_size")
    if micro is None:
        if total is None:
            raise BadInput(f"{path}: set train_micro_batch_size_per_gpu (and train_batch_size)")
        micro, rem = divmod(total, accum * world_size)
        if rem:
            raise BadInput(f"{path}: train_batch_size {total} is not divisible by gradient_accumulation_steps "
                           f"{accum} x world size {world_size}")
    plan = BatchPlan(micro, accum, world_size)
    if total is not None and total != plan.global_batch:
        raise BadInput(
            f"{path}: train_batch_size {total} != train_micro_batch_size_per_gpu {micro} x "
            f"gradient_accumulation_steps {accum} x world size {world_size} (= {plan.global_batch}); "
            f"pick the DeepSpeed config made for this number of GPUs (see ds_configs/README.md)"
        )
    return plan


def precision_of(settings: dict, path: str) -> torch.dtype | None:
    """The autocast dtype the JSON asks for (None = fp32).

    Reduced precision goes through DeepSpeed's `torch_autocast`: parameters, BatchNorm and the optimizer stay fp32
    (SPEC section 7: NVIDIA kept BN in fp32), convolutions run in bf16/fp16; fp16 adds dynamic loss scaling.
    DeepSpeed's `bf16`/`fp16` blocks cast every parameter, BatchNorm's included, so they are refused here.
    """
    for block in ("bf16", "fp16"):
        if settings.get(block, {}).get("enabled"):
            raise BadInput(f"{path}: '{block}.enabled' casts BatchNorm to {block}; use "
                           f"\"torch_autocast\": {{\"enabled\": true, \"dtype\": \"...\"}} instead")
    autocast = settings.get("torch_autocast", {})
    if not autocast.get("enabled"):
        return None
    dtype = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    name = str(autocast.get("dtype", "bfloat16")).replace("torch.", "")
    if name not in dtype:
        raise BadInput(f"{path}: torch_autocast.dtype {name!r} is not bfloat16 or float16")
    if dtype[name] == torch.float16 and not torch.cuda.is_available():
        raise BadInput(f"{path}: fp16 needs a GPU (DeepSpeed refuses fp16 on CPU); use bfloat16 or fp32")
    return dtype[name]


def engine_settings(settings: dict, device: torch.device) -> dict:
    """The settings the trainer needs whatever the JSON says: no step printing, and on CUDA no throughput timer (it
    calls torch.cuda.synchronize() twice per micro-step). A JSON that sets them keeps its own values."""
    settings = dict(settings)
    settings.setdefault("steps_per_print", 10**9)
    if device.type == "cuda":
        settings.setdefault("timers", {"throughput": {"enabled": False, "synchronized": False}})
    return settings

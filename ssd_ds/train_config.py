"""Typed trainer configuration, named presets and command-line overrides.

`mlperf()` holds the benchmark's schedule for NVIDIA's DGX A100 submission (SPEC section 7); the per-system values
of the other submissions are CLI overrides in the launch scripts. `demo()` trains the CPU model on the built-in
synthetic data set in minutes. DeepSpeed JSON holds the engine settings only (batch, accumulation, precision);
`check_batch` verifies at start-up that it agrees with the world size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainConfig:
    """Everything a run needs besides the DeepSpeed JSON; saved resolved in the run directory."""

    preset: str = "demo"  # name of the preset these values started from
    model: str = "cpu_small"  # model preset (ssd_ds.config)
    backbone_weights: str | None = None  # torchvision resnet34 file, "imagenet" (hub cache) or None (random init)
    data: str = "data/synthetic"  # COCO-laid-out dataset directory
    synthetic: bool = True  # generate the synthetic data set at `data` when it is absent
    deepspeed_config: str = "ds_configs/cpu_fp32.json"  # engine settings: batch, accumulation, precision
    run_dir: str = "runs/demo"  # checkpoints, logs, TensorBoard, resolved config
    new_run_dir: bool = False  # run_dir holds a previous run: False refuses, True takes the next free run_dir-<k>
    seed: int = 1  # data order, augmentation and init
    epochs: int = 12  # maximum epochs; the run stops earlier at the target
    lr_arg: float = 3.2e-3  # base-LR rule input: base = 2.5e-3 * round(lr_arg / 2.5e-3 * global_batch / 32)
    momentum: float = 0.9  # SGD momentum (SPEC section 7)
    weight_decay: float = 1.3e-4  # on all parameters (SPEC section 7)
    warmup_iters: int = 650  # linear warmup length in iterations, from factor 0
    warmup_factor: float = 0.0  # LR fraction at iteration 0 of the warmup (logged; SPEC uses 0)
    decay_epochs: tuple[int, ...] = (44, 55)  # x decay_factor once this many epochs are complete
    decay_factor: float = 0.1  # LR multiplier at each boundary
    eval_epochs: tuple[int, ...] = (40, 50, 55)  # evaluate after these epochs (1-based) ...
    eval_every: int = 5  # ... and every this many epochs after the last one
    target_map: float = 0.23  # stop when COCO AP reaches this
    eval_batch: int = 64  # images per rank per evaluation batch
    workers: int = 4  # DataLoader worker processes per rank
    threads: int = 0  # torch intra-op threads per rank (0: leave torch's default)
    compile: str = "auto"  # torch.compile of model+loss: auto (on for CUDA), on, off
    kernels: str = "auto"  # loss/decode/encode backend: auto (triton on CUDA), torch, triton
    encode_on_device: str = "auto"  # match+encode boxes on the device (auto: on CUDA) instead of in the loader workers
    warm_up: str = "auto"  # compile/autotune on synthetic data before run_start: auto (compiled or CUDA), on, off
    max_boxes: int = 128  # boxes per image shipped raw when encoding on the device (COCO 2017 train has <= 93)
    channels_last: bool = True  # NHWC activations (faster convolutions on GPUs and on oneDNN CPUs)
    checkpoint_every: int = 0  # also checkpoint every this many iterations (0: only at epoch ends)
    keep_checkpoints: int = 2  # checkpoints kept on disk
    log_every: int = 10  # iterations between loss logging / finiteness checks / eval polls
    eval_images_to_draw: int = 4  # validation images with predicted boxes sent to TensorBoard
    max_iters: int = 0  # stop after this many iterations in all (0: no limit); for tests and benchmarks
    division: str = "closed"  # MLPerf division logged: closed only for the benchmark's own schedule
    submission_platform: str = "unknown"  # MLPerf submission_platform
    dist_timeout: float = 600.0  # seconds any collective or the rendezvous may wait before the run fails
    progress: bool = True  # progress bar on rank 0
    resume: str | None = None  # "auto" (latest in run_dir), a checkpoint directory, or None
    eval_only: bool = False  # evaluate the resumed checkpoint (on all ranks, sharded) and exit

    def save(self, path: Path) -> None:
        """Write the resolved config as JSON, atomically."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        tmp.replace(path)


def mlperf() -> TrainConfig:
    """The benchmark on NVIDIA's DGX A100 values (SPEC section 7): 8 x 114, lr 0.09, warmup 650, decay 44/55."""
    return TrainConfig(
        preset="mlperf",
        model="mlperf",
        backbone_weights="imagenet",
        data="data/coco",
        synthetic=False,
        deepspeed_config="ds_configs/dgxa100_8x114_bf16.json",
        run_dir="runs/mlperf",
        epochs=65,
        workers=8,
        eval_batch=128,
        division="closed",
    )


def demo() -> TrainConfig:
    """CPU model on the synthetic data, bf16 autocast (2x faster than fp32 on AVX512-BF16 CPUs); the schedule was
    tuned on a 2-core machine to pass AP 0.55 in about 14 epochs (BENCHMARKS.md); open division."""
    return TrainConfig(
        preset="demo",
        deepspeed_config="ds_configs/cpu_bf16.json",
        epochs=18,
        lr_arg=5e-2,
        weight_decay=5e-4,
        warmup_iters=100,
        decay_epochs=(12, 16),
        eval_epochs=(6, 9, 12),
        eval_every=2,
        target_map=0.55,
        new_run_dir=True,  # `make demo` twice: runs/demo, then runs/demo-2
        eval_batch=32,
        workers=1,
        threads=2,
        compile="off",
        checkpoint_every=0,
        log_every=10,
        division="open",
        submission_platform="cpu",
    )


PRESETS = {"mlperf": mlperf, "demo": demo}


def _parse_value(text: str, kind):
    if kind is bool:
        if text.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")
        return text.lower() in ("1", "true", "yes", "on")
    return kind(text)


def build_parser() -> argparse.ArgumentParser:
    """--preset plus one flag per TrainConfig field; DeepSpeed's launcher also passes --local_rank."""
    parser = argparse.ArgumentParser(description="Train SSD (MLPerf v0.7 SSD300-ResNet34) with DeepSpeed")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "preset":
            continue
        flag = f"--{f.name}"
        kind = {"int": int, "float": float, "str": str, "bool": bool}.get(str(f.type).split(" |")[0], str)
        if str(f.type).startswith("tuple"):
            inner = int if "int" in str(f.type) else float
            parser.add_argument(flag, type=lambda s, t=inner: tuple(t(v) for v in s.split(",") if v),
                                default=argparse.SUPPRESS, help="comma-separated")
        elif "None" in str(f.type):
            parser.add_argument(flag, type=lambda s: None if s.lower() == "none" else s, default=argparse.SUPPRESS)
        else:
            parser.add_argument(flag, type=lambda s, k=kind: _parse_value(s, k), default=argparse.SUPPRESS)
    return parser


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    """The preset named by --preset with every flag given on the command line applied on top."""
    args = build_parser().parse_args(argv)
    cfg = PRESETS[args.preset]()
    for f in dataclasses.fields(TrainConfig):
        if f.name != "preset" and hasattr(args, f.name):  # flags not given are absent (SUPPRESS)
            setattr(cfg, f.name, getattr(args, f.name))
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Reject settings that cannot work, with the field named."""
    choices = {"compile": ("auto", "on", "off"), "kernels": ("auto", "torch", "triton"),
               "encode_on_device": ("auto", "on", "off"), "warm_up": ("auto", "on", "off"),
               "division": ("closed", "open")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"--{name} must be one of {allowed}, got {getattr(cfg, name)!r}")
    if cfg.epochs < 1 or cfg.eval_every < 1 or cfg.log_every < 1:
        raise ValueError("--epochs, --eval_every and --log_every must be >= 1")
    if not 1 <= cfg.max_boxes <= 256:
        raise ValueError(f"--max_boxes must be in 1..256 (the encode kernel's tile), got {cfg.max_boxes}")
    if list(cfg.decay_epochs) != sorted(cfg.decay_epochs):
        raise ValueError(f"--decay_epochs must be increasing, got {cfg.decay_epochs}")


def should_evaluate(cfg: TrainConfig, epoch: int) -> bool:
    """After 1-based `epoch`: the listed epochs, then every `eval_every` after the last listed one, and the last."""
    if epoch in cfg.eval_epochs or epoch == cfg.epochs:
        return True
    last = max(cfg.eval_epochs, default=0)
    return epoch > last and (epoch - last) % cfg.eval_every == 0


@dataclass
class BatchPlan:
    """Batch arithmetic read from the DeepSpeed JSON and checked against the world size."""

    micro_batch: int
    accumulation: int
    world_size: int
    global_batch: int = field(init=False)

    def __post_init__(self) -> None:
        self.global_batch = self.micro_batch * self.accumulation * self.world_size


def check_batch(ds_config: dict, path: str, world_size: int) -> BatchPlan:
    """micro x accumulation x world must equal train_batch_size; a clear error naming the file otherwise."""
    micro = ds_config.get("train_micro_batch_size_per_gpu")
    accum = ds_config.get("gradient_accumulation_steps", 1)
    total = ds_config.get("train_batch_size")
    if micro is None:
        if total is None:
            raise ValueError(f"{path}: set train_micro_batch_size_per_gpu (and train_batch_size)")
        micro, rem = divmod(total, accum * world_size)
        if rem:
            raise ValueError(f"{path}: train_batch_size {total} is not divisible by gradient_accumulation_steps "
                             f"{accum} x world size {world_size}")
    plan = BatchPlan(micro, accum, world_size)
    if total is not None and total != plan.global_batch:
        raise ValueError(
            f"{path}: train_batch_size {total} != train_micro_batch_size_per_gpu {micro} x "
            f"gradient_accumulation_steps {accum} x world size {world_size} (= {plan.global_batch}); "
            f"pick the DeepSpeed config made for this number of GPUs (see ds_configs/README.md)"
        )
    return plan

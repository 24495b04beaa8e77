"""The run configuration: one typed dataclass, its named presets, and the command line that edits them.

`mlperf()` holds the benchmark's schedule for NVIDIA's DGX A100 submission (SPEC section 7); each system's own
values, its DeepSpeed JSON named among them, are one file in `configs/systems/` (`--config`). `demo()` trains the CPU
model on the built-in synthetic data set in minutes. The DeepSpeed JSON holds the engine settings only
(ssd_ds.ds_config).

Every field is a flag, typed by its annotation and documented by the help text beside its default (`--help` prints
both, with the chosen preset's value). A run's resolved config is saved as `<run_dir>/config.json`; `--config FILE`
starts from such a file, and flags given beside it apply on top: `--config runs/demo/config.json --run_dir runs/again`.
A file may hold only some fields (`configs/systems/*.json`): the others come from the preset it names.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

from ssd_ds.cocoeval_backends import COCOEVAL_BACKENDS, DEFAULT_BACKEND
from ssd_ds.errors import BadInput
from ssd_ds.fileio import atomic_write, read_json
from ssd_ds.model_config import build_model_config
from ssd_ds.preemption import signal_number
from ssd_ds.schedule import EvalSchedule


def flag(default, help: str):
    """A RunConfig field: its default and its one-line `--help` text."""
    return field(default=default, metadata={"help": help})


@dataclass
class RunConfig:
    """Everything a run needs besides the DeepSpeed JSON; saved resolved in the run directory."""

    preset: str = flag("demo", "name of the preset these values started from")
    model: str = flag("cpu_small", "model preset: mlperf (SSD300, ResNet-34), cpu_small, cpu_160 or cpu_160_s4 "
                                   "(ssd_ds.model_config)")
    anchor_scales: tuple[float, ...] | None = flag(
        None, "default-box scales in pixels of the input, one more than the model's levels, replacing the preset's "
              "(python -m ssd_ds.data.check --fit proposes them; not for mlperf); none: the preset's")
    backbone_weights: str | None = flag(None, 'torchvision resnet34 file, "imagenet" (hub cache) or None (random init)')
    data: str = flag("data/synthetic", "COCO-laid-out dataset directory")
    synthetic: bool = flag(True, "generate the synthetic data set at `data` when it is absent")
    deepspeed_config: str = flag("ds_configs/cpu_fp32.json", "engine settings: batch, accumulation, precision")
    run_dir: str = flag("runs/demo", "checkpoints, logs, TensorBoard, resolved config")
    new_run_dir: bool = flag(False, "run_dir holds a previous run: False refuses, True takes the next free run_dir-<k>")
    seed: int = flag(1, "data order, augmentation and init")
    epochs: int = flag(12, "maximum epochs; the run stops earlier at the target")
    lr_per_32: float = flag(
        3.2e-3, "LR per 32 images: base LR = 2.5e-3 * round(lr_per_32 / 2.5e-3 * global_batch / 32)")
    momentum: float = flag(0.9, "SGD momentum (SPEC section 7)")
    weight_decay: float = flag(1.3e-4, "on all parameters (SPEC section 7)")
    warmup_iters: int = flag(650, "linear warmup length in iterations, from factor 0")
    warmup_factor: float = flag(0.0, "LR fraction at iteration 0 of the warmup (logged; SPEC uses 0)")
    decay_epochs: tuple[int, ...] = flag((44, 55), "x decay_factor once this many epochs are complete")
    decay_factor: float = flag(0.1, "LR multiplier at each boundary")
    eval_epochs: tuple[int, ...] = flag((40, 50, 55), "evaluate after these epochs (1-based) ...")
    eval_every: int = flag(5, "... and every this many epochs after the last one")
    target_map: float = flag(0.23, "stop when COCO AP reaches this")
    eval_batch: int = flag(64, "images per rank per evaluation batch")
    coco_eval: str = flag(DEFAULT_BACKEND, "COCOeval backend: hotcoco (Rust), faster (faster-coco-eval, C++) or "
                                           "pycocotools (the reference)")
    workers: int = flag(4, "DataLoader worker processes per rank")
    loader_timeout: float = flag(
        300.0, "seconds any one training batch may take the workers before the run fails (0: none)")
    threads: int = flag(0, "torch intra-op threads per rank (0: leave torch's default)")
    compile: str = flag("auto", "torch.compile of model+loss: auto (on for CUDA), on, off")
    kernels: str = flag("auto", "loss/decode/encode backend: auto (triton on CUDA), torch, triton")
    input: str = flag(
        "auto", "decode+augment images: in the loader workers (cpu) or batched on the device (auto: on CUDA)")
    encode_on_device: str = flag(
        "auto", "match+encode boxes on the device (auto: on CUDA) instead of in the loader workers")
    warm_up: str = flag("auto", "compile/autotune on synthetic data before run_start: auto (compiled or CUDA), on, off")
    compile_cache: str | None = flag(
        None, "file of torch.compile cache artifacts: loaded before the warm-up, saved after")
    max_boxes: int = flag(128, "boxes per image shipped raw when encoding on the device (COCO 2017 train has <= 93)")
    channels_last: bool = flag(True, "NHWC activations (faster convolutions on GPUs and on oneDNN CPUs)")
    checkpoint_every: int = flag(0, "also checkpoint every this many iterations (0: only at epoch ends)")
    keep_checkpoints: int = flag(2, "checkpoints kept on disk")
    log_every: int = flag(10, "iterations between loss logging / finiteness checks / eval polls")
    eval_images_to_draw: int = flag(4, "validation images with predicted boxes sent to TensorBoard")
    max_iters: int = flag(0, "stop after this many iterations in all (0: no limit); for tests and benchmarks")
    division: str = flag("closed", "MLPerf division logged: closed only for the benchmark's own schedule")
    submission_platform: str = flag("unknown", "MLPerf submission_platform")
    dist_timeout: float = flag(600.0, "seconds any collective or the rendezvous may wait before the run fails")
    progress: bool = flag(True, "progress bar on rank 0")
    resume: str | None = flag(None, '"auto" (latest in run_dir), a checkpoint directory, or None')
    eval_only: bool = flag(False, "evaluate the resumed checkpoint (on all ranks, sharded) and exit")
    stop_signals: tuple[str, ...] = flag(
        ("SIGTERM", "SIGUSR1"), "on these signals save a checkpoint at the next sync point (--log_every) and exit "
                                "with code 75, to resume (ssd_ds/preemption.py)")
    stop_timeout: float = flag(
        120.0, "seconds from the first stop signal to the exit: past them the run exits (code 75) even if the save "
               "hangs, its last complete checkpoint kept")

    def save(self, path: Path) -> None:
        """Write the resolved config as JSON, atomically."""
        atomic_write(path, json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @property
    def eval_schedule(self) -> EvalSchedule:
        return EvalSchedule(tuple(self.eval_epochs), self.eval_every, self.epochs)


def mlperf() -> RunConfig:
    """The benchmark on NVIDIA's DGX A100 values (SPEC section 7): 8 x 114, lr 0.09, warmup 650, decay 44/55."""
    return RunConfig(
        preset="mlperf",
        model="mlperf",
        backbone_weights="imagenet",
        data="data/coco",
        synthetic=False,
        deepspeed_config="ds_configs/dgxa100_8x114_bf16.json",
        run_dir="runs/mlperf",
        epochs=60,  # a cap: the run stops at the target, which NVIDIA's runs reached at epoch 50 (SPEC section 7)
        workers=8,
        eval_batch=128,
        division="closed",
    )


def demo() -> RunConfig:
    """CPU model on the synthetic data, bf16 autocast (2x faster than fp32 on AVX512-BF16 CPUs); the schedule was
    tuned on a 2-core machine to pass AP 0.55 in about 14 epochs (BENCHMARKS.md); open division."""
    return RunConfig(
        preset="demo",
        deepspeed_config="ds_configs/cpu_bf16.json",
        epochs=18,
        lr_per_32=5e-2,
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


def custom() -> RunConfig:
    """One's own COCO-laid-out data set of a few thousand images on a CPU machine (give --data): the cpu_160_s4 model
    (160x160 input, BatchNorm in the extras, a stride-4 level for small objects), micro-batch 16 (twice the optimizer
    steps of the demo's 32 at the same images/s), bf16 autocast, and 25 epochs: 9.5-10 minutes for 2,000 images on
    2 cores (BENCHMARKS.md, "Your own data"). Each choice was measured against the demo preset on hard synthetic sets.
    No target: it trains every epoch and keeps the last weights; `python -m ssd_ds.data.check --model cpu_160_s4 --fit`
    tells whether the default boxes fit the data (--anchor_scales)."""
    return replace(
        demo(),
        preset="custom",
        model="cpu_160_s4",
        data="data/custom",
        synthetic=False,
        deepspeed_config="ds_configs/cpu_bf16_16.json",
        run_dir="runs/custom",
        epochs=25,
        decay_epochs=(18, 23),
        eval_epochs=(18, 23),
        eval_every=25,
        target_map=1.0,
    )


PRESETS = {"mlperf": mlperf, "demo": demo, "custom": custom}
CHOICES = {"compile": ("auto", "on", "off"), "kernels": ("auto", "torch", "triton"), "input": ("auto", "cpu", "device"),
           "coco_eval": COCOEVAL_BACKENDS,
           "encode_on_device": ("auto", "on", "off"), "warm_up": ("auto", "on", "off"),
           "division": ("closed", "open")}
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


@cache
def field_types() -> dict[str, type]:
    return typing.get_type_hints(RunConfig)


def parse_value(name: str, value):
    """A flag's text (or a JSON value from a config file) as the type of field `name`; ValueError naming the field."""
    kind = field_types()[name]
    optional = type(None) in typing.get_args(kind)
    if optional:
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    try:
        if typing.get_origin(kind) is tuple:
            inner = typing.get_args(kind)[0]
            items = value.split(",") if isinstance(value, str) else value
            return tuple(inner(v) for v in items if v != "")
        if kind is bool:
            if isinstance(value, bool):
                return value
            return _BOOLEANS[str(value).lower()]
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return kind(value)
    except (ValueError, TypeError, KeyError):
        what = "a comma-separated list of " + typing.get_args(kind)[0].__name__ if typing.get_origin(kind) is tuple \
            else getattr(kind, "__name__", str(kind))
        raise BadInput(f"--{name}: expected {what}{' or none' if optional else ''}, got {value!r}") from None


def _metavar(name: str) -> str:
    kind = next((a for a in typing.get_args(field_types()[name]) if a is not type(None)), field_types()[name])
    if typing.get_origin(kind) is tuple:
        return "N,N,..."
    return {int: "N", float: "X", bool: "BOOL"}.get(kind, "TEXT")


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def build_parser(base: RunConfig | None = None) -> argparse.ArgumentParser:
    """--preset, --config and one flag per field, its help the field's help text and its value in `base`."""
    parser = argparse.ArgumentParser(description="Train SSD (MLPerf v0.7 SSD300-ResNet34) with DeepSpeed",
                                     usage="python -m ssd_ds.train [--preset P | --config FILE] [--FIELD VALUE ...]",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Example: python -m ssd_ds.train --preset demo --epochs 20")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="the values to start from (default: demo, or the --config file's)")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="a run config to start from (a run's config.json, or some fields and the preset for the "
                             "rest: configs/systems/*.json); flags given beside it apply on top")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # DeepSpeed's launcher
    for f in dataclasses.fields(RunConfig):
        if f.name == "preset":
            continue
        shown = f" [{base.preset}: {_show(getattr(base, f.name))}]" if base is not None else ""
        choices = f" ({'|'.join(CHOICES[f.name])})" if f.name in CHOICES else ""
        parser.add_argument(f"--{f.name}", type=str, default=argparse.SUPPRESS, metavar=_metavar(f.name),
                            help=f"{f.metadata['help']}{choices}{shown}".replace("%", "%%"))
    return parser


def from_file(path: str) -> RunConfig:
    """A config file as a RunConfig: its `preset` (demo if absent), then the fields the file holds, all of them in a
    saved config.json, some in a system's file. An unknown preset or key, or a value of the wrong type, names the
    file."""
    data = read_json(path, "run config")
    if not isinstance(data, dict):
        raise BadInput(f"{path}: a run config is a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(RunConfig)})
    if unknown:
        raise BadInput(f"{path}: unknown fields {unknown} (flags are listed by --help)")
    preset = data.get("preset", "demo")
    if preset not in PRESETS:
        raise BadInput(f"{path}: unknown preset {preset!r} (one of {sorted(PRESETS)})")
    cfg = PRESETS[preset]()
    for name, value in data.items():
        try:
            setattr(cfg, name, parse_value(name, value) if name != "preset" else value)
        except ValueError as exc:
            raise BadInput(f"{path}: {exc}") from None
    return cfg


def config_from_args(argv: list[str] | None = None) -> RunConfig:
    """The --config file or the --preset (demo by default), then every flag given on the command line on top."""
    first, _ = build_parser().parse_known_args(argv)
    if first.config is not None:
        cfg = from_file(first.config)
        if first.preset is not None and first.preset != cfg.preset:
            raise BadInput(f"--preset {first.preset} and --config {first.config} (preset {cfg.preset}): give one")
    else:
        cfg = PRESETS[first.preset or "demo"]()
    args = build_parser(cfg).parse_args(argv)  # this time with --help showing the values it starts from
    for f in dataclasses.fields(RunConfig):
        if f.name != "preset" and hasattr(args, f.name):  # flags not given are absent (SUPPRESS)
            setattr(cfg, f.name, parse_value(f.name, getattr(args, f.name)))
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Reject settings that cannot work, with the field named."""
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise BadInput(f"--{name} must be one of {allowed}, got {getattr(cfg, name)!r}")
    if cfg.epochs < 1 or cfg.eval_every < 1 or cfg.log_every < 1:
        raise BadInput("--epochs, --eval_every and --log_every must be >= 1")
    if not 1 <= cfg.max_boxes <= 256:
        raise BadInput(f"--max_boxes must be in 1..256 (the encode kernel's tile), got {cfg.max_boxes}")
    if cfg.input == "device" and cfg.encode_on_device == "off":
        raise BadInput("--input device leaves the boxes to the device: --encode_on_device must be auto or on")
    if cfg.eval_only and cfg.resume is None:
        raise BadInput("--eval_only needs --resume auto|PATH: a checkpoint to evaluate")
    if list(cfg.decay_epochs) != sorted(cfg.decay_epochs):
        raise BadInput(f"--decay_epochs must be increasing, got {cfg.decay_epochs}")
    for name in cfg.stop_signals:
        try:
            signal_number(name)
        except ValueError as exc:
            raise BadInput(f"--stop_signals: {exc}") from None
    if cfg.stop_timeout <= 0:
        raise BadInput(f"--stop_timeout must be > 0 seconds, got {cfg.stop_timeout}")
    if cfg.preset == "custom" and cfg.data == custom().data and not Path(cfg.data).exists():
        raise BadInput(f"--preset custom trains on a data set of your own: give --data DIR, a COCO-laid-out directory "
                       f"({cfg.data} does not exist; docs/data.md, \"Train on your own data\")")
    if cfg.anchor_scales:  # the model preset judges them (count, sign, not for mlperf), before anything starts
        build_model_config(cfg.model, anchor_scales=cfg.anchor_scales)

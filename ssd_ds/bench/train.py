"""`python -m ssd_ds.bench train [trainer flags: --preset P --deepspeed_config FILE --data DIR ...] [--num_classes N]
[--batch N[,N...]] [--steps N] [--rows all|trainer]`: training-step throughput of the trainer's configuration. The
trainer's flags (`ssd_ds.run_config`) and its DeepSpeed JSON (`ssd_ds.ds_config.load`, world size 1) give the model,
the class count (the --data set's), the micro-batch (--batch overrides it), the gradient accumulation, the precision
and the speed-ups; the last row is the setup the trainer builds from them on this device
(`ssd_ds.speedups.training_setup_options` into `ssd_ds.speedups.build_training_setup`, DeepSpeed included), timed over
whole optimizer steps of `ssd_ds.loop.train_step` on a synthetic uint8 batch already on the device (no input
pipeline), as images/s of the global batch. Every row has the same batch plan and optimizer and is compared with
fp32 NCHW eager at the same micro-batch in the same run; between the two (--rows all): channels_last, bf16 autocast,
both, and on CUDA the Triton loss/encode. Each row compiles from a fresh dynamo state, as a new trainer process
would, and says how many graphs it compiled and whether any was dynamic: the trainer compiles one static micro-batch
shape. Beside images/s: model FLOPs per image (torch.utils.flop_counter) and, on known GPUs, the fraction of the
bf16 peak.
"""

from __future__ import annotations

import argparse
import ast
import gc
import time
from dataclasses import dataclass

import torch

from ssd_ds.bench.device import bf16_peak_tflops, device_name, sync
from ssd_ds.data.coco import CocoDetection
from ssd_ds.device_ops import resolve_backend
from ssd_ds.errors import NotFound
from ssd_ds.model_config import build_model_config

HELP = "training-step throughput of the trainer's configuration against fp32 NCHW eager"
TRAINER_FLAGS = """\
Every other flag is the trainer's (python -m ssd_ds.train --help: --preset, --config, --model, --deepspeed_config,
--data, --compile, --kernels, --input, --channels_last, ...): the last row is the setup the trainer builds from them on
this device, its micro-batch, accumulation and precision the DeepSpeed JSON's (world size 1)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench's own flags; every other flag is the trainer's, left for `run` in `args.trainer_argv` (the
    dispatcher parses known flags only), so none of ours may stand for a trainer flag it abbreviates."""
    parser.allow_abbrev = False
    parser.epilog = TRAINER_FLAGS
    parser.add_argument("--num_classes", type=int, default=None,
                        help="classes with background (default: the trainer's: those of the --data set)")
    parser.add_argument("--batch", type=lambda s: [int(b) for b in s.split(",")], default=None,
                        help="micro-batch sizes, comma-separated (each variant at each; default: the DeepSpeed "
                             "JSON's)")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps timed per row")
    parser.add_argument("--rows", choices=("all", "trainer"), default="all",
                        help="all: precision, layout and kernels one at a time between the baseline and the "
                             "trainer's configuration; trainer: those two only")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="bf16 peak of the device for the utilisation column (default: known GPUs' datasheet)")


def train_flops_per_image(model_cfg) -> float:
    """FLOPs of one image's forward and backward through the model (torch.utils.flop_counter on meta tensors: shapes
    only, nothing computed). The loss and the optimizer are elementwise and left out, as MFU figures do."""
    from torch.utils.flop_counter import FlopCounterMode

    from ssd_ds.model import build_model

    with torch.device("meta"):
        model = build_model(model_cfg)
        images = torch.empty(1, 3, model_cfg.input_size, model_cfg.input_size)
    with FlopCounterMode(display=False) as counter:
        locs, logits = model(images)
        (locs.sum() + logits.sum()).backward()
    return float(counter.get_total_flops())


BASELINE = "fp32 NCHW eager (baseline)"
TRAINER = "trainer's configuration"
WARMUP_STEPS = 2  # optimizer steps before timing: compilation, allocator, oneDNN/cuDNN autotuning, momentum


def trainer_variants(device: torch.device, trainer: dict, trainer_autocast: dict | None,
                     every: bool = True) -> dict[str, tuple]:
    """name -> (build_training_setup settings, torch_autocast block or None); the first is the baseline, the last the
    trainer's configuration (`trainer`: `ssd_ds.speedups.training_setup_options`, its autocast the DeepSpeed JSON's),
    and between them, when `every`, precision, layout and kernels one at a time. All share the trainer's optimizer and
    batch plan."""
    bf16 = {"enabled": True, "dtype": "bfloat16"}
    optimizer = {"optimizer_fn": trainer["optimizer_fn"]}
    eager = dict(optimizer, kernels="torch", compile="off", encode_on_device="off")
    variants = {BASELINE: (dict(eager, channels_last=False), None)}
    if every and device.type != "cuda":  # on a GPU these cost minutes of GPU time and say little beside the rest
        variants["fp32 channels_last"] = (dict(eager, channels_last=True), None)
        variants["bf16 autocast"] = (dict(eager, channels_last=False), bf16)
    if every:
        variants["bf16 autocast + channels_last"] = (dict(eager, channels_last=True), bf16)
    if every and device.type == "cuda":
        variants["bf16 + channels_last + Triton loss/encode"] = (
            dict(optimizer, kernels="triton", compile="off", encode_on_device="on", channels_last=True), bf16)
    variants[TRAINER] = (trainer, trainer_autocast)
    return variants


@dataclass
class CompiledGraphs:
    """What torch.compile made for one engine, counted from a fresh dynamo state (`fresh_compile_state`)."""

    graphs: int  # graphs dynamo compiled (torch._dynamo.utils.counters["stats"]["unique_graphs"])
    dynamic: int  # of them, graphs with a symbolic size (a dimension traced as dynamic)

    def __str__(self) -> str:
        if not self.graphs:
            return "no graph compiled"
        kind = f"{self.dynamic} DYNAMIC" if self.dynamic else "static"
        return f"{self.graphs} graph{'s' if self.graphs > 1 else ''} compiled, {kind}"


def fresh_compile_state() -> None:
    """Forget every graph compiled so far, as a new trainer process would start: without it the next engine's step
    (the same code) recompiles at a second batch size with that dimension dynamic, a graph the trainer, which
    compiles one static micro-batch shape, never runs."""
    from torch._dynamo.utils import clear_compilation_metrics, counters

    torch._dynamo.reset()
    counters.clear()
    clear_compilation_metrics()


def compiled_graphs() -> CompiledGraphs:
    """The graphs compiled since `fresh_compile_state`; a graph is dynamic when a node's traced size is symbolic
    (dynamo's compilation metrics record each node's sizes, symbols as strings)."""
    from torch._dynamo.utils import counters, get_compilation_metrics

    shapes = [ast.literal_eval(m.graph_node_shapes) for m in get_compilation_metrics() if m.graph_node_shapes]
    dynamic = sum(any(not isinstance(size, int) for sizes in graph.values() for size in sizes) for graph in shapes)
    return CompiledGraphs(counters["stats"]["unique_graphs"], dynamic)


def step_throughput(model_cfg, device: torch.device, ds_settings: dict, steps: int,
                    options: dict) -> tuple[float, CompiledGraphs]:
    """Images/s of global batch over whole optimizer steps (the DeepSpeed JSON's accumulation micro-batches, each
    `ssd_ds.loop.train_step` on the DeepSpeed engine of `speedups.build_training_setup(**options)`, the last one
    stepping), median of `steps` timed optimizer steps after WARMUP_STEPS; the batch synthetic and already on the
    device, its boxes padded as the loader pads them. Compiled from a fresh dynamo state: the graphs are returned."""
    from ssd_ds.data.batch import Batch, box_slots, synthetic_batch
    from ssd_ds.loop import train_step
    from ssd_ds.model import build_model
    from ssd_ds.speedups import build_training_setup

    gc.collect()  # the previous row's engine, before this one allocates
    if device.type == "cuda":
        torch.cuda.empty_cache()
    fresh_compile_state()
    torch.manual_seed(0)
    micro, accumulation = ds_settings["train_micro_batch_size_per_gpu"], ds_settings["gradient_accumulation_steps"]
    built = build_training_setup(build_model(model_cfg).to(device), model_cfg, device, ds_settings, **options)
    # 8 boxes an image (synthetic_batch), padded to the slots the loader would ship them in
    images, boxes, labels = (t.to(device) for t in synthetic_batch(micro, model_cfg.input_size, box_slots(8)))
    num_boxes = (labels > 0).sum(dim=1)
    encoded = (None, None)
    if built.ops.encode is None:  # the loader workers would have encoded these: do it once, outside the timing
        encoded = built.ops.coder.encode_batch(boxes, labels, num_boxes)
    on_device = Batch(images, boxes, labels, num_boxes, *encoded, skipped=0)
    times = []
    for i in range(steps + WARMUP_STEPS):
        sync(device)
        start = time.perf_counter()
        for _ in range(accumulation):
            train_step(built.deepspeed, on_device, built.memory_format, built.ops.encode)
        sync(device)
        if i >= WARMUP_STEPS:
            times.append(time.perf_counter() - start)
    return micro * accumulation / sorted(times)[len(times) // 2], compiled_graphs()


def run(args: argparse.Namespace) -> dict[str, dict[str, dict]]:
    """Every variant at every micro-batch against the fp32 NCHW eager baseline at the same batch plan, in one process;
    the last variant is the setup the trainer builds from `args.trainer_argv` (its preset, flags, DeepSpeed JSON)."""
    from ssd_ds import ds_config
    from ssd_ds.distributed import setup_process_env
    from ssd_ds.run_config import config_from_args
    from ssd_ds.schedule import base_lr
    from ssd_ds.speedups import should_compile, training_setup_options

    cfg = config_from_args(args.trainer_argv)
    engine_cfg = ds_config.load(cfg.deepspeed_config, world_size=1)  # as the trainer reads it; one process here
    if args.num_classes is not None:
        num_classes, classes_from = args.num_classes, "--num_classes"
    else:
        try:
            num_classes, classes_from = CocoDetection(cfg.data, "train").num_classes, cfg.data
        except FileNotFoundError as exc:
            raise NotFound(f"{exc}: the trainer takes the class count from its data set; pass --data DIR "
                           f"or --num_classes N") from None
    setup_process_env()  # one process: rendezvous variables; DeepSpeed's CPU accelerator where there is no GPU
    import deepspeed  # after setup_process_env: DS_ACCELERATOR is read at import

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model_cfg = build_model_config(cfg.model, num_classes=num_classes, anchor_scales=cfg.anchor_scales)
    flops = train_flops_per_image(model_cfg)
    peak = args.peak_tflops or bf16_peak_tflops(device)
    plan = engine_cfg.plan
    micro_batches = args.batch or [plan.micro_batch]
    trainer = training_setup_options(cfg, device, base_lr(cfg.lr_per_32, plan.global_batch))  # resolved for the header
    trainer_autocast = engine_cfg.settings.get("torch_autocast") if engine_cfg.autocast_dtype else None
    print(f"training step (ssd_ds.loop.train_step on speedups.build_training_setup), {cfg.model} "
          f"({model_cfg.input_size}x{model_cfg.input_size}, {model_cfg.num_classes} classes from {classes_from}), "
          f"median of {args.steps} optimizer steps, {device_name(device)}; "
          f"model forward+backward {flops / 1e9:.2f} GFLOP/image"
          + (f", bf16 peak {peak:.0f} TFLOP/s" if peak else ""))
    precision = str(engine_cfg.autocast_dtype).replace("torch.", "") + " autocast" if engine_cfg.autocast_dtype \
        else "fp32"
    encode = "the device" if trainer["encode_on_device"] == "on" else "the loader workers"
    print(f"  {TRAINER}: preset {cfg.preset}, {cfg.deepspeed_config} (micro-batch {plan.micro_batch} x accumulation "
          f"{plan.accumulation}, {precision}); kernels {resolve_backend(trainer['kernels'], device)}, "
          f"compiled {should_compile(trainer['compile'], device)}, boxes encoded on {encode}, "
          f"channels_last {trainer['channels_last']}")
    print("  rows: micro-batch x accumulation; img/s of global batch; every row from a fresh dynamo state")
    results: dict[str, dict[str, dict]] = {}
    for micro in micro_batches:
        row_key = f"{micro}x{plan.accumulation}"
        results[row_key] = {}
        trainer = training_setup_options(cfg, device, base_lr(cfg.lr_per_32, micro * plan.accumulation))
        fp32 = {k: v for k, v in engine_cfg.settings.items() if k != "torch_autocast"}
        fp32.update(train_micro_batch_size_per_gpu=micro, train_batch_size=micro * plan.accumulation,
                    gradient_accumulation_steps=plan.accumulation)
        variants = trainer_variants(device, trainer, trainer_autocast, every=args.rows == "all")
        for label, (options, autocast) in variants.items():
            settings = dict(fp32, torch_autocast=autocast) if autocast else fp32
            rate, graphs = step_throughput(model_cfg, device, settings, args.steps, options)
            results[row_key][label] = {"images_per_s": rate, "graphs": graphs.graphs, "dynamic": graphs.dynamic}
            base = results[row_key][BASELINE]["images_per_s"]
            util = f"  {rate * flops / (peak * 1e12):6.1%} of bf16 peak" if peak else ""
            print(f"  batch {row_key:>6s}  {label:44s} {rate:9.1f} img/s   x{rate / base:.2f}  "
                  f"{rate * flops / 1e12:7.2f} TFLOP/s{util}  {graphs}", flush=True)
    return results

"""Benchmarks that compare against a baseline measured in the same run and print ratios.

`python -m ssd_ds.bench train [trainer flags: --preset P --deepspeed_config FILE --data DIR ...] [--num_classes N]
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

`python -m ssd_ds.bench eval [--images N] [--detections D] [--batch B]`: COCOeval (bbox) of the same generated
detections by faster-coco-eval (the trainer's default) and by pycocotools (the reference), timed, with the ratio and
whether all twelve numbers are identical; then the post-processing of SSD300-shaped outputs per image (the loop
evaluation ran before) and batched (`select_detections`), with the ratio and whether the detections are identical.

`python -m ssd_ds.bench data --data DIR [--seconds S] [--batch B] [--device auto|cpu|cuda]`: the two input paths.
The CPU path: images per second on one core of a loader worker's work (decode + SPEC augmentation, with and without
box encoding), side by side with torchvision's own SSD-style v2 preset (RandomPhotometricDistort, RandomIoUCrop,
RandomHorizontalFlip, Resize) on the same images; one core: the loop runs in this process with torch limited to one
thread, which is what one DataLoader worker gets. The device path (ssd_ds.data.device_input): its worker part (read
the bytes, draw the parameters) on one core, and its device part (decode, crop, resize, flip, jitter, encode) in
micro-batches on the device; then the CPU cores each path needs per 1,000 images/s.
"""

from __future__ import annotations

import argparse
import ast
import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ssd_ds.anchors import default_boxes_ltrb
from ssd_ds.box_coder import BoxCoder
from ssd_ds.coco_eval import COCOEVAL_BACKENDS, coco_eval
from ssd_ds.data.coco import CocoDetection
from ssd_ds.data.device_input import CompressedTrainTransform, collate_compressed, decode_and_augment
from ssd_ds.data.transforms import TrainTransform
from ssd_ds.device_ops import encode_fn, resolve_backend
from ssd_ds.errors import NotFound
from ssd_ds.fileio import atomic_write
from ssd_ds.model_config import build_model_config


def torchvision_ssd_preset(input_size: int) -> v2.Compose:
    """torchvision's detection-reference style SSD augmentation, ending in the same uint8 tensor as ours."""
    return v2.Compose([
        v2.RandomPhotometricDistort(),
        v2.RandomIoUCrop(),
        v2.SanitizeBoundingBoxes(),  # RandomIoUCrop's documented companion
        v2.RandomHorizontalFlip(p=0.5),
        v2.Resize((input_size, input_size)),
        v2.PILToTensor(),
    ])


def images_per_second(dataset: CocoDetection, step, seconds: float) -> tuple[float, int]:
    """Run `step(image, record)` over the dataset (cycling) for about `seconds`; decode included."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        index = done % len(dataset)
        step(dataset.load_image(index), dataset.records[index])
        done += 1
    return done / (time.perf_counter() - start), done


def bench_data(args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(0)
    dataset = CocoDetection(args.data, "train")
    model_cfg = build_model_config(args.model, num_classes=dataset.num_classes)
    size = model_cfg.input_size
    coder = BoxCoder(default_boxes_ltrb(model_cfg.anchors))
    ours = TrainTransform(size, coder)
    tv = torchvision_ssd_preset(size)

    def tv_step(image, rec):
        boxes = tv_tensors.BoundingBoxes(rec.boxes_ltrb, format="XYXY", canvas_size=(rec.height, rec.width))
        return tv(image, {"boxes": boxes, "labels": rec.labels})

    rows = {
        "torchvision SSD preset": tv_step,
        "ssd_ds augment": lambda image, rec: ours.augment(image, rec.boxes_ltrb, rec.labels),
        "ssd_ds augment + encode (cpu path)": ours,
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what one DataLoader worker gets
    results = {}
    print(f"data pipeline, {size}x{size} output, {len(dataset)} images from {args.data}")
    print("  one core (a loader worker's work per image):")
    for name, step in rows.items():
        rate, n = images_per_second(dataset, step, args.seconds)
        results[name] = rate
        print(f"    {name:40s} {rate:8.1f} img/s  ({n} images)")
    base = results["torchvision SSD preset"]
    for name in list(rows)[1:]:
        print(f"    ratio {name} / torchvision SSD preset: {results[name] / base:.2f}x")
    # The device path: the workers read bytes and draw parameters; the device decodes, augments and encodes.
    dataset.decode = False
    worker = CompressedTrainTransform()
    rate, n = images_per_second(dataset, worker, args.seconds)
    results["device path, worker part"] = rate
    print(f"    {'device path, worker part (read, draw)':40s} {rate:8.1f} img/s  ({n} images)")
    torch.set_num_threads(threads)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    rate, n = device_part_rate(dataset, worker, coder, device, size, args.batch, args.seconds)
    results["device path, device part"] = rate
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {threads} threads"
    print(f"  device part (decode, crop, resize, flip, jitter, encode; micro-batch {args.batch}) on {where}: "
          f"{rate:8.1f} img/s  ({n} images)")
    cpu_cores = 1000 / results["ssd_ds augment + encode (cpu path)"]
    device_cores = 1000 / results["device path, worker part"]
    print(f"  CPU cores per 1,000 img/s: cpu path {cpu_cores:.1f}, device path {device_cores:.2f} "
          f"(x{cpu_cores / device_cores:.1f} fewer); the device path's device part alone: {rate:.0f} img/s")
    return results


def device_part_rate(dataset: CocoDetection, worker: CompressedTrainTransform, coder: BoxCoder,
                     device: torch.device, size: int, batch: int, seconds: float) -> tuple[float, int]:
    """Images/s of the device path's device part, the bytes and parameters of `batch` images drawn beforehand (what
    the loader ships), decode through encode timed, after one untimed batch (nvJPEG and allocator warm-up)."""
    samples = [worker(dataset.load_image(i % len(dataset)), dataset.records[i % len(dataset)]) for i in range(batch)]
    compressed = collate_compressed(samples)
    dboxes = coder.to(device).dboxes_ltrb
    encode = encode_fn(resolve_backend("auto", device))
    done, start = 0, None
    while start is None or time.perf_counter() - start < seconds:
        out, _ = decode_and_augment(compressed, device, size)
        encode(out.boxes, out.labels, out.num_boxes, dboxes)
        _sync(device)
        if start is None:
            start = time.perf_counter()
            continue
        done += batch
    return done / (time.perf_counter() - start), done


def generated_eval_set(out_dir: Path, images: int, detections_per_image: int, seed: int = 0):
    """A COCO ground-truth file of `images` images (1-12 boxes each, 80 categories; COCOeval needs no pixels) and
    detections for it as the [N, 7] array: each ground-truth box found with jitter, the rest false positives."""
    rng = np.random.default_rng(seed)
    anns, dets = [], []
    for image_id in range(1, images + 1):
        n = int(rng.integers(1, 13))
        xy, wh = rng.uniform(0, 500, (n, 2)), rng.uniform(8, 200, (n, 2))
        cats = rng.integers(1, 81, n)
        for box, cat in zip(np.hstack([xy, wh]), cats):
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": int(cat), "bbox": box.tolist(),
                         "area": float(box[2] * box[3]), "iscrowd": 0})
            dets.append([image_id, *(box + rng.normal(0, 0.1, 4) * box[[2, 3, 2, 3]]), rng.uniform(0.3, 1), cat])
        for _ in range(detections_per_image - n):
            box = np.concatenate([rng.uniform(0, 500, 2), rng.uniform(8, 200, 2)])
            dets.append([image_id, *box, rng.uniform(0.05, 0.6), rng.integers(1, 81)])
    gt = {"images": [{"id": i, "width": 640, "height": 640, "file_name": f"{i:012d}.jpg"}
                     for i in range(1, images + 1)],
          "annotations": anns, "categories": [{"id": c, "name": f"class{c}"} for c in range(1, 81)]}
    ann_file = Path(out_dir) / "instances_bench.json"
    atomic_write(ann_file, json.dumps(gt))
    return str(ann_file), np.asarray(dets, dtype=np.float64)


def bench_eval(args: argparse.Namespace) -> dict[str, float]:
    """COCOeval of the same detections by each backend, timed in this process, AP compared."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ann_file, detections = generated_eval_set(Path(tmp), args.images, args.detections)
        print(f"COCOeval (bbox) of {len(detections)} detections on {args.images} generated images "
              f"({args.detections} an image), one process")
        seconds, stats = {}, {}
        for backend in COCOEVAL_BACKENDS:
            start = time.perf_counter()
            stats[backend] = coco_eval(ann_file, detections, backend)
            seconds[backend] = time.perf_counter() - start
            print(f"  {backend:12s} {seconds[backend]:8.2f} s   AP {stats[backend]['AP']:.6f}")
    same = all(stats["faster"][k] == stats["pycocotools"][k] for k in stats["faster"])
    print(f"  ratio pycocotools / faster: {seconds['pycocotools'] / seconds['faster']:.1f}x; "
          f"all twelve numbers {'identical' if same else 'DIFFERENT'}")
    seconds.update(bench_postprocess(args.batch, args.batches))
    return seconds


def bench_postprocess(batch: int, batches: int) -> dict[str, float]:
    """Post-processing of SSD300-shaped outputs (8732 anchors, 81 classes, background dominant as in a trained model;
    the candidates above the score threshold are counted and printed), per image (`detect_image` in a loop, the
    reference) and batched (`select_detections`), on the device evaluation runs on; seconds per 1,000 images."""
    from ssd_ds.anchors import default_boxes_cxcywh
    from ssd_ds.model_config import mlperf
    from ssd_ds.postprocess import decode_scores, detect_image, select_detections

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator().manual_seed(0)
    dboxes = default_boxes_cxcywh(mlperf().anchors).to(device)
    A, C = len(dboxes), mlperf().num_classes
    locs = (torch.randn(batch, A, 4, generator=generator) * 0.5).to(device)
    logits = torch.randn(batch, A, C, generator=generator).to(device)
    logits[:, :, 0] += 7.45  # background wins almost everywhere, as in a trained model: ~100 candidates an image
    boxes, scores = decode_scores(locs, logits, dboxes)
    ways = {"per image (loop)": lambda: [detect_image(b, sc) for b, sc in zip(boxes, scores)],
            "batched": lambda: select_detections(boxes, scores).per_image()}
    results = {}
    print(f"post-processing, batch {batch} x {A} anchors x {C} classes, "
          f"{int((scores[:, :, 1:] > 0.05).sum()) / batch:.0f} candidates an image, on {device}:")
    for name, fn in ways.items():
        fn()  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(batches):
            out = fn()
        _sync(device)
        results[name] = (time.perf_counter() - start) / (batches * batch) * 1000
        print(f"  {name:18s} {results[name]:8.3f} s per 1,000 images")
    same = all(torch.equal(a, b) for got, want in zip(out, ways["per image (loop)"]()) for a, b in zip(got, want))
    print(f"  ratio per image / batched: {results['per image (loop)'] / results['batched']:.1f}x; "
          f"{sum(len(scores) for _, scores, _ in out) / batch:.0f} detections an image, "
          f"{'identical' if same else 'DIFFERENT'}")
    return results


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Dense bf16 tensor-core peak per GPU (vendor datasheets, SXM parts), for the utilisation column.
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0}


def bf16_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


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
        _sync(device)
        start = time.perf_counter()
        for _ in range(accumulation):
            train_step(built.deepspeed, on_device, built.memory_format, built.ops.encode)
        _sync(device)
        if i >= WARMUP_STEPS:
            times.append(time.perf_counter() - start)
    return micro * accumulation / sorted(times)[len(times) // 2], compiled_graphs()


def bench_train(args: argparse.Namespace) -> dict[str, dict[str, dict]]:
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
    model_cfg = build_model_config(cfg.model, num_classes=num_classes)
    flops = train_flops_per_image(model_cfg)
    peak = args.peak_tflops or bf16_peak_tflops(device)
    plan = engine_cfg.plan
    micro_batches = args.batch or [plan.micro_batch]
    trainer = training_setup_options(cfg, device, base_lr(cfg.lr_per_32, plan.global_batch))  # resolved for the header
    trainer_autocast = engine_cfg.settings.get("torch_autocast") if engine_cfg.autocast_dtype else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"training step (ssd_ds.loop.train_step on speedups.build_training_setup), {cfg.model} "
          f"({model_cfg.input_size}x{model_cfg.input_size}, {model_cfg.num_classes} classes from {classes_from}), "
          f"median of {args.steps} optimizer steps, {name}; model forward+backward {flops / 1e9:.2f} GFLOP/image"
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


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    data = sub.add_parser("data", help="input pipeline throughput against torchvision's SSD preset")
    data.add_argument("--data", required=True, help="COCO-laid-out dataset directory")
    data.add_argument("--model", default="cpu_small", help="model preset whose input size and anchors to use")
    data.add_argument("--seconds", type=float, default=10.0, help="time per pipeline")
    data.add_argument("--batch", type=int, default=64, help="micro-batch of the device path's device part")
    data.add_argument("--device", default="auto", help="where the device part runs: auto (CUDA if any), cpu, cuda")
    evaluation = sub.add_parser("eval", help="COCOeval backends on the same detections (faster vs pycocotools)")
    evaluation.add_argument("--images", type=int, default=5000, help="generated validation images")
    evaluation.add_argument("--detections", type=int, default=100, help="detections an image")
    evaluation.add_argument("--batch", type=int, default=32, help="images per post-processing batch")
    evaluation.add_argument("--batches", type=int, default=3, help="post-processing batches timed")
    train = sub.add_parser(
        "train", allow_abbrev=False,
        help="training-step throughput of the trainer's configuration against fp32 NCHW eager",
        epilog="Every other flag is the trainer's (python -m ssd_ds.train --help: --preset, --config, --model, "
               "--deepspeed_config, --data, --compile, --kernels, --input, --channels_last, ...): the last row is "
               "the setup the trainer builds from them on this device, its micro-batch, accumulation and precision "
               "the DeepSpeed JSON's (world size 1).")
    train.add_argument("--num_classes", type=int, default=None,
                       help="classes with background (default: the trainer's: those of the --data set)")
    train.add_argument("--batch", type=lambda s: [int(b) for b in s.split(",")], default=None,
                       help="micro-batch sizes, comma-separated (each variant at each; default: the DeepSpeed JSON's)")
    train.add_argument("--steps", type=int, default=10, help="optimizer steps timed per row")
    train.add_argument("--rows", choices=("all", "trainer"), default="all",
                       help="all: precision, layout and kernels one at a time between the baseline and the trainer's "
                            "configuration; trainer: those two only")
    train.add_argument("--peak_tflops", type=float, default=None,
                       help="bf16 peak of the device for the utilisation column (default: known GPUs' datasheet)")
    args, rest = parser.parse_known_args(argv)
    if args.what == "train":
        args.trainer_argv = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return {"data": bench_data, "eval": bench_eval, "train": bench_train}[args.what](args)


if __name__ == "__main__":
    from ssd_ds.cli import run_cli

    run_cli(main)

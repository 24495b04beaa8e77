"""Benchmarks that compare against a baseline measured in the same run and print ratios.

`python -m ssd_ds.bench train [--model mlperf|cpu_small] [--batch N] [--steps N] [--compile]`: training-step
throughput (forward, loss, backward, SGD step on synthetic tensors, no input pipeline) of the model in several
configurations, each against fp32 NCHW eager measured in the same run: channels_last, bf16 autocast, both, and
optionally torch.compile and the Triton loss (on CUDA).

`python -m ssd_ds.bench data --data DIR [--seconds S] [--input-size N]`: images per second on one core of the
training input pipeline (decode + SPEC augmentation + normalise, with and without box encoding), side by side with
torchvision's own SSD-style v2 preset (RandomPhotometricDistort, RandomIoUCrop, RandomHorizontalFlip, Resize) on
the same images. One core: the loop runs in this process with torch limited to one thread, which is what one
DataLoader worker gets.
"""

from __future__ import annotations

import argparse
import time

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ssd_ds.anchors import default_boxes_ltrb
from ssd_ds.box_coder import BoxCoder
from ssd_ds.config import build_model_config
from ssd_ds.data.coco import CocoDetection
from ssd_ds.data.transforms import MEAN, STD, TrainTransform


def torchvision_ssd_preset(input_size: int) -> v2.Compose:
    """torchvision's detection-reference style SSD augmentation, ending in the same normalised tensor."""
    return v2.Compose([
        v2.RandomPhotometricDistort(),
        v2.RandomIoUCrop(),
        v2.SanitizeBoundingBoxes(),  # RandomIoUCrop's documented companion
        v2.RandomHorizontalFlip(p=0.5),
        v2.Resize((input_size, input_size)),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(MEAN, STD),
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
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dataset = CocoDetection(args.data, "train")
    model_cfg = build_model_config(args.model, num_classes=dataset.num_classes)
    size = model_cfg.input_size
    ours = TrainTransform(size, BoxCoder(default_boxes_ltrb(model_cfg.anchors)))
    tv = torchvision_ssd_preset(size)

    def tv_step(image, rec):
        boxes = tv_tensors.BoundingBoxes(rec.boxes_ltrb, format="XYXY", canvas_size=(rec.height, rec.width))
        return tv(image, {"boxes": boxes, "labels": rec.labels})

    rows = {
        "torchvision SSD preset": tv_step,
        "ssd_ds augment": lambda image, rec: ours.augment(image, rec.boxes_ltrb, rec.labels),
        "ssd_ds augment + encode": ours,
    }
    results = {}
    print(f"data pipeline, one core, {size}x{size} output, {len(dataset)} images from {args.data}")
    for name, step in rows.items():
        rate, n = images_per_second(dataset, step, args.seconds)
        results[name] = rate
        print(f"  {name:28s} {rate:8.1f} img/s  ({n} images)")
    base = results["torchvision SSD preset"]
    for name in list(rows)[1:]:
        print(f"  ratio {name} / torchvision SSD preset: {results[name] / base:.2f}x")
    return results


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_throughput(model_cfg, device, batch: int, steps: int, channels_last: bool, dtype, compiled: bool,
                    kernels: str) -> float:
    """Images/s of full training steps (after warm-up), median of `steps` timed steps."""
    from ssd_ds.model import build_model
    from ssd_ds.step import SSDTrainStep
    from triton_kernels.select import ssd_loss_fn

    torch.manual_seed(0)
    A, C, S = model_cfg.anchors.num_anchors, model_cfg.num_classes, model_cfg.input_size
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    step = SSDTrainStep(build_model(model_cfg), ssd_loss_fn(kernels)).to(device, memory_format=fmt)
    if compiled:
        step.compile()
    optimizer = torch.optim.SGD(step.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(batch, 3, S, S, device=device).contiguous(memory_format=fmt)
    loc_t = torch.randn(batch, A, 4, device=device)
    labels_t = torch.randint(0, C, (batch, A), device=device) * (torch.rand(batch, A, device=device) < 0.05)
    times = []
    for i in range(steps + 3):  # 3 warm-up steps (compilation, allocator, oneDNN/cuDNN autotuning)
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, _, _ = step(images, loc_t, labels_t)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return batch / sorted(times)[len(times) // 2]


def bench_train(args: argparse.Namespace) -> dict[str, float]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_cfg = build_model_config(args.model, num_classes=args.num_classes)
    configs = {  # name -> (channels_last, autocast dtype, compile, kernels)
        "fp32 NCHW eager (baseline)": (False, None, False, "torch"),
        "fp32 channels_last": (True, None, False, "torch"),
        "bf16 autocast": (False, torch.bfloat16, False, "torch"),
        "bf16 autocast + channels_last": (True, torch.bfloat16, False, "torch"),
    }
    if args.compile:
        configs["bf16 + channels_last + torch.compile"] = (True, torch.bfloat16, True, "torch")
    if device.type == "cuda":
        configs["bf16 + channels_last + Triton loss"] = (True, torch.bfloat16, False, "triton")
        if args.compile:
            configs["bf16 + channels_last + compile + Triton loss"] = (True, torch.bfloat16, True, "triton")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"training step, {args.model} ({model_cfg.input_size}x{model_cfg.input_size}, {model_cfg.num_classes} classes),"
          f" batch {args.batch}, median of {args.steps} steps, {name}")
    results = {}
    for label, (cl, dtype, compiled, kernels) in configs.items():
        results[label] = step_throughput(model_cfg, device, args.batch, args.steps, cl, dtype, compiled, kernels)
        base = results["fp32 NCHW eager (baseline)"]
        print(f"  {label:46s} {results[label]:9.1f} img/s   x{results[label] / base:.2f}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    data = sub.add_parser("data", help="input pipeline throughput against torchvision's SSD preset")
    data.add_argument("--data", required=True, help="COCO-laid-out dataset directory")
    data.add_argument("--model", default="cpu_small", help="model preset whose input size and anchors to use")
    data.add_argument("--seconds", type=float, default=10.0, help="time per pipeline")
    train = sub.add_parser("train", help="training-step throughput against fp32 NCHW eager")
    train.add_argument("--model", default="cpu_small", help="model preset")
    train.add_argument("--num_classes", type=int, default=81)
    train.add_argument("--batch", type=int, default=32)
    train.add_argument("--steps", type=int, default=10)
    train.add_argument("--compile", action="store_true", help="also time torch.compile (minutes on CPU)")
    args = parser.parse_args(argv)
    if args.what == "data":
        bench_data(args)
    else:
        bench_train(args)


if __name__ == "__main__":
    main()

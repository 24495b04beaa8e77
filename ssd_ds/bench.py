"""Benchmarks that compare against a baseline measured in the same run and print ratios.

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    data = sub.add_parser("data", help="input pipeline throughput against torchvision's SSD preset")
    data.add_argument("--data", required=True, help="COCO-laid-out dataset directory")
    data.add_argument("--model", default="cpu_small", help="model preset whose input size and anchors to use")
    data.add_argument("--seconds", type=float, default=10.0, help="time per pipeline")
    args = parser.parse_args(argv)
    if args.what == "data":
        bench_data(args)


if __name__ == "__main__":
    main()

"""`python -m ssd_ds.bench data --data DIR [--seconds S] [--batch B] [--device auto|cpu|cuda]`: the two input paths.
The CPU path: images per second on one core of a loader worker's work (decode + SPEC augmentation, with and without
box encoding), side by side with torchvision's own SSD-style v2 preset (RandomPhotometricDistort, RandomIoUCrop,
RandomHorizontalFlip, Resize) on the same images; one core: the loop runs in this process with torch limited to one
thread, which is what one DataLoader worker gets. The device path (ssd_ds.data.device_input): its worker part (read
the bytes, draw the parameters) on one core, and its device part (decode, crop, resize, flip, jitter, encode) in
micro-batches on the device; then the CPU cores each path needs per 1,000 images/s.
"""

from __future__ import annotations

import argparse
import time

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ssd_ds.anchors import default_boxes_ltrb
from ssd_ds.bench.device import device_name, sync
from ssd_ds.box_coder import BoxCoder
from ssd_ds.data.coco import CocoDetection
from ssd_ds.data.device_input import CompressedTrainTransform, collate_compressed, decode_and_augment
from ssd_ds.data.transforms import TrainTransform
from ssd_ds.device_ops import encode_fn, resolve_backend
from ssd_ds.model_config import build_model_config

HELP = "input pipeline throughput against torchvision's SSD preset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="COCO-laid-out dataset directory")
    parser.add_argument("--model", default="cpu_small", help="model preset whose input size and anchors to use")
    parser.add_argument("--seconds", type=float, default=10.0, help="time per pipeline")
    parser.add_argument("--batch", type=int, default=64, help="micro-batch of the device path's device part")
    parser.add_argument("--device", default="auto", help="where the device part runs: auto (CUDA if any), cpu, cuda")


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


def run(args: argparse.Namespace) -> dict[str, float]:
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
    print(f"  device part (decode, crop, resize, flip, jitter, encode; micro-batch {args.batch}) on "
          f"{device_name(device)}: {rate:8.1f} img/s  ({n} images)")
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
        sync(device)
        if start is None:
            start = time.perf_counter()
            continue
        done += batch
    return done / (time.perf_counter() - start), done


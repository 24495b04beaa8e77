"""What scripts/gpu/gpu_check.sh measures beside the trainer's own run: the device input path and the step, phase by
phase, at the trainer's configuration. Each subcommand prints its result lines (`probe ...`) and exits non-zero when
a check fails. On a machine without CUDA the same code runs on the CPU at the sizes given (the check's --dry-run):
host clocks instead of CUDA events, and no streams.

  python scripts/gpu/gpu_probe.py progressive DATA [--every 4]
      re-save every 4th training JPEG of DATA as a progressive JPEG (same pixels' size, so the annotations hold):
      COCO has some, and nvJPEG decodes them on the host (its hybrid backend), image by image.
  python scripts/gpu/gpu_probe.py phases --data DATA --deepspeed_config F [--model mlperf] [--workers 8] [--iters 8]
      the trainer's step (speedups.build_training_setup, settings from F) and its device input path (the real loader
      at F's micro-batch): per micro-batch, host seconds waiting for workers, preparing and launching the step; device
      seconds of the side-stream preparation and of the main-stream step (CUDA events); synchronising calls per
      step; peak memory; which decode path each image took; then the decode alone on one micro-batch, batched and
      image by image (the fallback's cost).
  python scripts/gpu/gpu_probe.py race --data DATA [--batch 64] [--iters 20]
      defect 2 of issue 19, proven: two batches prepared back to back on the side stream behind queued work must
      equal, bit for bit, the same batches prepared with the device drained in between; and the same without the
      drain before nvJPEG (reported, not judged: it shows whether this nvJPEG needs it).
  python scripts/gpu/gpu_probe.py loader --data DATA [--batch 456] [--workers 8] [--batches 6]
      the device input path's train loader alone: images/s and the most file descriptors any of its processes held.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ssd_ds.data.coco import CocoDetection  # noqa: E402
from ssd_ds.data.device_input import BatchDecoder, CompressedTrainTransform, DevicePreparation, collate_compressed  # noqa: E402
from ssd_ds.data.loaders import TrainSampler, build_train_loader  # noqa: E402
from ssd_ds.data.transforms import CROP_MAX_SAMPLES  # noqa: E402


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def compressed_set(data: str) -> CocoDetection:
    """The training set as the trainer wires the device input path."""
    return CocoDetection(data, "train", transform=CompressedTrainTransform(CROP_MAX_SAMPLES), decode=False)


def device_loader(dataset: CocoDetection, batch: int, workers: int, dev: torch.device):
    return build_train_loader(dataset, TrainSampler(len(dataset), seed=0), batch, workers,
                              pin_memory=dev.type == "cuda", collate_fn=collate_compressed, timeout=120)


def progressive(args: argparse.Namespace) -> None:
    from PIL import Image

    files = sorted((Path(args.data) / "train2017").glob("*.jpg"))[:: args.every]
    for path in files:
        with Image.open(path) as image:
            image.load()
            image.save(path, format="JPEG", quality=90, progressive=True)
    print(f"probe progressive: {len(files)} of the training JPEGs re-saved as progressive")


class Clock:
    """Device time between two marks on a stream (CUDA events), or host time where there is no CUDA."""

    def __init__(self, dev: torch.device):
        self.dev = dev

    def mark(self, stream=None):
        if self.dev.type != "cuda":
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(stream)
        return event

    def seconds(self, start, end) -> float:
        return end - start if self.dev.type != "cuda" else start.elapsed_time(end) / 1e3


def phases(args: argparse.Namespace) -> None:
    import deepspeed

    from ssd_ds import ds_config
    from ssd_ds.distributed import setup_process_env
    from ssd_ds.loop import train_step
    from ssd_ds.model import build_model
    from ssd_ds.model_config import build_model_config
    from ssd_ds.speedups import build_training_setup
    from ssd_ds.warmup import warm_up

    setup_process_env()
    dev = device()
    deepspeed.init_distributed(dist_backend="nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    engine_cfg = ds_config.load(args.deepspeed_config, 1)
    micro = engine_cfg.plan.micro_batch
    dataset = compressed_set(args.data)
    model_cfg = build_model_config(args.model, num_classes=dataset.num_classes)
    built = build_training_setup(build_model(model_cfg).to(dev), model_cfg, dev, engine_cfg.settings, kernels="auto",
                                 compile=args.compile, encode_on_device="on", channels_last=True)
    t0 = time.perf_counter()
    warm_up(built, micro, model_cfg.input_size, 128, args.eval_batch, engine_cfg.autocast_dtype)
    print(f"probe phases: warm-up (compiles; cache hits after the trainer's run) {time.perf_counter() - t0:.1f} s")
    prepare = DevicePreparation(dev, model_cfg.input_size)
    side = torch.cuda.Stream(dev) if dev.type == "cuda" else None
    main_stream = torch.cuda.current_stream(dev) if side is not None else None
    clock = Clock(dev)
    rows, marks = [], []
    batches = iter(device_loader(dataset, micro, args.workers, dev))
    syncs: list[str] = []
    for i in range(args.warm + args.iters):
        h0 = time.perf_counter()
        host = next(batches)
        h1 = time.perf_counter()
        if side is not None:
            with torch.cuda.stream(side):
                p0 = clock.mark(side)
                batch = prepare(host)
                p1 = clock.mark(side)
            main_stream.wait_stream(side)
            for t in batch.tensors():
                t.record_stream(main_stream)
        else:
            p0 = clock.mark()
            batch = prepare(host)
            p1 = clock.mark()
        h2 = time.perf_counter()
        timed = i >= args.warm
        if timed and dev.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s0 = clock.mark(main_stream)
            train_step(built.deepspeed, batch, built.memory_format, built.ops.encode)
            s1 = clock.mark(main_stream)
        if dev.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
        h3 = time.perf_counter()
        if timed:
            syncs += [str(w.message).splitlines()[0][:100] for w in caught if "synchroniz" in str(w.message)]
            rows.append((h1 - h0, h2 - h1, h3 - h2))
            marks.append((p0, p1, s0, s1))
    sync(dev)
    counts = prepare.decoder.counts.take()
    prep_dev = [clock.seconds(p0, p1) for p0, p1, _, _ in marks]
    step_dev = [clock.seconds(s0, s1) for _, _, s0, s1 in marks]
    med = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    wait, host_prep, launch = (med([r[k] for r in rows]) for k in range(3))
    where = "CUDA events" if dev.type == "cuda" else "host clock (no CUDA)"
    print(f"probe phases: micro-batch {micro}, median of {args.iters} after {args.warm}; host ms: wait for workers "
          f"{wait:.1f}, prepare (decode+augment launched) {host_prep:.1f}, step launch {launch:.1f}")
    print(f"probe phases: device ms ({where}): side-stream preparation {med(prep_dev):.1f} "
          f"({micro / max(med(prep_dev), 1e-6) * 1e3:.0f} img/s), main-stream step {med(step_dev):.1f} "
          f"({micro / max(med(step_dev), 1e-6) * 1e3:.0f} img/s)")
    bound = "the host (prepare + launch)" if host_prep + launch > med(step_dev) else "the device step"
    print(f"probe phases: per micro-batch the host needs {host_prep + launch:.1f} ms against the step's "
          f"{med(step_dev):.1f} ms on the device: bound by {bound}")
    print(f"probe phases: synchronising calls in {args.iters} steps: {len(syncs)}"
          + (f" ({'; '.join(sorted(set(syncs))[:3])})" if syncs else ""))
    print(f"probe phases: decode paths {counts}")
    if dev.type == "cuda":
        print(f"probe phases: peak memory allocated {torch.cuda.max_memory_allocated(dev) / 2**30:.1f} GiB, "
              f"reserved {torch.cuda.max_memory_reserved(dev) / 2**30:.1f} GiB")
    decode_rates(host, dev, args.decode_repeats)


def decode_rates(host, dev: torch.device, repeats: int) -> None:
    """The decode alone on one micro-batch's files: batched, then image by image (the fallback's path)."""
    files = host.files()
    decoder = BatchDecoder(dev)
    ways = {"batched": lambda: decoder(files, host.progressive),
            "image by image": lambda: [decoder._one(f) for f in files]}
    rates = {}
    for name, fn in ways.items():
        fn()  # warm-up: nvJPEG's handles, the allocator
        sync(dev)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync(dev)
        rates[name] = len(files) * repeats / (time.perf_counter() - start)
    counts = decoder.counts.take()
    print(f"probe decode: {len(files)} images ({int(host.progressive.sum())} progressive) on {dev.type}: batched "
          f"{rates['batched']:.0f} img/s, image by image {rates['image by image']:.0f} img/s "
          f"(the fallback costs x{rates['batched'] / rates['image by image']:.1f}); paths {counts}")


class UndrainedDecoder(BatchDecoder):
    """BatchDecoder without the drain before nvJPEG: what the code did before issue 19."""

    def _nvjpeg(self, data):
        from torchvision.io import ImageReadMode, decode_jpeg

        return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=False)


def race(args: argparse.Namespace) -> int:
    dev = device()
    dataset = compressed_set(args.data)
    torch.manual_seed(0)
    hosts = [collate_compressed([dataset[(i, 1000 + i)] for i in range(k * args.batch, (k + 1) * args.batch)])
             for k in range(2)]
    side = torch.cuda.Stream(dev) if dev.type == "cuda" else None

    def prepared(decoder_cls, busy: bool):
        prepare = DevicePreparation(dev, 300)
        prepare.decoder = decoder_cls(dev)
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            if busy and side is not None:  # ~50 ms of queued work, so the first batch's kernels wait behind it
                x = torch.randn(4096, 4096, device=dev)
                for _ in range(20):
                    x = torch.tanh(x @ x)
            out = [prepare(h).images for h in hosts]  # back to back: the second decode while the first queues
        sync(dev)
        return out

    reference = prepared(BatchDecoder, busy=False)
    differ = {name: 0 for name in ("drained", "undrained")}
    for _ in range(args.iters):
        for name, cls in (("drained", BatchDecoder), ("undrained", UndrainedDecoder)):
            got = prepared(cls, busy=True)
            differ[name] += any(not torch.equal(a, b) for a, b in zip(got, reference))
    what = "" if dev.type == "cuda" else " (no CUDA: no streams, plumbing only)"
    print(f"probe race: 2 x {args.batch} images prepared behind queued side-stream work, {args.iters} iterations: "
          f"with the drain {differ['drained']} differ bitwise from the drained reference, without it "
          f"{differ['undrained']}{what}")
    return 1 if differ["drained"] else 0


def open_descriptors(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:  # it ended
        return 0


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def loader(args: argparse.Namespace) -> None:
    dev = device()
    batches = iter(device_loader(compressed_set(args.data), args.batch, args.workers, dev))
    held, most_main, most_worker, start, n = None, 0, 0, None, 0
    for _ in range(args.batches):
        batch = next(batches, None)
        if batch is None:
            break
        if start is None:  # after the first batch: the workers are up
            start = time.perf_counter()
        else:
            n += len(batch.offsets) - 1
        most_main = max(most_main, open_descriptors(os.getpid()))
        most_worker = max([most_worker] + [open_descriptors(pid) for pid in children(os.getpid())])
        held = batch  # kept while the next is fetched, as the prefetcher does
    rate = n / max(time.perf_counter() - start, 1e-9) if start else 0.0
    limit = os.sysconf("SC_OPEN_MAX")
    print(f"probe loader: micro-batch {args.batch}, {args.workers} workers: {rate:.0f} img/s after the first batch; "
          f"most file descriptors: main process {most_main}, one worker {most_worker} (limit {limit})")
    del held


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("progressive")
    p.add_argument("data")
    p.add_argument("--every", type=int, default=4)
    p = sub.add_parser("phases")
    p.add_argument("--data", required=True)
    p.add_argument("--deepspeed_config", required=True)
    p.add_argument("--model", default="mlperf")
    p.add_argument("--compile", default="auto")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--warm", type=int, default=3, help="micro-batches run before the timed ones")
    p.add_argument("--iters", type=int, default=8, help="micro-batches timed")
    p.add_argument("--decode_repeats", type=int, default=3)
    p.add_argument("--eval_batch", type=int, default=128, help="the trainer's: its warm-up compiles evaluation too")
    p = sub.add_parser("race")
    p.add_argument("--data", required=True)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=20)
    p = sub.add_parser("loader")
    p.add_argument("--data", required=True)
    p.add_argument("--batch", type=int, default=456)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--batches", type=int, default=6)
    args = parser.parse_args(argv)
    return {"progressive": progressive, "phases": phases, "race": race, "loader": loader}[args.what](args) or 0


if __name__ == "__main__":
    sys.exit(main())

"""What the kernel microbenchmarks share: the GPU check, timing, bytes -> GB/s, the printed table and the CSV.

Timing is `triton.testing.do_bench`: L2 flushed before each run, the median over as many runs as fit in `rep` ms
(with the 20th and 80th percentiles). GB/s is the byte count an op must move (each benchmark's docstring says what it
counts) divided by the median time, so that the providers are compared against one fixed amount of work. Every
measurement also times a `copy` provider: a device-to-device copy that moves the same bytes (half read, half
written), the bandwidth this GPU reaches for that much traffic in the same run, so that a kernel's GB/s reads as a
fraction of what the memory system delivers.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Callable

import torch

BATCHES = (32, 64, 128, 256)  # per-GPU batches around the real ones (NVIDIA's v0.7 ran 56-120 per GPU)
A_SSD300 = 8732  # default boxes (SPEC section 2)
C_COCO = 81  # 80 classes + background
COPY = "copy"  # the bandwidth baseline's provider name
# KERNEL_BENCH_DRY_RUN=1 (with TRITON_INTERPRET=1, by hand): the whole script on CPU, each
# provider called once instead of timed, so that the GPU run is never the first to execute it.
DRY_RUN = os.environ.get("KERNEL_BENCH_DRY_RUN") == "1"
DEVICE = "cpu" if DRY_RUN else "cuda"  # where the inputs live; tests set "cpu" to run a script in the interpreter
FIELDS = ("gpu", "op", "mode", "provider", "B", "A", "C", "G", "dtype", "layout", "ms", "ms_p20", "ms_p80", "gbps")


def model_outputs(B: int, layout: str, dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    """Random locs [B,A,4] and logits [B,A,C] on the GPU; layout "model" makes them transposed views of [B,4,A] and
    [B,C,A], as the model's heads return them, "contiguous" makes them contiguous."""
    if layout == "model":
        return tuple(torch.randn(B, n, A_SSD300, device=DEVICE, dtype=dtype).transpose(1, 2) for n in (4, C_COCO))
    return tuple(torch.randn(B, A_SSD300, n, device=DEVICE, dtype=dtype) for n in (4, C_COCO))


def require_gpu(name: str) -> None:
    """Exit with a one-line message (no traceback) where the kernels cannot be timed."""
    reason = None
    if DRY_RUN:
        return
    if not torch.cuda.is_available():
        reason = "needs a CUDA GPU and found none; on CPU run the kernel tests instead (pytest tests/kernels)"
    elif os.environ.get("TRITON_INTERPRET") == "1":
        reason = "TRITON_INTERPRET=1 is set: the kernels would run in the interpreter; unset it to benchmark"
    if reason:
        print(f"{name}: {reason}", file=sys.stderr)
        sys.exit(2)


def add_arguments(parser: argparse.ArgumentParser, name: str, layouts: bool = False, slots: bool = False) -> None:
    """The flags every kernel benchmark takes (`--out` defaults to results/bench/NAME.csv), with `--layout` for the
    ops that read the model's outputs and `--slots` for the encode."""
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    if layouts:
        parser.add_argument(
            "--layout", choices=("model", "contiguous"), default="model",
            help="model: [B,A,*] transposed views of [B,*,A], as the model returns them; contiguous: [B,A,*]",
        )
    if slots:
        parser.add_argument("--slots", type=int, nargs="+", default=[128, 64],
                            help="box slots G per image: the trainer's padding (max_boxes 128) and a batch maximum")
    parser.add_argument("--out", type=Path, default=Path("results/bench") / f"{name}.csv", help="CSV to write")
    parser.add_argument("--rep", type=int, default=100, help="ms of timed runs per measurement")


def run_alone(name: str, description: str, add_arguments: Callable, run: Callable,
              argv: list[str] | None = None) -> None:
    """One benchmark run as its own module (`python -m ssd_ds.bench.kernels.loss`), as the dispatcher runs it."""
    parser = argparse.ArgumentParser(
        prog=name, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    run(parser.parse_args(argv))


def providers(kernel: Callable, reference: Callable) -> dict[str, Callable]:
    """The three providers each benchmark times: the Triton kernel, the torch reference eager, and the reference under
    torch.compile: default inductor, dynamic batch so that one compile serves every size (a dry run traces with the
    eager backend: the plumbing, not inductor's minutes of C++ builds on CPU)."""
    compiled = torch.compile(reference, dynamic=True, backend="eager" if DRY_RUN else "inductor")
    return {"triton": kernel, "torch": reference, "torch.compile": compiled}


def measure(fn: Callable, rep: int, grad_to_none=None) -> tuple[float, float, float]:
    """(median, p20, p80) in ms."""
    if DRY_RUN:
        fn()
        return 1.0, 1.0, 1.0
    import triton.testing

    p20, median, p80 = triton.testing.do_bench(fn, rep=rep, grad_to_none=grad_to_none, quantiles=[0.2, 0.5, 0.8])
    return median, p20, p80


class Report:
    """Rows of one benchmark: printed and appended to the CSV as they are measured, so that a run stopped by a
    time limit keeps every row it finished."""

    def __init__(self, out: Path):
        self.out = out
        self.device = DEVICE
        self.gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE
        self.rows: list[dict] = []
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with open(self.out, "w", newline="") as f:
            csv.DictWriter(f, fieldnames=FIELDS).writeheader()
        print(f"# {self.gpu}; torch {torch.__version__}")

    def add(self, times: tuple[float, float, float], nbytes: int, **fields) -> None:
        ms, p20, p80 = times
        times = dict(ms=ms, ms_p20=p20, ms_p80=p80, gbps=nbytes / ms / 1e6)
        row = {f: "" for f in FIELDS} | fields | dict(gpu=self.gpu) | times
        self.rows.append(row)
        with open(self.out, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=FIELDS).writerow(row)
        print(
            f"{row['op']:>14} {row['mode']:>8} {row['provider']:>13} B={row['B']:<4} {ms:9.3f} ms  "
            f"{row['gbps']:8.1f} GB/s",
            flush=True,
        )

    def time_providers(self, providers: dict[str, Callable], nbytes: int, rep: int, grad_to_none=None, **fields):
        """Time each provider's zero-argument callable on the same inputs and add a row for each, then the `copy`
        baseline for `nbytes`."""
        for provider, fn in providers.items():
            self.add(measure(fn, rep, grad_to_none), nbytes, provider=provider, **fields)
        self.add(measure(_copy_of(nbytes // 2, self.device), rep), nbytes // 2 * 2, provider=COPY, **fields)

    def write(self) -> None:
        """The CSV is complete (every row was appended as it came)."""
        print(f"wrote {len(self.rows)} rows to {self.out}")


def _copy_of(n: int, device) -> Callable:
    """A callable copying n bytes between two device buffers, which live as long as it does (freed with it)."""
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)

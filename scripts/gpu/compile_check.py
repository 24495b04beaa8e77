"""Compile every kernel for an NVIDIA GPU on a machine without one, and report the resources each would use there.

The kernel tests on CPU run the kernels in Triton's interpreter, which never compiles them: a kernel can pass there
and still fail to compile, or compile to code that spills registers. This check closes that gap without a GPU. It
calls each op's own host launcher on `meta` tensors of the real sizes (A = 8732 default boxes, C = 81 classes, up to
G = 256 boxes; fp32, bf16 and fp16; the model's transposed layout and contiguous tensors) while Triton's active
driver is an offline stand-in for the chosen architecture. Each launch then compiles (to PTX and a cubin, with the
ptxas Triton ships) exactly the specialisation, tile sizes and options a GPU run would use, and launches nothing.
cuobjdump reads each cubin's registers per thread, stack (register spills) and local memory; with Triton's shared
memory request they give the occupancy per SM.

  python scripts/gpu/compile_check.py                         # sm_90 (H100, H200): table on stdout
  python scripts/gpu/compile_check.py --arch 80 --out results/compile_sm80.csv

Exit status 1 when a kernel fails to compile, spills, needs more shared memory than a block may have, or is never
reached by any launcher; 2 when it cannot run (TRITON_INTERPRET=1 makes the kernels interpreted, so there is
nothing to compile). Needs neither a GPU nor a CUDA driver. It leans on Triton internals (`JITFunction.run`, the
driver config, `device_caches`) of the triton that torch pins (3.8) and of the GPU machine's (3.6, run by
scripts/gpu/triton_compat.sh); its tests say so first if they change.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ssd_ds.fileio import atomic_open  # noqa: E402

# Per-SM limits (CUDA C Programming Guide, "Technical Specifications per Compute Capability"): register file,
# resident warps and blocks, shared memory per SM and the most one block may use. Each block also reserves 1 KB.
ARCH_LIMITS = {
    80: dict(gpus="A100", regs=65536, warps=64, blocks=32, smem_sm=167936, smem_block=166912),
    90: dict(gpus="H100, H200", regs=65536, warps=64, blocks=32, smem_sm=233472, smem_block=232448),
}
_RESERVED_SMEM = 1024
_REG_ALLOC_UNIT = 256  # registers are allocated per warp in units of 256

B, A, C = 2, 8732, 81  # B only sizes the grid, which a compile never sees


@dataclass
class Row:
    """One compiled kernel."""

    arch: int
    kernel: str
    case: str  # the first launch that compiled this specialisation
    num_warps: int = 0
    regs: int = 0  # registers per thread
    stack: int = 0  # stack frame bytes per thread: register spills
    local: int = 0  # local memory bytes per thread
    shared: int = 0  # dynamic shared memory bytes per block, as Triton requests it
    blocks_per_sm: int = 0
    occupancy: float = 0.0  # resident warps / the SM's maximum
    compile_s: float = 0.0
    error: str = ""


def _cases() -> dict[str, Callable[[], None]]:
    """Launch name -> a call of the op's host launcher on meta tensors of the real sizes."""
    from triton_kernels import decode, encode, loss

    meta = dict(device="meta")

    def model_or_contiguous(layout, width, dtype):
        # The heads return [B,width,A] transposed to [B,A,width] views; contiguous is [B,A,width].
        if layout == "model":
            return torch.empty(B, width, A, dtype=dtype, **meta).transpose(1, 2)
        return torch.empty(B, A, width, dtype=dtype, **meta)

    cases = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for layout in ("model", "contiguous"):
            name = f"{str(dtype).removeprefix('torch.')} {layout}"

            def run_loss(dtype=dtype, layout=layout):
                locs, logits = model_or_contiguous(layout, 4, dtype), model_or_contiguous(layout, C, dtype)
                loc_t, labels_t = torch.empty(B, A, 4, **meta), torch.empty(B, A, dtype=torch.int64, **meta)
                out, weight, scale = loss._launch_forward(locs, logits, loc_t, labels_t)
                loss._launch_backward(torch.empty((), **meta), locs, logits, loc_t, labels_t, weight, scale)

            def run_decode(dtype=dtype, layout=layout):
                locs, logits = model_or_contiguous(layout, 4, dtype), model_or_contiguous(layout, C, dtype)
                dboxes = torch.empty(A, 4, **meta)
                decode._launch(locs, dboxes, logits, 0.05)

            cases[f"loss {name}"] = run_loss
            cases[f"decode {name}"] = run_decode
    # G: every power of two the loader trims raw boxes to (ssd_ds.data.batch.box_slots: 8 ... 128 for COCO), the
    # old fixed padding's 100 (a non-power of two) and the kernel's limit.
    for G in (8, 16, 32, 64, 100, 128, encode.MAX_BOXES):

        def run_encode(G=G):
            gt = torch.empty(B, G, 4, **meta)
            labels, num_gt = torch.empty(B, G, dtype=torch.int64, **meta), torch.empty(B, dtype=torch.int64, **meta)
            encode._launch(gt, labels, num_gt, torch.empty(A, 4, **meta))

        cases[f"encode G={G}"] = run_encode
    return cases


def _entry_kernels() -> dict[str, object]:
    """Every kernel an op launches (`_*_kernel`; the other jit functions are inlined into them), by name."""
    from triton.runtime.jit import JITFunction

    from triton_kernels import decode, encode, loss

    found = {}
    for module in (loss, decode, encode):
        for name, value in vars(module).items():
            if isinstance(value, JITFunction) and name.endswith("_kernel"):
                found[name] = value
    return found


class _OfflineDriver:
    """What `JITFunction.run` asks of Triton's active driver, for a GPU that is not here."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


@contextlib.contextmanager
def _compile_only(arch: int) -> Iterator[list]:
    """Within: kernel launches compile for `arch` and launch nothing, and the launchers accept meta tensors.

    Yields the list that collects (kernel name, compiled kernel or None, seconds, error or "") per launch.
    """
    from unittest import mock

    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    from triton_kernels import decode, encode, loss

    compiled = []
    run = JITFunction.run

    def compile_without_launch(self, *args, grid, warmup, **kwargs):
        t0 = time.perf_counter()
        try:
            kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        except Exception as e:
            compiled.append((self.fn.__name__, None, time.perf_counter() - t0, _one_line(e)))
            raise
        compiled.append((self.fn.__name__, kernel, time.perf_counter() - t0, ""))
        return kernel

    kernels = _entry_kernels().values()
    # Triton caches a binder (holding the target) per device; dropping them makes the next launch use this arch.
    previous = driver._active  # reset_active() would look for a real driver, which a machine without a GPU lacks
    with contextlib.ExitStack() as stack:
        for module in (loss, decode, encode):
            stack.enter_context(mock.patch.object(module, "check_device", lambda *a, **k: None))
        stack.enter_context(mock.patch.object(JITFunction, "run", compile_without_launch))
        for k in kernels:
            k.device_caches.clear()
        driver.set_active(_OfflineDriver(arch))
        try:
            yield compiled
        finally:
            driver.set_active(previous)
            for k in kernels:
                k.device_caches.clear()


def _one_line(e: Exception) -> str:
    """An exception as one line: its type and the last line of its message (Triton's first lines quote source)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"


def resource_usage(cubin: bytes) -> dict[str, int]:
    """{"REG": .., "STACK": .., "SHARED": .., "LOCAL": ..} of a one-kernel cubin, from `cuobjdump -res-usage`."""
    from triton import knobs

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        out = subprocess.run(
            [knobs.nvidia.cuobjdump.path, "-res-usage", str(path)], capture_output=True, text=True, check=True
        ).stdout
    usage = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out))
    if set(usage) != {"REG", "STACK", "SHARED", "LOCAL"}:
        raise RuntimeError(f"cannot read cuobjdump -res-usage output: {out!r}")
    return {k: int(v) for k, v in usage.items()}


def blocks_per_sm(arch: int, num_warps: int, regs: int, shared: int) -> int:
    """Resident blocks per SM, limited by registers, warps, shared memory and the block limit."""
    lim = ARCH_LIMITS[arch]
    regs_per_warp = math.ceil(regs * 32 / _REG_ALLOC_UNIT) * _REG_ALLOC_UNIT
    by_regs = (lim["regs"] // regs_per_warp) // num_warps if regs else lim["blocks"]
    by_smem = lim["smem_sm"] // (shared + _RESERVED_SMEM)
    return min(by_regs, by_smem, lim["warps"] // num_warps, lim["blocks"])


def check(arch: int = 90, cases: dict[str, Callable[[], None]] | None = None) -> list[Row]:
    """Compile every launch of `cases` (default: all ops at the real sizes) for `arch`; one Row per kernel."""
    rows, seen = [], set()
    for case, launch in (cases or _cases()).items():
        with _compile_only(arch) as compiled:
            try:
                launch()
            except Exception as e:
                if not compiled or not compiled[-1][3]:  # failed outside a compile: the launcher itself
                    compiled.append(("(launcher)", None, 0.0, _one_line(e)))
        for name, kernel, seconds, error in compiled:
            if error:
                rows.append(Row(arch, name, case, compile_s=round(seconds, 2), error=error))
                continue
            if kernel.hash in seen:
                continue
            seen.add(kernel.hash)
            usage = resource_usage(kernel.asm["cubin"])
            warps, shared = kernel.metadata.num_warps, kernel.metadata.shared
            occ_blocks = blocks_per_sm(arch, warps, usage["REG"], shared)
            rows.append(Row(
                arch, name, case, warps, usage["REG"], usage["STACK"], usage["LOCAL"], shared,
                occ_blocks, round(occ_blocks * warps / ARCH_LIMITS[arch]["warps"], 3), round(seconds, 2),
            ))
    return rows


def problems(rows: list[Row], expected: set[str] | None = None) -> list[str]:
    """What must be fixed before a GPU run: compile errors, spills, shared memory over a block's limit, and kernels
    (of `expected`, default every `_*_kernel` of the ops) that no launch compiled."""
    found = []
    for r in rows:
        where = f"{r.kernel} ({r.case}, sm_{r.arch})"
        if r.error:
            found.append(f"{where}: {'fails' if r.kernel == '(launcher)' else 'does not compile'}: {r.error}")
        elif r.stack or r.local:
            found.append(f"{where}: spills ({r.regs} registers, {r.stack} B stack, {r.local} B local per thread)")
        elif r.shared + _RESERVED_SMEM > ARCH_LIMITS[r.arch]["smem_block"]:
            found.append(f"{where}: {r.shared} B shared memory exceeds a block's limit")
    expected = set(_entry_kernels()) if expected is None else expected
    for name in sorted(expected - {r.kernel for r in rows}):
        found.append(f"{name}: no launch compiled it")
    return found


def _table(rows: list[Row]) -> str:
    head = "| kernel | first compiled by | warps | registers | spill stack B | shared B | blocks/SM | occupancy |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        if r.error:
            lines.append(f"| {r.kernel} | {r.case} | compile error: {r.error} |||||")
        else:
            lines.append(
                f"| {r.kernel} | {r.case} | {r.num_warps} | {r.regs} | {r.stack} | {r.shared} | {r.blocks_per_sm} | "
                f"{r.occupancy:.0%} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/gpu/compile_check.py", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, choices=sorted(ARCH_LIMITS), help="compute capability x10")
    parser.add_argument("--out", type=Path, help="also write the rows as CSV here")
    parser.add_argument("--only", default="", help="compile only the launches whose name contains this (e.g. encode)")
    args = parser.parse_args(argv)

    import triton

    from triton_kernels._common import INTERPRETED

    if INTERPRETED or os.environ.get("TRITON_INTERPRET") == "1":
        print("compile_check: TRITON_INTERPRET=1 makes the kernels interpreted, so nothing compiles; unset it",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    every = _cases()
    cases = {name: launch for name, launch in every.items() if args.only in name}
    if not cases:
        print(f"compile_check: no launch name contains {args.only!r}; names: {', '.join(every)}", file=sys.stderr)
        return 2
    rows = check(args.arch, cases)
    print(f"sm_{args.arch} ({ARCH_LIMITS[args.arch]['gpus']}), triton {triton.__version__}: {len(rows)} kernels "
          f"compiled in {time.perf_counter() - t0:.0f} s, nothing launched\n")
    print(_table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(args.out) as f:
            writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(Row)])
            writer.writeheader()
            writer.writerows(asdict(r) for r in rows)
    found = problems(rows, expected=None if cases == every else set())  # with --only, no coverage check
    for line in found:
        print(f"problem: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    from ssd_ds.cli import run_cli

    run_cli(main)

"""Every kernel compiles for the GPUs we target, at the real sizes, without spilling registers; the check itself
reports a spill, a compile error and an unreached kernel.

The interpreter tests beside this file never compile a kernel. These run `scripts/gpu/compile_check.py` in a
subprocess without TRITON_INTERPRET (this process has the kernels imported interpreted) and need no GPU: Triton
compiles to a cubin with the ptxas it ships.
"""

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import triton

ROOT = Path(__file__).resolve().parents[2]
COMPILE_CHECK = ROOT / "scripts" / "gpu" / "compile_check.py"
KERNELS = {"_ce_kernel", "_mine_kernel", "_backward_kernel", "_decode_kernel", "_match_kernel",
           "_best_anchor_kernel", "_encode_kernel"}


def run(args, tmp_path, interpret=False):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # ROOT ahead of the inherited path, not instead of it: scripts/gpu/triton_compat.sh puts another triton there.
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(PYTHONPATH=path, TRITON_CACHE_DIR=str(tmp_path / "triton_cache"))  # a real compile, every time
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [90, 80], ids=["sm_90", "sm_80"])
def test_every_kernel_compiles_at_the_real_sizes_without_spills(arch, tmp_path):
    out = tmp_path / "compile.csv"
    result = run([str(COMPILE_CHECK), "--arch", str(arch), "--out", str(out)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = list(csv.DictReader(out.open()))
    assert {r["kernel"] for r in rows} == KERNELS
    for r in rows:
        assert r["error"] == "" and r["stack"] == r["local"] == "0", r
        assert 0 < int(r["regs"]) <= 255 and int(r["blocks_per_sm"]) >= 1, r
    cases = {r["case"] for r in rows}
    assert {"loss bfloat16 model", "loss float16 contiguous", "decode bfloat16 model", "encode G=256"} <= cases
    assert f"sm_{arch}" in result.stdout and "| _mine_kernel |" in result.stdout
    assert f"triton {triton.__version__}" in result.stdout  # the subprocess compiled with this process's triton


@pytest.mark.slow
def test_reports_spills_compile_errors_and_unreached_kernels(tmp_path):
    script = tmp_path / "toy.py"
    script.write_text(textwrap.dedent('''
        import sys

        import torch
        import triton
        import triton.language as tl

        sys.path.insert(0, sys.argv[1])  # scripts/gpu: compile_check is a script, not a package's module
        import compile_check


        @triton.jit
        def _spill_kernel(x_ptr, BLOCK: tl.constexpr):
            i = tl.arange(0, BLOCK)
            x = tl.load(x_ptr + i)  # 16384 values in one warp's registers, live across the sum
            tl.store(x_ptr + i, x * tl.sum(x, axis=0))


        @triton.jit
        def _bad_kernel(x_ptr):
            tl.store(x_ptr + tl.arange(0, 3), 0.0)  # a range that is not a power of 2 does not compile


        def spill():
            _spill_kernel[(1,)](torch.empty(16384, device="meta"), BLOCK=16384, num_warps=1)


        def bad():
            _bad_kernel[(1,)](torch.empty(3, device="meta"))


        rows = compile_check.check(90, {"spill": spill, "bad": bad})
        for line in compile_check.problems(rows, {"_spill_kernel", "_bad_kernel", "_never_kernel"}):
            print(line)
    '''))
    result = run([str(script), str(COMPILE_CHECK.parent)], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("_spill_kernel (spill, sm_90): spills (")
    assert lines[1].startswith("_bad_kernel (bad, sm_90): does not compile: CompilationError: ")
    assert "power of 2" in lines[1]
    assert lines[2] == "_never_kernel: no launch compiled it"


@pytest.mark.slow
def test_refuses_in_the_interpreter(tmp_path):
    result = run([str(COMPILE_CHECK)], tmp_path, interpret=True)
    assert result.returncode == 2
    assert result.stderr.startswith("compile_check: TRITON_INTERPRET=1") and "Traceback" not in result.stderr

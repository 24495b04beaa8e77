"""The benchmark scripts refuse cleanly where they cannot time kernels, their report adds the copy baseline, and
gpu_check's summary reads their CSVs. (Each script's whole path runs in Triton's interpreter in
tests/test_gpu_check.py, as gpu_check.sh --dry-run.)"""

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["bench_loss", "bench_decode", "bench_encode"])
def test_benchmark_refuses_without_a_gpu_or_in_the_interpreter(name):
    # With TRITON_INTERPRET=1 every machine must refuse: without a GPU for that reason, with one for the interpreter.
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])  # keep an inherited triton
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    run = subprocess.run(
        [sys.executable, "-m", f"triton_kernels.benchmarks.{name}", "--batches", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.startswith(f"{name}: ") and len(run.stderr.strip().splitlines()) == 1
    assert "Traceback" not in run.stderr + run.stdout


def test_report_adds_the_copy_baseline_for_the_same_bytes(tmp_path, monkeypatch):
    from triton_kernels.benchmarks import common

    calls = []

    def measure(fn, rep, grad_to_none=None):  # runs the callable once instead of timing it (no GPU here)
        fn()
        calls.append(fn)
        return 2.0, 1.5, 2.5

    monkeypatch.setattr(common, "measure", measure)
    monkeypatch.setattr(common, "DEVICE", "cpu")
    x = torch.zeros(4)
    report = common.Report(tmp_path / "bench.csv")
    report.time_providers({"triton": lambda: x.add_(1), "torch": lambda: x.add_(1)}, 1_000_001, rep=1,
                          op="decode", mode="boxes", B=32)
    # Rows are on disk as soon as they are measured (a run cut by its time limit keeps them), before write().
    assert len(list(csv.DictReader((tmp_path / "bench.csv").open()))) == 3
    report.write()
    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    assert [r["provider"] for r in rows] == ["triton", "torch", "copy"] and len(calls) == 3 and x[0] == 2
    assert [float(r["gbps"]) for r in rows] == [1_000_001 / 2.0 / 1e6] * 2 + [1_000_000 / 2.0 / 1e6]
    assert {r["op"] for r in rows} == {"decode"} and {r["gpu"] for r in rows} == {"cpu"}


def test_gpu_check_summary(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_summary", ROOT / "scripts" / "gpu_summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    (tmp_path / "steps.tsv").write_text(
        "kernel_tests\tok\t90\tkernel_tests.log\nbench_loss\tok\t60\tbench_loss.log\n"
        "bench_encode\tfailed(rc=1)\t3\tbench_encode.log\nbench_decode\tskipped(budget)\t0\t-\n"
    )
    (tmp_path / "kernel_tests.xml").write_text(
        '<testsuites><testsuite tests="10" failures="1" errors="0" skipped="2"/></testsuites>'
    )
    header = "gpu,op,mode,provider,B,A,C,G,dtype,layout,ms,ms_p20,ms_p80,gbps\n"
    rows = [("triton", 32, 1.0, 32), ("torch", 32, 3.0, 11), ("copy", 32, 0.5, 64),
            ("triton", 256, 2.0, 256), ("torch", 256, 8.0, 64), ("copy", 256, 1.6, 320)]
    (tmp_path / "bench_loss.csv").write_text(header + "".join(
        f"H200,ssd_loss,fwd,{p},{B},8732,81,,bfloat16,model,{ms},{ms},{ms},{gbps}\n" for p, B, ms, gbps in rows
    ))
    (tmp_path / "bench_encode.log").write_text("...\nRuntimeError: out of memory\n")
    summary.main(tmp_path)
    table = (tmp_path / "summary.md").read_text()
    assert "| kernel_tests | ok | 90 | 7 passed, 1 failed, 0 errors, 2 skipped |" in table
    assert (
        "ssd_loss fwd B=256: triton 2.000 ms, torch 8.000 ms; triton 256 GB/s (80% of copy, 320 GB/s), x4.00 vs torch"
        in table
    )
    assert "bench_encode.log: RuntimeError: out of memory" in table
    assert "| bench_decode | skipped(budget) | 0 |" in table

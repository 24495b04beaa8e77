"""The benchmark scripts refuse cleanly where they cannot time kernels, and their report adds the copy baseline."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("op", ["loss", "decode", "encode"])
@pytest.mark.parametrize("alone", [True, False], ids=["alone", "dispatched"])
def test_benchmark_refuses_without_a_gpu_or_in_the_interpreter(op, alone):
    # With TRITON_INTERPRET=1 every machine must refuse: without a GPU for that reason, with one for the interpreter.
    # Run alone (python -m ssd_ds.bench.kernels.loss) or through python -m ssd_ds.bench loss: the same refusal.
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])  # keep an inherited triton
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    command = [f"ssd_ds.bench.kernels.{op}"] if alone else ["ssd_ds.bench", op]
    run = subprocess.run(
        [sys.executable, "-m", *command, "--batches", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.startswith(f"bench_{op}: ") and len(run.stderr.strip().splitlines()) == 1
    assert "Traceback" not in run.stderr + run.stdout


def test_report_adds_the_copy_baseline_for_the_same_bytes(tmp_path, monkeypatch):
    from ssd_ds.bench.kernels import common

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
                          op="decode", mode="scores", B=32)
    # Rows are on disk as soon as they are measured (a run cut by its time limit keeps them), before write().
    assert len(list(csv.DictReader((tmp_path / "bench.csv").open()))) == 3
    report.write()
    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    assert [r["provider"] for r in rows] == ["triton", "torch", "copy"] and len(calls) == 3 and x[0] == 2
    assert [float(r["gbps"]) for r in rows] == [1_000_001 / 2.0 / 1e6] * 2 + [1_000_000 / 2.0 / 1e6]
    assert {r["op"] for r in rows} == {"decode"} and {r["gpu"] for r in rows} == {"cpu"}

"""scripts/gpu/gpu_check.sh --dry-run: the prepared GPU run's every step on CPU (Triton's interpreter, gloo, tiny
sizes), so that its plumbing (launch, logs, parsing, packing, the summary) never meets a GPU untested."""

import importlib.util
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.helpers import REPO

STEPS = ("data", "train", "phases", "race", "loader", "tests")
GPU_BUDGET_S = 450  # seconds of run time a GPU check may take, the machine's start-up aside


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step_of_the_plan_and_packs_at_most_eight_files(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, TMPDIR=str(tmp_path),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", "scripts/gpu/gpu_check.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    plan = re.search(r"^plan \(limits on the GPU, s\): (.*) = (\d+) of (\d+)$", proc.stdout, re.M)
    limits = dict(entry.split(":") for entry in plan[1].split())
    assert tuple(limits) == STEPS and sum(map(int, limits.values())) == int(plan[2]) <= GPU_BUDGET_S
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_check.tar.gz", "steps.tsv", "summary.md"]  # a few files, every log packed in one archive
    steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()]
    assert [(s[0], s[1]) for s in steps] == [(name, "ok") for name in STEPS], steps
    summary = (out / "summary.md").read_text()
    assert proc.stdout.rstrip().endswith(summary.rstrip())  # the table is printed last
    for shown in ("status aborted, eval_accuracy [",  # the trainer evaluated through background COCOeval
                  "steady state (epoch 2 on", "decode paths: nvjpeg_batched 0", "recompiles 0, graph breaks 0",
                  "side-stream preparation", "main-stream step", "synchronising calls", "image by image",
                  "with the drain 0 differ bitwise", "most file descriptors", "(limit 1024)",
                  "passed, 0 failed, 0 errors"):
        assert shown in summary, shown
    progressive = int(re.search(r"\| data \| ok \| \d+ \| (\d+) of the training JPEGs re-saved as progressive",
                                summary)[1])
    decoded = re.search(r"decode paths: .*progressive (\d+)", summary)
    assert progressive > 0 and int(decoded[1]) > 0  # the trainer met progressive JPEGs and counted them
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        names = {Path(n).as_posix().lstrip("./") for n in tar.getnames()}
    assert {"env.txt", "train/mlperf.log", "train/metrics.jsonl", "train.log", "tests.xml", "phases.log"} <= names
    assert not any(n.startswith(("synthetic/", "train/checkpoints/")) for n in names)


def test_summary_shows_each_step_with_its_results_and_why_one_failed(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_summary", REPO / "scripts" / "gpu" / "gpu_summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    (tmp_path / "env.txt").write_text("NVIDIA H200 (CUDA 13.0) | torch 2.11.0\n")
    (tmp_path / "steps.tsv").write_text("tests\tok\t50\ttests.log\nphases\tok\t60\tphases.log\n"
                                        "race\tfailed(rc=1)\t9\trace.log\nloader\tskipped(budget)\t0\t-\n")
    (tmp_path / "tests.xml").write_text('<testsuites><testsuite tests="10" failures="1" errors="0" skipped="2"/>'
                                        "</testsuites>")
    (tmp_path / "phases.result").write_text("probe phases: device ms: step 200.0\nprobe decode: 456 images\n")
    (tmp_path / "race.log").write_text("...\nprobe race: with the drain 3 differ bitwise\n")
    summary.main(tmp_path)
    table = (tmp_path / "summary.md").read_text()
    assert table.startswith("GPU check: NVIDIA H200 (CUDA 13.0) | torch 2.11.0")
    assert "| tests | ok | 50 | 7 passed, 1 failed, 0 errors, 2 skipped |" in table
    assert "| phases | ok | 60 | device ms: step 200.0 |\n| | | | 456 images |" in table
    assert "| race | failed(rc=1) | 9 | race.log: probe race: with the drain 3 differ bitwise |" in table
    assert "| loader | skipped(budget) | 0 |" in table

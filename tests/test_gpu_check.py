"""scripts/gpu_check.sh --dry-run: the prepared GPU run's every step on CPU (Triton's interpreter, gloo, tiny sizes),
so that its plumbing (launch, logs, parsing, packing, the summary) never meets a GPU untested."""

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.helpers import REPO

STEPS = ("data", "train", "phases", "race", "loader", "tests")
GPU_BUDGET_S = 450  # seconds of run time a GPU check may take, the machine's start-up aside


def test_gpu_check_dry_run_runs_every_step_of_the_plan_and_packs_at_most_eight_files(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, TMPDIR=str(tmp_path),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True,
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

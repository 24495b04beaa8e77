"""scripts/gpu_check.sh --dry-run: the prepared GPU run's every step on CPU (Triton's interpreter, gloo, tiny sizes),
so that its plumbing (launch, logs, parsing, packing, the summary) never meets a GPU untested."""

import csv
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.helpers import REPO

STEPS = ("train_smoke", "train_throughput", "data_throughput", "kernel_tests", "bench_loss", "bench_decode",
         "bench_encode")


def test_gpu_check_dry_run_runs_every_step_and_packs_at_most_eight_files(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, TMPDIR=str(tmp_path),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_check.tar.gz", "steps.tsv", "summary.md"]  # the device tool returns at most 8
    steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()]
    assert [(s[0], s[1]) for s in steps] == [(name, "ok") for name in STEPS], steps
    summary = (out / "summary.md").read_text()
    assert proc.stdout.rstrip().endswith(summary.rstrip())  # the table is printed last
    assert "status aborted, eval_accuracy [" in summary  # the smoke run evaluated through background COCOeval
    assert "fp32 NCHW eager (baseline)" in summary and "GFLOP/image" in summary
    assert "passed, 0 failed, 0 errors" in summary
    assert "encode G=128 B=2" in summary and "encode G=64 B=2" in summary
    assert "CPU cores per 1,000 img/s: cpu path" in summary and "device path, worker part" in summary
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        names = {Path(n).as_posix().lstrip("./") for n in tar.getnames()}
        # Each kernel benchmark's whole path ran (inputs at the real A, C and G, every provider, the CSV): a GPU run
        # is never the first to execute it.
        for name, modes in (("bench_loss", {"fwd", "fwd+bwd"}), ("bench_decode", {"scores"}),
                            ("bench_encode", {"G=128", "G=64"})):
            member = next(m for m in tar.getmembers() if m.name.endswith(f"{name}.csv"))
            rows = list(csv.DictReader(io.TextIOWrapper(tar.extractfile(member))))
            assert {r["mode"] for r in rows} == modes, name
            for mode in modes:
                assert sorted(r["provider"] for r in rows if r["mode"] == mode) == [
                    "copy", "torch", "torch.compile", "triton"], (name, mode)
            assert all(r["B"] == "2" and r["A"] == "8732" for r in rows), name
    assert {"env.txt", "train_smoke/mlperf.log", "train_smoke/metrics.jsonl", "kernel_tests.xml",
            "bench_loss.csv", "train_throughput.log"} <= names
    assert not any(n.startswith(("synthetic/", "train_smoke/checkpoints/")) for n in names)

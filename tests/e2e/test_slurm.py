"""scripts/launch/run.sub under a real single-node Slurm (scripts/slurm/local_slurm.sh starts one; CI installs it):
a job signalled ahead of its time limit stops with a checkpoint, requeues itself and finishes; a job that succeeds
or fails is not requeued. Skipped, saying why, where Slurm cannot start (not root, not installed)."""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import CPU_TEST_CONFIG, REPO, env, free_port, losses

pytestmark = pytest.mark.slow

SLURM_DIR = Path("/tmp/ssd_ds_slurm")


@pytest.fixture(scope="module")
def slurm():
    if shutil.which("sbatch") is None or shutil.which("slurmctld") is None:
        pytest.skip("Slurm is not installed (scripts/slurm/local_slurm.sh install; CI does)")
    # There is one Slurm on this machine (fixed ports, one state directory), and xdist may hand this module's tests to
    # several workers: each worker holds the lock from start to stop, so none restarts or stops the daemons under
    # another's running job (that job ended FAILED, or hung in COMPLETING). The others wait here.
    environ = dict(os.environ, SLURM_DIR=str(SLURM_DIR))
    with open(f"{SLURM_DIR}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = subprocess.run(["scripts/slurm/local_slurm.sh", "start", "2"], cwd=REPO, capture_output=True,
                                 text=True, env=environ, timeout=120)
        if started.returncode != 0:
            pytest.skip(f"Slurm did not start: {(started.stderr or started.stdout).strip()}")
        yield str(SLURM_DIR / "slurm.conf")
        subprocess.run(["scripts/slurm/local_slurm.sh", "stop"], cwd=REPO, env=environ, capture_output=True)


def job_env(conf, data, logdir, system):
    return env(SLURM_CONF=conf, DATADIR=str(data), LOGDIR=str(logdir), DGXNGPU="1", DGXSYSTEM="CPU",
               SYSTEM_CONFIG=str(system), SEED="3", PYTHON=sys.executable, MASTER_PORT=str(free_port()))


def submit(environ, out, *flags):
    """sbatch scripts/launch/run.sub from the repository root (Slurm runs a spooled copy of it)."""
    proc = subprocess.run(["sbatch", "--parsable", "-N", "1", "-t", "15", "-o", str(out), "scripts/launch/run.sub",
                           "--synthetic", "false", "--workers", "1", "--threads", "1", "--progress", "false", *flags],
                          cwd=REPO, env=environ, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job(job_id, environ):
    """scontrol's fields of the job (JobState, Restarts, ExitCode, ...)."""
    out = subprocess.run(["scontrol", "show", "job", job_id], env=environ, capture_output=True, text=True).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def wait_for(job_id, environ, done, timeout=420):
    deadline = time.time() + timeout
    while time.time() < deadline:
        fields = job(job_id, environ)
        if done(fields):
            return fields
        time.sleep(1)
    raise AssertionError(f"job {job_id} still {job(job_id, environ)} after {timeout} s")


def logged_steps(run_dir):
    path = run_dir / "metrics.jsonl"
    return path.read_text().count('"iteration"') if path.exists() else 0


def finished(fields):
    return fields.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")


@pytest.fixture
def system(tmp_path):
    path = tmp_path / "CPU.json"  # a system's run config, as in configs/systems/
    path.write_text(json.dumps({"preset": "demo", "deepspeed_config": CPU_TEST_CONFIG, "submission_platform": "CPU",
                                "epochs": 3, "eval_epochs": [3], "eval_every": 9, "warmup_iters": 4,
                                "lr_per_32": 1e-2, "log_every": 1}))
    return path


def test_signalled_job_requeues_itself_and_finishes(slurm, synthetic_dataset, tmp_path, system):
    environ = job_env(slurm, synthetic_dataset, tmp_path / "logs", system)
    out = tmp_path / "job.out"
    job_id = submit(environ, out)
    run_dir = tmp_path / "logs" / f"ssd_CPU_{job_id}"
    deadline = time.time() + 300
    while time.time() < deadline and logged_steps(run_dir) < 3:
        time.sleep(0.5)
    assert (run_dir / "metrics.jsonl").exists(), out.read_text()[-3000:] if out.exists() else "no job output"
    # What Slurm does `--signal=B:USR1@<s>` before the time limit: USR1 to the batch script alone.
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], env=environ, check=True)
    requeued = wait_for(job_id, environ, lambda f: f.get("Restarts") == "1" or finished(f))
    assert requeued.get("Restarts") == "1", (requeued, out.read_text()[-3000:])
    # Slurm holds a requeued job back for a while (BeginTime); let it start now.
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=environ, capture_output=True)
    fields = wait_for(job_id, environ, finished)
    log = out.read_text()
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", (fields, log[-3000:])
    assert fields["Restarts"] == "1"
    assert "run.sub: USR1 received, passed on to the tasks" in log
    assert "SIGUSR1 received" in log and "exit code 75" in log
    assert f"requeueing job {job_id}" in log and "attempt 2" in log
    assert "resumed from" in log
    assert sorted(losses(run_dir)) == list(range(1, 16))  # 3 epochs of 5 iterations, each once
    result = [line for line in log.splitlines() if line.startswith("RESULT,SSD,")]
    assert len(result) == 1 and "over 2 segments" in log and "(preempted)" in log
    assert "compliance check of" in log


@pytest.mark.parametrize(("flags", "state", "code"), [
    (("--max_iters", "2"), "COMPLETED", "0:0"),
    (("--epochs", "0"), "FAILED", "2:0"),  # a user error: exit 2
])
def test_a_job_that_ends_is_not_requeued(slurm, synthetic_dataset, tmp_path, system, flags, state, code):
    environ = job_env(slurm, synthetic_dataset, tmp_path / "logs", system)
    out = tmp_path / "job.out"
    job_id = submit(environ, out, *flags)
    fields = wait_for(job_id, environ, finished, timeout=300)
    log = out.read_text()
    assert fields["JobState"] == state and fields["ExitCode"] == code, (fields, log[-3000:])
    assert fields["Restarts"] == "0" and "requeueing" not in log

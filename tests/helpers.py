"""What test modules share (no test module imports another): how the end-to-end tests launch the trainer on the
generated data set and read what it wrote, and a model wrapper that notes its calls."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
CPU_TEST_CONFIG = str(REPO / "ds_configs" / "cpu_test_fp32.json")


def train_args(data, run_dir, *extra):
    """Trainer flags for a small, quick CPU run of the demo preset on `data`, writing to `run_dir`."""
    return ["--preset", "demo", "--data", str(data), "--synthetic", "false", "--run_dir", str(run_dir),
            "--deepspeed_config", CPU_TEST_CONFIG, "--workers", "1", "--threads", "1", "--progress", "false",
            "--warmup_iters", "4", "--lr_per_32", "1e-2", *extra]


def env(**extra):
    """The environment of a launched trainer: this checkout importable, CPU accelerator, the venv's `deepspeed`."""
    return dict(os.environ, PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="",
                PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra)


def free_port() -> int:
    """A port nothing listens on once the probing socket is closed (a fresh master port, or a closed one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(run_dir):
    """The records of a run's metrics.jsonl."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def run_train(args, check=True, timeout=600, **environ):
    """The trainer in its own process with `args` (and `environ` added to its environment)."""
    proc = subprocess.run([sys.executable, "-m", "ssd_ds.train", *args], cwd=REPO, env=env(**environ),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"trainer failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def losses(run_dir):
    """Per-iteration losses; for iterations logged twice (a resumed run) the later line wins."""
    return {m["iteration"]: m["loss"] for m in metrics(run_dir) if "iteration" in m}


def checker(log_file, cwd):
    """The official checker (it writes compliance_checker.log into its working directory)."""
    return subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage", "training",
                           "--ruleset", "0.7.0", str(log_file)], capture_output=True, text=True, env=env(), cwd=cwd)


class CallLog(torch.nn.Module):
    """The model, noting (batch size, training mode) of every call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, images):
        self.calls.append((images.shape[0], self.training))
        return self.model(images)

"""What the end-to-end tests share: how they launch the trainer on the generated data set, and read what it wrote."""

import json
import os
import socket
import sys
from pathlib import Path

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

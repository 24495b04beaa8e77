"""`--preset custom` as a user runs it on a COCO-laid-out set of their own: it trains the cpu_160_s4 model (BatchNorm
in its extra blocks, a stride-4 level), and its checkpoint rebuilds that model for predict, evaluate and export."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from ssd_ds.inference import load_inference
from tests.helpers import REPO, env, run_train


@pytest.mark.slow
def test_custom_preset_trains_cpu_160_s4_and_its_checkpoint_rebuilds_it(synthetic_dataset, tmp_path):
    run_dir = tmp_path / "run"
    run_train(["--preset", "custom", "--data", str(synthetic_dataset), "--run_dir", str(run_dir), "--epochs", "1",
               "--eval_epochs", "1", "--decay_epochs", "", "--threads", "1", "--progress", "false"])
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["preset"], config["model"], config["synthetic"]) == ("custom", "cpu_160_s4", False)
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("eval_epoch") == 1 and r.get("stats") for r in evals)
    model, meta = load_inference(run_dir)
    assert (meta["model"], meta["input_size"]) == ("cpu_160_s4", 160)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.extras.modules()) and model.stride4 is not None
    with torch.no_grad():
        locs, logits = model(torch.rand(1, 3, 160, 160))
    assert locs.shape == (1, 5620, 4) and logits.shape[:2] == (1, 5620)
    # The ONNX export traces the stride-4 level's upsampling and checks its detections against PyTorch's.
    output = tmp_path / "model.onnx"
    proc = subprocess.run([sys.executable, "-m", "ssd_ds.export", "--checkpoint", str(run_dir), "--format", "onnx",
                           "--output", str(output)], cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "detections match the PyTorch model's" in proc.stdout

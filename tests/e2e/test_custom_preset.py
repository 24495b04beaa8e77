"""`--preset custom` as a user runs it on a COCO-laid-out set of their own: it trains the cpu_160 model (BatchNorm in
its extra blocks), and its checkpoint rebuilds that model for predict and evaluate."""

import json

import pytest
import torch
from torch import nn

from ssd_ds.inference import load_inference
from tests.helpers import run_train


@pytest.mark.slow
def test_custom_preset_trains_cpu_160_and_its_checkpoint_rebuilds_it(synthetic_dataset, tmp_path):
    run_dir = tmp_path / "run"
    run_train(["--preset", "custom", "--data", str(synthetic_dataset), "--run_dir", str(run_dir), "--epochs", "1",
               "--eval_epochs", "1", "--decay_epochs", "", "--threads", "1", "--progress", "false"])
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["preset"], config["model"], config["synthetic"]) == ("custom", "cpu_160", False)
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("eval_epoch") == 1 and r.get("stats") for r in evals)
    model, meta = load_inference(run_dir)
    assert (meta["model"], meta["input_size"]) == ("cpu_160", 160)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.extras.modules())
    with torch.no_grad():
        locs, logits = model(torch.rand(1, 3, 160, 160))
    assert locs.shape == (1, 2420, 4) and logits.shape[:2] == (1, 2420)

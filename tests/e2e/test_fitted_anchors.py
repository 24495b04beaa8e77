"""A run trained with fitted default boxes (--anchor_scales): its checkpoint carries them, and predict, evaluate and
export decode with them, not with the preset's."""

import json
import subprocess
import sys

import pytest
import torch

from ssd_ds.anchors import default_boxes_cxcywh, default_boxes_ltrb
from ssd_ds.inference import INFERENCE_FILE
from ssd_ds.model_config import build_model_config
from tests.helpers import REPO, env, metrics, run_train, train_args

FITTED = (17.9, 38.7, 59.4, 80.1, 100.9, 121.6)  # what `ssd_ds.data.check --fit` proposes for the demo's data


@pytest.fixture(scope="module")
def fitted_run(synthetic_dataset, tmp_path_factory):
    """A one-epoch run with fitted scales, evaluated at its end, with its checkpoint."""
    run_dir = tmp_path_factory.mktemp("fitted") / "run"
    run_train(train_args(synthetic_dataset, run_dir, "--epochs", "1", "--eval_epochs", "1", "--log_every", "2",
                         "--anchor_scales", ",".join(map(str, FITTED))))
    return run_dir


def fitted_boxes_ltrb():
    return default_boxes_ltrb(build_model_config("cpu_small", anchor_scales=FITTED).anchors)


@pytest.mark.slow
def test_the_checkpoint_and_the_run_config_carry_the_scales(fitted_run):
    assert json.loads((fitted_run / "config.json").read_text())["anchor_scales"] == list(FITTED)
    tag = (fitted_run / "checkpoints" / "latest").read_text().strip()
    raw = torch.load(fitted_run / "checkpoints" / tag / INFERENCE_FILE, weights_only=True)
    assert raw["format"] == 2 and raw["anchor_scales"] == list(FITTED)


@pytest.mark.slow
def test_predict_decodes_with_the_fitted_boxes(fitted_run, synthetic_dataset, tmp_path, monkeypatch):
    from ssd_ds import predict

    coders = []

    def noting_detect_batch(model, images, coder, *args, **kwargs):
        coders.append(coder)
        return detect_batch(model, images, coder, *args, **kwargs)

    detect_batch = predict.detect_batch
    monkeypatch.setattr(predict, "detect_batch", noting_detect_batch)
    predict.main(["--checkpoint", str(fitted_run), "--input", str(synthetic_dataset / "val2017"), "--output",
                  str(tmp_path / "out"), "--batch", "8"])
    assert coders and all(torch.equal(c.dboxes_ltrb, fitted_boxes_ltrb()) for c in coders)
    assert not torch.equal(fitted_boxes_ltrb(), default_boxes_ltrb(build_model_config("cpu_small").anchors))


@pytest.mark.slow
def test_evaluate_gives_the_trainers_figure(fitted_run, synthetic_dataset):
    """The trainer evaluated with the fitted boxes: the same AP from `ssd_ds.evaluate` says it decodes with them."""
    trainer_ap = [m for m in metrics(fitted_run) if "eval_epoch" in m][-1]["stats"]["AP"]
    proc = subprocess.run([sys.executable, "-m", "ssd_ds.evaluate", "--checkpoint", str(fitted_run), "--data",
                           str(synthetic_dataset), "--workers", "1"], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.strip().startswith("AP "))
    assert float(line.split()[-1]) == pytest.approx(trainer_ap, abs=5e-5) and trainer_ap > 0


@pytest.mark.slow
def test_export_embeds_the_fitted_boxes(fitted_run, tmp_path):
    from ssd_ds import export

    output = tmp_path / "model.pt2"
    export.main(["--checkpoint", str(fitted_run), "--format", "exported_program", "--output", str(output)])
    extra = {"ssd_ds.json": ""}
    program = torch.export.load(str(output), extra_files=extra)
    want = default_boxes_cxcywh(build_model_config("cpu_small", anchor_scales=FITTED).anchors)
    assert torch.allclose(program.state_dict["dboxes_cxcywh"], want, atol=1e-6)
    assert json.loads(extra["ssd_ds.json"])["anchor_scales"] == list(FITTED)

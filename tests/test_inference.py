"""Using a trained model: the inference checkpoint beside every DeepSpeed checkpoint, and `python -m ssd_ds.evaluate`
giving the trainer's own figure for it."""

import subprocess
import sys

import pytest
import torch

from ssd_ds.checkpoint import INFERENCE_FILE, load_inference
from tests.helpers import REPO, env, metrics, train_args
from tests.test_train import run_train


@pytest.fixture(scope="module")
def trained(synthetic_dataset, tmp_path_factory):
    """A one-epoch run evaluated at its end (fp32), with its checkpoint."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    run_train(train_args(synthetic_dataset, run_dir, "--epochs", "1", "--eval_epochs", "1", "--log_every", "2"))
    return run_dir


def evaluate(*args):
    return subprocess.run([sys.executable, "-m", "ssd_ds.evaluate", *map(str, args)], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=600)


def test_checkpoint_carries_what_inference_needs(trained, synthetic_dataset):
    from ssd_ds.data.coco import CocoDetection

    tag = (trained / "checkpoints" / "latest").read_text().strip()
    raw = torch.load(trained / "checkpoints" / tag / INFERENCE_FILE, weights_only=True)  # no DeepSpeed needed
    val = CocoDetection(synthetic_dataset, "val")
    assert raw["model"] == "cpu_small" and raw["input_size"] == 128 and raw["autocast"] is None
    assert raw["class_names"] == val.class_names and raw["class_names"][0] == "background"
    assert raw["label_to_category"] == val.label_to_category
    model, meta = load_inference(trained)  # a run directory resolves to its latest checkpoint
    assert not model.training and "state_dict" not in meta
    images = torch.rand(2, 3, 128, 128)
    locs, logits = model(images)
    assert locs.shape[:2] == logits.shape[:2] and logits.shape[2] == len(val.class_names)


def test_evaluate_gives_the_trainers_figure(trained, synthetic_dataset):
    trainer_ap = [m for m in metrics(trained) if "eval_epoch" in m][-1]["stats"]["AP"]
    proc = evaluate("--checkpoint", trained, "--data", synthetic_dataset, "--workers", "1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.strip().startswith("AP "))
    assert float(line.split()[-1]) == pytest.approx(trainer_ap, abs=5e-5) and trainer_ap > 0


def test_missing_or_foreign_checkpoint_is_a_clear_error(trained, synthetic_dataset, tmp_path):
    proc = evaluate("--checkpoint", tmp_path / "absent", "--data", synthetic_dataset)
    assert proc.returncode == 2 and f"error: {tmp_path / 'absent'}: no model.pt there" in proc.stderr
    model, meta = load_inference(trained)
    foreign = tmp_path / "foreign.pt"
    torch.save({**meta, "model": "mlperf", "input_size": 300, "state_dict": model.state_dict()}, foreign)
    proc = evaluate("--checkpoint", foreign, "--data", synthetic_dataset)
    assert proc.returncode == 2 and "foreign.pt: weights do not fit model preset 'mlperf'" in proc.stderr


def test_predict_draws_images_and_writes_results_pycocotools_loads(trained, synthetic_dataset, tmp_path):
    import json
    import shutil

    from pycocotools.coco import COCO

    images = tmp_path / "images"
    shutil.copytree(synthetic_dataset / "val2017", images)
    (images / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "ssd_ds.predict", "--checkpoint", str(trained), "--input",
                           str(images), "--output", str(out), "--score", "0.05", "--batch", "4"],
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "skipped unreadable image" in proc.stdout and "broken.jpg" in proc.stdout
    originals = sorted(p for p in (synthetic_dataset / "val2017").iterdir())
    assert sorted(p.stem for p in out.glob("*.png")) == [p.stem for p in originals]
    results = json.loads((out / "detections.json").read_text())
    assert results and all(r["score"] > 0.05 for r in results)
    gt = COCO(str(synthetic_dataset / "annotations" / "instances_val2017.json"))
    loaded = gt.loadRes([{k: r[k] for k in ("image_id", "bbox", "score", "category_id")} for r in results])
    assert len(loaded.getAnnIds()) == len(results)

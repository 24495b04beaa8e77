"""Using a trained model: the inference checkpoint beside every DeepSpeed checkpoint, and `python -m ssd_ds.evaluate`
giving the trainer's own figure for it."""

import subprocess
import sys

import pytest
import torch

from ssd_ds.inference import INFERENCE_FILE, load_inference
from tests.helpers import REPO, env, metrics, run_train, train_args


@pytest.fixture(scope="module")
def trained(synthetic_dataset, tmp_path_factory):
    """A one-epoch run evaluated at its end (fp32), with its checkpoint."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    run_train(train_args(synthetic_dataset, run_dir, "--epochs", "1", "--eval_epochs", "1", "--log_every", "2"))
    return run_dir


def evaluate(*args):
    return subprocess.run([sys.executable, "-m", "ssd_ds.evaluate", *map(str, args)], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
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


@pytest.mark.slow
def test_evaluate_gives_the_trainers_figure(trained, synthetic_dataset):
    trainer_ap = [m for m in metrics(trained) if "eval_epoch" in m][-1]["stats"]["AP"]
    proc = evaluate("--checkpoint", trained, "--data", synthetic_dataset, "--workers", "1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.strip().startswith("AP "))
    assert float(line.split()[-1]) == pytest.approx(trainer_ap, abs=5e-5) and trainer_ap > 0
    # then the per-class table, the error breakdown and the confusion summary, printed and written beside it
    for heading in ("per class, worst first", "errors (TIDE", "confusion:", f"written to {trained / 'evaluate'}"):
        assert heading in proc.stdout, heading
    ours = {r[0]: r for r in (line.split(",") for line in (trained / "evaluate" / "per_class.csv").read_text()
                                                           .splitlines()[1:])}
    trainers = {r[0]: r for r in (line.split(",") for line in (trained / "eval" / "epoch_1_per_class.csv").read_text()
                                                               .splitlines()[1:])}
    assert ours.keys() == trainers.keys() and all(ours[c][8] == trainers[c][8] for c in ours)  # the same #gt
    assert all(float(ours[c][2] or 0) == pytest.approx(float(trainers[c][2] or 0), abs=5e-5) for c in ours)
    assert (trained / "evaluate" / "pr_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_trainer_evaluation_writes_the_report_and_tensorboard_shows_it(trained):
    """The background evaluation's report and per-class CSV in eval/, and in the TensorBoard event files: every eval
    group at the iteration of the evaluated weights (on the loss's axis), per-class AP and the errors' dAP as groups
    of their own, the PR curves equal to the report's (COCOeval's precision), the tables as text, the images."""
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.util.tensor_util import make_ndarray

    from ssd_ds.eval_report import ERROR_TYPES, PR_IOUS, pr_key

    record = [m for m in metrics(trained) if "eval_epoch" in m][-1]
    report = json.loads((trained / "eval" / "epoch_1.json").read_text())
    assert report["stats"] == record["stats"] and report["errors"] is not None
    csv_lines = (trained / "eval" / "epoch_1_per_class.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in csv_lines[1:]] == [row["class"] for row in report["per_class"]]
    events = EventAccumulator(str(trained / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    events.Reload()
    step = record["submitted_at"]
    assert step == max(e.step for e in events.Scalars("train/loss"))  # evaluated at the epoch's last iteration
    assert [(e.step, e.value) for e in events.Scalars("eval/stats/AP")] == [(step, pytest.approx(
        record["stats"]["AP"], rel=1e-6))]
    assert [e.value for e in events.Scalars("eval/eval_epoch")] == [1]
    per_class = {row["class"]: row["AP"] for row in report["per_class"] if row["AP"] is not None}
    assert per_class
    for name, ap in per_class.items():
        assert [(e.step, e.value) for e in events.Scalars(f"per_class_AP/{name}")] == [(step, pytest.approx(ap))]
    for kind in ERROR_TYPES:
        assert events.Scalars(f"errors_dAP/{kind}")[0].value == pytest.approx(report["errors"]["dAP"][kind])
    pr_tags = events.PluginTagToContent("pr_curves")
    for iou in PR_IOUS:
        curves = report["pr_curves"][pr_key(iou)]
        assert set(pr_tags) >= {f"pr_{pr_key(iou)}/{name}" for name in curves} and "all" in curves
        for name, precision in curves.items():
            (event,) = events.Tensors(f"pr_{pr_key(iou)}/{name}")
            data = make_ndarray(event.tensor_proto)  # rows: tp, fp, tn, fn, precision, recall
            assert event.step == step and data.shape == (6, 101)
            assert data[4] == pytest.approx(precision, abs=1e-6)
            assert data[5] == pytest.approx(report["pr_curves"]["recall"], abs=1e-6)
    texts = events.PluginTagToContent("text")
    assert {f"eval/{tag}/text_summary" for tag in ("per_class", "errors", "confusion")} <= set(texts)
    images = events.Images("val/image_0")
    assert images[0].step == step and images[0].width >= 384
    # `tensorboard --logdir` at the directory of run directories: one run per run directory, named after it
    assert set(EventMultiplexer().AddRunsFromDirectory(str(trained.parent)).Runs()) == {f"{trained.name}/tensorboard"}


@pytest.mark.slow
def test_evaluate_sharded_over_two_ranks_gives_the_same_figure(trained, synthetic_dataset):
    from tests.helpers import free_port

    trainer_stats = [m for m in metrics(trained) if "eval_epoch" in m][-1]["stats"]
    proc = subprocess.run(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), "--module",
                           "ssd_ds.evaluate", "--checkpoint", str(trained), "--data", str(synthetic_dataset),
                           "--workers", "1", "--batch", "8"], cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "on 2 rank(s)" in proc.stdout
    printed = {line.split()[0]: float(line.split()[-1]) for line in proc.stdout.splitlines()
               if line.strip() and line.split()[0] in trainer_stats}
    assert printed.keys() == trainer_stats.keys()
    assert all(printed[k] == pytest.approx(trainer_stats[k], abs=5e-5) for k in printed), (printed, trainer_stats)


@pytest.mark.slow
def test_missing_or_foreign_checkpoint_is_a_clear_error(trained, synthetic_dataset, tmp_path):
    proc = evaluate("--checkpoint", tmp_path / "absent", "--data", synthetic_dataset)
    assert proc.returncode == 2 and f"error: {tmp_path / 'absent'}: no model.pt there" in proc.stderr
    model, meta = load_inference(trained)
    foreign = tmp_path / "foreign.pt"
    torch.save({**meta, "model": "mlperf", "input_size": 300, "state_dict": model.state_dict()}, foreign)
    proc = evaluate("--checkpoint", foreign, "--data", synthetic_dataset)
    assert proc.returncode == 2 and "foreign.pt: weights do not fit model preset 'mlperf'" in proc.stderr
    other_ids = tmp_path / "other_ids.pt"  # the same model trained on another data set's categories
    torch.save({**meta, "label_to_category": {k: v + 100 for k, v in meta["label_to_category"].items()},
                "state_dict": model.state_dict()}, other_ids)
    proc = evaluate("--checkpoint", other_ids, "--data", synthetic_dataset)
    assert proc.returncode == 2 and "instances_val2017.json: its categories are not the checkpoint's" in proc.stderr


@pytest.mark.slow
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


def val_images(synthetic_dataset, count: int, size: int = 128) -> torch.Tensor:
    from ssd_ds.data.coco import CocoDetection
    from ssd_ds.data.transforms import EvalTransform

    val = CocoDetection(synthetic_dataset, "val", transform=EvalTransform(size))
    return torch.stack([val[i][0] for i in range(count)])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "exported_program"])
def test_export_gives_the_evaluations_detections(trained, synthetic_dataset, tmp_path, fmt):
    """The exported file (run by onnxruntime, or loaded as an ExportedProgram) on real images at batch sizes other
    than the one exported with equals the trainer's evaluation of the same images (ssd_ds.inference.detect_batch)."""
    import json

    from ssd_ds.data.transforms import normalize_images
    from ssd_ds.export import compare, run_exported
    from ssd_ds.inference import detect_batch, inference_ops

    output = tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'pt2'}"
    proc = subprocess.run([sys.executable, "-m", "ssd_ds.export", "--checkpoint", str(trained), "--format", fmt,
                           "--output", str(output)], cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "detections match the PyTorch model's" in proc.stdout
    model, meta = load_inference(trained)
    ops, _ = inference_ops(meta, torch.device("cpu"))
    images = val_images(synthetic_dataset, 4)
    for batch in (images[:1], images[1:4]):
        want = detect_batch(model, batch, ops.coder, torch.device("cpu"))
        got = run_exported(fmt, output, normalize_images(batch))
        assert [t.shape for t in got] == [t.shape for t in want]
        report = compare(got, want)
        assert report["detections"] > 0 and report["matched"] == report["detections"] and report["counts_equal"]
    if fmt == "onnx":
        import onnx

        stored = {p.key: p.value for p in onnx.load(str(output)).metadata_props}["ssd_ds"]
    else:
        extra = {"ssd_ds.json": ""}
        torch.export.load(str(output), extra_files=extra)
        stored = extra["ssd_ds.json"]
    stored = json.loads(stored)
    assert stored["class_names"] == meta["class_names"] and stored["input_size"] == 128
    assert {int(k): v for k, v in stored["label_to_category"].items()} == meta["label_to_category"]


def test_onnx_nms_equals_the_trainers_nms(tmp_path):
    """ONNX's NonMaxSuppression, which the ONNX export runs, keeps what the trainer's NMS keeps: random boxes and
    scores over several images and classes, with ties of score and of box."""
    import onnxruntime

    from ssd_ds.export import _onnx_multiclass_nms, multiclass_nms

    class NMS(torch.nn.Module):
        def forward(self, boxes, scores):
            return torch.ops.ssd_ds.multiclass_nms(boxes, scores, 0.5, 0.05)

    generator = torch.Generator().manual_seed(0)
    for ties in (False, True):
        xy = torch.rand(3, 500, 2, generator=generator)
        boxes = torch.cat([xy, xy + 0.05 + 0.3 * torch.rand(3, 500, 2, generator=generator)], dim=-1)
        scores = torch.rand(3, 4, 500, generator=generator)
        if ties:
            boxes, scores = (boxes * 16).round() / 16, (scores * 20).round() / 20
        want = multiclass_nms(boxes, scores, 0.5, 0.05)
        path = tmp_path / f"nms_{ties}.onnx"
        torch.onnx.export(NMS().eval(), (boxes, scores), dynamo=True, custom_translation_table=_onnx_multiclass_nms(),
                          input_names=["boxes", "scores"], verbose=False).save(str(path))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"boxes": boxes.numpy(), "scores": scores.numpy()})[0]
        assert len(want) > 100
        assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, want.tolist())), ties


@pytest.mark.parametrize("fmt", ["onnx", "exported_program"])
def test_export_runs_on_batches_with_no_or_one_candidate(tmp_path, fmt):
    """A batch with no candidate or a single one above the threshold gives empty or one-row detections, as PyTorch
    does (torchvision's fake nms declares at least two kept boxes: an export would assert that at run time)."""
    from ssd_ds.export import Detector, export, run_exported

    A, C = 50, 4

    class ScoresFromPixels(torch.nn.Module):
        """A stand-in model whose scores are the input's pixels: logits[b, a, c] = 10 * images[b, 0, a, c]."""

        def forward(self, images):
            return images[:, 1, :A, :4] * 0.1, images[:, 0, :A, :C] * 10

    generator = torch.Generator().manual_seed(0)
    dboxes = torch.cat([torch.rand(A, 2, generator=generator), torch.full((A, 2), 0.2)], dim=-1)
    meta = {"model": "stub", "input_size": 64, "class_names": list("bxyz"), "label_to_category": {1: 1, 2: 2, 3: 3}}
    output = tmp_path / f"stub.{'onnx' if fmt == 'onnx' else 'pt2'}"
    export(Detector(ScoresFromPixels(), dboxes, onnx_nms=fmt == "onnx").eval(), fmt, output,
           torch.randn(2, 3, 64, 64, generator=generator), meta)
    reference = Detector(ScoresFromPixels(), dboxes, onnx_nms=False).eval()
    for candidates in (0, 1, 2, 6):
        images = torch.zeros(3, 3, 64, 64)
        images[:, 0, :, 0] = 1.0  # background everywhere...
        images[0, 0, :candidates, 1] = 2.0 + 0.01 * torch.arange(candidates)  # ...but for `candidates` anchors of
        # class 1 in image 0, scores distinct (equal scores may come out in another order)
        got = run_exported(fmt, output, images)
        with torch.no_grad():
            want = reference(images)
        assert got[3].tolist() == want[3].tolist() and want[3][1:].tolist() == [0, 0]
        assert (want[3][0] > 0) == (candidates > 0)
        assert torch.allclose(got[0], want[0], atol=1e-6) and torch.equal(got[2], want[2])

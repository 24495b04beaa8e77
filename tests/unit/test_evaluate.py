import json
import time

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssd_ds.coco_eval import STAT_NAMES, BackgroundEvaluator, coco_eval
from ssd_ds.data.coco import CocoDetection
from ssd_ds.data.loaders import build_eval_loader
from ssd_ds.data.transforms import EvalTransform
from ssd_ds.device_ops import build_device_ops
from ssd_ds.inference import detect_batch, infer_detections
from ssd_ds.model import build_model
from ssd_ds.model_config import cpu_small
from tests.helpers import CallLog


def fake_detections(ann_file, seed=0):
    """Jittered ground truth plus random false positives, as COCO result dicts and as the [N,7] array."""
    rng = np.random.default_rng(seed)
    gt = json.loads(open(ann_file).read())
    records = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        if rng.random() < 0.2:
            continue
        jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
        records.append({"image_id": ann["image_id"], "bbox": [x + jitter[0], y + jitter[1], w + jitter[2],
                        h + jitter[3]], "score": float(rng.random()), "category_id": ann["category_id"]})
    cats = [c["id"] for c in gt["categories"]]
    for img in gt["images"][:10]:
        records.append({"image_id": img["id"], "bbox": [10.0, 10.0, 30.0, 40.0], "score": float(rng.random()),
                        "category_id": int(rng.choice(cats))})
    array = np.array([[r["image_id"], *r["bbox"], r["score"], r["category_id"]] for r in records])
    return records, array


def direct_pycocotools(ann_file, records):
    gt = COCO(ann_file)
    evaluator = COCOeval(gt, gt.loadRes(records), iouType="bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats


@pytest.mark.parametrize("backend", ["pycocotools", "faster", "hotcoco"])
def test_coco_eval_equals_direct_pycocotools(synthetic_dataset, backend):
    """Each backend's twelve numbers are pycocotools' own on the same detections (hotcoco, the default, and
    faster-coco-eval are Rust and C++ implementations of the same algorithm: identical AP is checked here, not
    assumed)."""
    ann_file = str(synthetic_dataset / "annotations" / "instances_val2017.json")
    for seed in range(3):
        records, array = fake_detections(ann_file, seed)
        ours = coco_eval(ann_file, array, backend)
        want = direct_pycocotools(ann_file, records)
        assert 0.2 < ours["AP"] < 0.99  # a meaningful, non-trivial value
        assert [ours[k] for k in STAT_NAMES] == pytest.approx(list(want), abs=1e-12), (backend, seed)
    with pytest.raises(ValueError, match="COCOeval backend"):
        coco_eval(ann_file, array, "fast")


@pytest.mark.slow
def test_background_evaluator_survives_a_killed_worker(synthetic_dataset, tmp_path):
    ann_file = synthetic_dataset / "annotations" / "instances_val2017.json"
    _, array = fake_detections(str(ann_file))
    evaluator = BackgroundEvaluator(ann_file, tmp_path)
    evaluator.submit(1, array)
    evaluator.pending[0].process.kill()
    assert evaluator.wait(timeout=60) == [(1, None)]
    evaluator.submit(2, array)
    results = evaluator.wait(timeout=120)
    assert results[0][0] == 2 and results[0][1]["stats"]["AP"] == pytest.approx(coco_eval(str(ann_file), array)["AP"])
    csv_classes = [line.split(",")[0] for line in (tmp_path / "epoch_2_per_class.csv").read_text().splitlines()[1:]]
    assert csv_classes == [row["class"] for row in results[0][1]["per_class"]] and len(csv_classes) == 6
    evaluator.close()


@pytest.mark.slow
def test_background_evaluator_does_not_block(synthetic_dataset, tmp_path):
    ann_file = synthetic_dataset / "annotations" / "instances_val2017.json"
    _, array = fake_detections(str(ann_file))
    evaluator = BackgroundEvaluator(ann_file, tmp_path)
    start = time.perf_counter()
    evaluator.submit(3, array)
    polled_empty = evaluator.poll() == []  # the worker is still importing: nothing yet, and no waiting
    assert time.perf_counter() - start < 1.0 and polled_empty
    work = 0
    while evaluator.pending:  # the caller keeps working while COCOeval runs
        torch.randn(64, 64) @ torch.randn(64, 64)
        work += 1
        evaluator.poll()
    assert work > 0
    evaluator.close()


@pytest.mark.slow
def test_padded_evaluation_detects_what_unpadded_does(synthetic_dataset):
    """`pad_to` (the compiled trainer's evaluation) runs the model at one batch size only, the last, partial batch
    filled up with black images, and gives exactly the detections of running each batch as it is."""
    val_set = CocoDetection(synthetic_dataset, "val", skip_to_next=False)
    cfg = cpu_small(num_classes=val_set.num_classes)
    val_set.transform = EvalTransform(cfg.input_size)
    loader = build_eval_loader(val_set, rank=0, world_size=1, batch_size=6, workers=0)
    ops = build_device_ops(cfg, torch.device("cpu"), "torch", "off")
    model = CallLog(build_model(cfg))
    runs = {}
    for pad_to in (None, 6):
        model.calls.clear()
        detections, seen, _, _ = infer_detections(model, loader, ops.coder, val_set.label_to_category,
                                                  torch.device("cpu"), memory_format=torch.channels_last,
                                                  pad_to=pad_to)
        runs[pad_to] = detections, seen, [size for size, _ in model.calls]
    (unpadded, seen, sizes), (padded, padded_seen, padded_sizes) = runs[None], runs[6]
    assert sizes[0] == 6 > sizes[-1] and padded_sizes == [6] * len(sizes)  # the last batch is partial, then padded
    assert padded_seen == seen and len(seen) == len(val_set)
    assert len(unpadded) > 0 and np.array_equal(padded, unpadded)
    model.eval()  # as infer_detections leaves it: in training mode BatchNorm would mix the images' statistics
    batches = [images for images, _, _, _ in loader]
    partial = batches[-1]
    want = detect_batch(model, partial, ops.coder, torch.device("cpu"))
    got = detect_batch(model, partial, ops.coder, torch.device("cpu"), pad_to=6)  # the padding's rows dropped
    assert [t.shape for t in got] == [t.shape for t in want] and all(map(torch.equal, got, want))
    with pytest.raises(ValueError, match="6 images do not fit pad_to=4"):
        detect_batch(model, batches[0], ops.coder, torch.device("cpu"), pad_to=4)

"""The evaluation report (ssd_ds.eval_report through ssd_ds.coco_eval.evaluate_report): the per-class table against
pycocotools evaluating one category at a time on a case whose answers are known, the PR curves against COCOeval's
accumulated precision, the TIDE breakdown on detections with one planted error of each kind, and what the trainer
writes to TensorBoard, read back from the event files."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssd_ds import eval_report as er
from ssd_ds.coco_eval import COCOEVAL_BACKENDS, evaluate_report
from ssd_ds.fileio import atomic_write
from tests.unit.test_evaluate import fake_detections

CATEGORIES = [{"id": 1, "name": "alpha"}, {"id": 5, "name": "beta"}, {"id": 7, "name": "gamma"},
              {"id": 9, "name": "delta"}]


def write_gt(path, boxes_by_image: dict[int, list[tuple[int, list[float]]]], crowd=()):
    """A COCO annotation file of 640x640 images with (category_id, xywh) boxes per image id (`crowd`: the
    (image id, box index) pairs that are crowd regions, iscrowd=1)."""
    anns = []
    for image_id, boxes in boxes_by_image.items():
        for i, (cat, box) in enumerate(boxes):
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": int((image_id, i) in crowd)})
    images = [{"id": i, "width": 640, "height": 640, "file_name": f"{i:012d}.jpg"} for i in boxes_by_image]
    atomic_write(path, json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return str(path)


def known_case(tmp_path):
    """Four classes with known per-class answers (areas: small < 32^2 < medium < 96^2 < large):
    alpha: a small and a large box, both found exactly: every AP 1, no medium box (None);
    beta: two medium boxes, one found exactly, one missed: recall 0.5 at precision 1, AP 51/101 at every IoU;
    gamma: one large box found at IoU 84/116 = 0.724: AP50 1, AP75 0, AP 5/10 (IoU 0.50 to 0.70 of ten);
    delta: no ground truth, one detection: no AP at all. A crowd region of beta is not counted."""
    gt = write_gt(tmp_path / "gt.json", {
        1: [(1, [10, 10, 20, 20]), (5, [200, 200, 50, 50])],
        2: [(1, [100, 100, 120, 120]), (7, [400, 400, 100, 100])],
        3: [(5, [300, 300, 50, 50]), (5, [0, 500, 100, 100])],
    }, crowd={(3, 1)})
    dets = np.array([[1, 10, 10, 20, 20, 0.9, 1], [2, 100, 100, 120, 120, 0.8, 1], [1, 200, 200, 50, 50, 0.7, 5],
                     [2, 416, 400, 100, 100, 0.6, 7], [3, 500, 10, 40, 40, 0.5, 9]], dtype=np.float64)
    want = {"alpha": {"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "APs": 1.0, "APm": None, "APl": 1.0, "gt": 2, "dets": 2},
            "beta": {**dict.fromkeys(("AP", "AP50", "AP75", "APm"), 51 / 101), "APs": None, "APl": None, "gt": 2,
                     "dets": 1},
            "gamma": {"AP": 0.5, "AP50": 1.0, "AP75": 0.0, "APs": None, "APm": None, "APl": 0.5, "gt": 1, "dets": 1},
            "delta": {**dict.fromkeys(er.PER_CLASS_STATS), "gt": 0, "dets": 1}}
    return gt, dets, want


def pycocotools_one_category(ann_file, dets, cat_id):
    """pycocotools' own summary with params.catIds = [cat_id]: its first six numbers, -1 (no ground truth) as None."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ann_file)
        evaluator = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
        evaluator.params.catIds = [cat_id]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [None if v == -1 else float(v) for v in evaluator.stats[:6]]


@pytest.mark.parametrize("backend", COCOEVAL_BACKENDS)
def test_per_class_table_matches_known_answers_and_pycocotools_per_category(tmp_path, backend):
    ann_file, dets, want = known_case(tmp_path)
    rows = evaluate_report(ann_file, dets, backend)["per_class"]
    assert [r["class"] for r in rows] == ["gamma", "beta", "alpha", "delta"]  # worst first, no ground truth last
    for row in rows:
        got = {k: row[k] for k in want[row["class"]]}
        assert got == pytest.approx(want[row["class"]], abs=1e-12), row["class"]
        reference = pycocotools_one_category(ann_file, dets, row["category_id"])
        assert [row[s] for s in er.PER_CLASS_STATS] == pytest.approx(reference, abs=1e-12), row["class"]


def test_per_class_csv_and_table_text(tmp_path):
    ann_file, dets, _ = known_case(tmp_path)
    rows = evaluate_report(ann_file, dets)["per_class"]
    er.write_per_class_csv(tmp_path / "per_class.csv", rows)
    lines = (tmp_path / "per_class.csv").read_text().splitlines()
    assert lines[0] == "class,category_id,AP,AP50,AP75,APs,APm,APl,gt,dets"
    assert lines[1] == "gamma,7,0.500000,1.000000,0.000000,,,0.500000,1,1"
    assert lines[4] == "delta,9,,,,,,,0,1"
    text = er.format_per_class(rows).splitlines()
    assert text[1].split() == ["gamma", "0.500", "1.000", "0.000", "-", "-", "0.500", "1", "1"]


def test_pr_curves_are_cocoevals_accumulated_precision(synthetic_dataset):
    """Per class and overall, at IoU 0.50 and 0.75: the report's curves are pycocotools' own `eval["precision"]`
    (computed here independently), and the mean of the overall curve is AP50 / AP75."""
    ann_file = str(synthetic_dataset / "annotations" / "instances_val2017.json")
    records, array = fake_detections(ann_file, seed=1)
    report = evaluate_report(ann_file, array, "faster")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ann_file)
        evaluator = COCOeval(gt, gt.loadRes(records), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"]
    names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    curves = report["pr_curves"]
    assert curves["recall"] == pytest.approx(list(evaluator.params.recThrs))
    for t, iou, stat in ((0, 0.5, "AP50"), (5, 0.75, "AP75")):
        by_class = curves[er.pr_key(iou)]
        assert np.mean(by_class["all"]) == pytest.approx(evaluator.stats[1 if t == 0 else 2], abs=1e-12)
        assert np.mean(by_class["all"]) == pytest.approx(report["stats"][stat], abs=1e-12)
        with_gt = [k for k, c in enumerate(evaluator.params.catIds) if (precision[t, :, k, 0, 2] > -1).all()]
        assert set(by_class) == {"all"} | {names[evaluator.params.catIds[k]] for k in with_gt}
        for k in with_gt:
            assert by_class[names[evaluator.params.catIds[k]]] == pytest.approx(precision[t, :, k, 0, 2], abs=1e-12)
        assert by_class["all"] == pytest.approx(precision[t, :, :, 0, 2][:, with_gt].mean(axis=1), abs=1e-12)
    counts = er.pr_counts(curves["IoU0.50"]["all"], curves["recall"], curves["num_gt"]["all"])
    reached = (np.asarray(curves["IoU0.50"]["all"]) > 0) & (np.asarray(curves["recall"]) > 0)
    implied = counts["tp"][reached] / (counts["tp"][reached] + counts["fp"][reached])
    assert implied == pytest.approx(np.asarray(curves["IoU0.50"]["all"])[reached])


# TIDE's error kinds, planted one at a time beside detections that are right. Classes: alpha (1), beta (5). Scores:
# the errors above every right detection, so that each costs AP, and no two alike (AP with ties depends on their order).
RIGHT = {  # image -> (category, box) ground truth, each found exactly at score 0.5-0.6
    1: [(5, [500, 500, 60, 60])], 2: [(5, [500, 500, 60, 60])], 3: [(5, [500, 500, 60, 60]), (1, [20, 20, 80, 80])],
    4: [(1, [300, 20, 80, 80])],
}
PLANTED = {  # kind -> (ground truth added on image 5, detections added)
    "Cls": ([(1, [100, 100, 80, 80])], [[5, 100, 100, 80, 80, 0.99, 5]]),  # beta on an alpha box
    "Loc": ([(1, [100, 100, 80, 80])], [[5, 150, 100, 80, 80, 0.97, 1]]),  # alpha at IoU 30/130 = 0.23
    "Both": ([(1, [100, 100, 80, 80])],  # beta at IoU 0.23 on an alpha box found (else that box counts as missed)
             [[5, 100, 100, 80, 80, 0.55, 1], [5, 150, 100, 80, 80, 0.95, 5]]),
    "Dupe": ([(1, [100, 100, 80, 80])], [[5, 100, 100, 80, 80, 0.93, 1], [5, 104, 100, 80, 80, 0.92, 1]]),
    "Bkg": ([(1, [100, 100, 80, 80])], [[5, 100, 100, 80, 80, 0.54, 1], [5, 400, 400, 50, 50, 0.90, 5]]),
    "Miss": ([(1, [100, 100, 80, 80])], []),
}


def planted_case(tmp_path, kinds):
    boxes = {image: list(b) for image, b in RIGHT.items()}
    dets = [[image, *box, 0.6 - 0.01 * i, cat] for i, (image, b) in enumerate(boxes.items()) for cat, box in b]
    for n, kind in enumerate(kinds):
        image = 5 + n
        gt, planted = PLANTED[kind]
        boxes[image] = list(gt)
        dets += [[image, *d[1:]] for d in planted]
    return write_gt(tmp_path / "gt.json", boxes), np.array(dets, dtype=np.float64)


@pytest.mark.parametrize("kind", er.ERROR_TYPES)
def test_each_planted_error_lands_in_its_own_kind(tmp_path, kind):
    ann_file, dets = planted_case(tmp_path, [kind])
    errors = evaluate_report(ann_file, dets, "faster")["errors"]
    assert errors["count"] == {t: int(t == kind) for t in er.ERROR_TYPES}
    assert errors["dAP"][kind] > 0.01
    assert all(errors["dAP"][t] == 0 for t in er.ERROR_TYPES if t != kind)


def test_all_planted_errors_together(tmp_path):
    ann_file, dets = planted_case(tmp_path, er.ERROR_TYPES)
    report = evaluate_report(ann_file, dets, "hotcoco")
    assert report["errors"]["count"] == dict.fromkeys(er.ERROR_TYPES, 1)
    assert all(report["errors"]["dAP"][t] > 0 for t in er.ERROR_TYPES)
    assert report["errors"]["AP50"] == pytest.approx(report["stats"]["AP50"])  # TIDE's baseline is COCO's AP50
    confusion = report["confusion"]  # the Cls error: one of the 8 alpha boxes detected as beta, above the 0.3 score
    assert confusion["pairs"] == [{"gt": "alpha", "detected_as": "beta", "count": 1, "of_gt": pytest.approx(1 / 8)}]
    assert confusion["missed"]["alpha"] >= 1 and confusion["background"]["beta"] >= 1
    text = er.format_confusion(confusion)
    assert "alpha detected as beta: 1" in text


def test_no_detections_gives_zero_stats_and_an_empty_report(tmp_path):
    ann_file, _, _ = known_case(tmp_path)
    report = evaluate_report(ann_file, np.zeros((0, 7)))
    assert report["stats"]["AP"] == 0 and report["errors"] is None and report["pr_curves"] is None
    assert {r["class"]: r["AP"] for r in report["per_class"]} == {"alpha": 0, "beta": 0, "gamma": 0, "delta": None}

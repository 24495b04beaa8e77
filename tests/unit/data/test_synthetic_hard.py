"""The hard synthetic variant: a valid COCO set with K confusable classes, small and large objects, occlusion, made
deterministically; and the default variant untouched by it."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from ssd_ds.data import shapes_hard, synthetic
from ssd_ds.data.coco import CocoDetection
from ssd_ds.data.shapes import DrawParams, covered_fraction, shape_mask
from ssd_ds.data.shapes_hard import HardParams, hard_classes

NUM_TRAIN, NUM_VAL, SEED, K = 24, 8, 4, 16


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        return COCO(str(path))


def _iou(a, b) -> float:
    inter = covered_fraction(*a, b) * b[2] * b[3]
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hard") / "coco"
    return synthetic.generate(out, NUM_TRAIN, NUM_VAL, SEED, workers=1, hard_classes=K)


@pytest.fixture(scope="module")
def train(dataset) -> COCO:
    return _coco(dataset / "annotations" / "instances_train2017.json")


def test_every_class_is_a_distinct_shape_and_colour_and_some_pairs_share_one():
    classes = hard_classes(shapes_hard.MAX_CLASSES)
    pairs = {(c.name.split("_", 1)[1], c.colour) for c in classes}
    assert len(pairs) == len(classes) == len({c.name for c in classes}) == len({c.category_id for c in classes})
    first = hard_classes(K)
    assert len({c.colour for c in first}) < K and len({c.name.split("_", 1)[1] for c in first}) < K


def test_every_outline_fills_its_box_even_when_tiny():
    # The box recorded is the mask's extent: a shape must not vanish at a few pixels.
    for shape in hard_classes(shapes_hard.MAX_CLASSES):
        for side in (5, 9, 40):
            assert shape_mask(shape, side, side + 3).getbbox() == (0, 0, side, side + 3)
    for outline in shapes_hard.DISTRACTOR_OUTLINES:
        np.testing.assert_allclose([outline.min(axis=0), outline.max(axis=0)], [[0, 0], [1, 1]])


def test_coco_detection_reads_both_splits_with_the_k_class_names(dataset):
    names = {c.name for c in hard_classes(K)}
    for split in ("train", "val"):
        ds = CocoDetection(dataset, split)
        assert ds.num_classes == K + 1 and set(ds.class_names[1:]) == names
        image, boxes_ltrb, labels, _ = ds[0]
        assert boxes_ltrb.shape[1] == 4 and len(labels) == len(boxes_ltrb) >= 1
        assert int(labels.min()) >= 1 and int(labels.max()) <= K


def test_all_k_classes_appear(train):
    assert [c["name"] for c in train.dataset["categories"]] == [c.name for c in hard_classes(K)]
    assert {a["category_id"] for a in train.dataset["annotations"]} == {c.category_id for c in hard_classes(K)}


def test_object_sizes_span_two_to_eighty_five_percent_of_the_side(train):
    rel = []
    for ann in train.dataset["annotations"]:
        img = train.imgs[ann["image_id"]]
        rel.append(max(ann["bbox"][2:]) / min(img["width"], img["height"]))
    rel = np.array(rel)
    assert (rel < 0.05).mean() > 0.1 and (rel > 0.6).any()
    assert len(rel) >= 4 * NUM_TRAIN  # several objects an image


def test_objects_occlude_each_other(train):
    # Annotations are in drawing order: a later box covering 30-60% of an earlier one hides part of that object.
    high_iou = covering = 0
    for image_id in train.getImgIds():
        boxes = [a["bbox"] for a in train.loadAnns(train.getAnnIds(imgIds=image_id)) if not a["iscrowd"]]
        for i, earlier in enumerate(boxes):
            for later in boxes[i + 1 :]:
                high_iou += _iou(earlier, later) > 0.3
                covering += 0.3 <= covered_fraction(*later, earlier) <= 0.6
    # Placed at random with no aim at overlap (overlap=0), this set has 5 and 7: the aim is what makes these counts.
    assert high_iou >= 15 and covering >= NUM_TRAIN


def test_polygon_extent_is_the_box_and_the_top_object_has_its_colour(dataset, train):
    # The box is the drawn mask's extent; the polygon's vertices span the whole placement box, so the two agree
    # when the shape touches all four sides (to 1 px: a 4 px ring's corners fall in its hole). pycocotools checks
    # the area independently from 40 px up (below, its edge pixels and PIL's differ by over 10% of a star's or
    # ring's area). The last object drawn, uncovered, shows its class colour.
    colours = {c.category_id: np.array(c.colour) for c in hard_classes(K)}
    checked = 0
    for image_id in train.getImgIds():
        anns = [a for a in train.loadAnns(train.getAnnIds(imgIds=image_id)) if not a["iscrowd"]]
        for ann in anns:
            points = np.asarray(ann["segmentation"][0]).reshape(-1, 2)
            low, high = points.min(axis=0), points.max(axis=0)
            np.testing.assert_allclose([*low, *(high - low)], ann["bbox"], atol=1.0)
            if min(ann["bbox"][2:]) >= 40:
                assert abs(int(train.annToMask(ann).sum()) - ann["area"]) <= 0.1 * ann["area"]
        if anns and min(anns[-1]["bbox"][2:]) >= 12:
            pixels = np.asarray(Image.open(dataset / "train2017" / train.imgs[image_id]["file_name"]).convert("RGB"))
            mask = train.annToMask(anns[-1]).astype(bool)
            assert np.abs(np.median(pixels[mask], axis=0) - colours[anns[-1]["category_id"]]).max() < 45
            checked += 1
    assert checked >= NUM_TRAIN // 4


def test_same_seed_gives_identical_bytes_and_another_seed_differs(dataset, tmp_path):
    again = synthetic.generate(tmp_path / "again", NUM_TRAIN, NUM_VAL, SEED, workers=1, hard_classes=K)
    assert _files(again) == _files(dataset)
    other = synthetic.generate(tmp_path / "other", 2, 2, SEED + 1, workers=1, hard_classes=K)
    for name in ("annotations/instances_val2017.json", "train2017/000000000001.jpg"):
        assert (other / name).read_bytes() != (dataset / name).read_bytes()


def test_manifest_records_the_variant_and_reuse_with_other_settings_is_refused(dataset, monkeypatch):
    manifest = json.loads((dataset / synthetic.MANIFEST).read_text())
    assert manifest["variant"] == "hard" and manifest["draw"]["classes"] == K

    def no_generation(*args, **kwargs):
        raise AssertionError("a complete matching dataset must not be regenerated")

    monkeypatch.setattr(synthetic, "generate", no_generation)
    assert synthetic.ensure_synthetic(dataset, NUM_TRAIN, NUM_VAL, SEED, hard_classes=K) == dataset
    for classes in (K - 1, None):
        with pytest.raises(ValueError, match="not the requested"):
            synthetic.ensure_synthetic(dataset, NUM_TRAIN, NUM_VAL, SEED, hard_classes=classes)


def test_default_variant_never_touches_the_hard_code_and_keeps_its_manifest(tmp_path, monkeypatch):
    # Default data sets made before the hard variant must still be reused: same manifest keys, same drawing.
    def forbidden(*args, **kwargs):
        raise AssertionError("the default variant called the hard variant's code")

    monkeypatch.setattr(shapes_hard, "draw_hard_image", forbidden)
    monkeypatch.setattr(shapes_hard, "hard_classes", forbidden)
    root = synthetic.generate(tmp_path / "default", 3, 2, SEED, workers=1)
    manifest = json.loads((root / synthetic.MANIFEST).read_text())
    assert set(manifest) == {"format_version", "num_train", "num_val", "seed", "draw"}
    assert set(manifest["draw"]) == {f.name for f in fields(DrawParams)}
    doc = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    assert doc["info"]["description"] == "ssd_ds synthetic shapes, val2017"
    assert [c["name"] for c in doc["categories"]][0] == "red_circle" and len(doc["categories"]) == 6


def test_cli_hard_with_a_class_count(tmp_path, capsys):
    out = tmp_path / "cli"
    synthetic.main([str(out), "--hard", "--classes", "5", "--train", "3", "--val", "2", "--workers", "1"])
    assert "hard variant with 5 classes" in capsys.readouterr().out
    doc = json.loads((out / "annotations" / "instances_train2017.json").read_text())
    assert [c["name"] for c in doc["categories"]] == [c.name for c in hard_classes(5)]
    with pytest.raises(SystemExit):
        synthetic.main([str(tmp_path / "x"), "--classes", "5"])  # --classes without --hard


def test_bad_hard_parameters_are_rejected():
    for bad in ({"classes": 1}, {"classes": shapes_hard.MAX_CLASSES + 1}, {"min_objects": 0}, {"overlap": 1.5},
                {"max_cover": 0.2}):
        with pytest.raises(ValueError):
            HardParams(**bad)

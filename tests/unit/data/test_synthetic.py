"""The synthetic COCO-2017-style dataset: layout, format, determinism and atomic writing."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssd_ds.data import synthetic
from ssd_ds.data.shapes import CLASSES

# Enough images to pass MIN_IMAGES_FOR_WORKERS, so a run with workers=2 really uses worker processes.
NUM_TRAIN, NUM_VAL, SEED = 60, 10, 3


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        return COCO(str(path))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "coco"
    return synthetic.generate(out, NUM_TRAIN, NUM_VAL, SEED, workers=1)


@pytest.fixture(scope="module", params=synthetic.SPLITS)
def split(request, dataset) -> tuple[str, COCO]:
    return request.param, _coco(dataset / "annotations" / f"instances_{request.param}.json")


def test_same_seed_gives_identical_bytes_whatever_the_workers(dataset, tmp_path):
    again = synthetic.generate(tmp_path / "again", NUM_TRAIN, NUM_VAL, SEED, workers=2)
    first, second = _files(dataset), _files(again)
    assert sorted(first) == sorted(second)
    assert sum(name.endswith(".jpg") for name in first) == NUM_TRAIN + NUM_VAL
    assert all(first[name] == second[name] for name in first)


def test_different_seed_differs(dataset, tmp_path):
    other = synthetic.generate(tmp_path / "other", NUM_TRAIN, NUM_VAL, SEED + 1, workers=1)
    ann = "annotations/instances_val2017.json"
    assert (dataset / ann).read_bytes() != (other / ann).read_bytes()
    jpg = "train2017/000000000001.jpg"
    assert (dataset / jpg).read_bytes() != (other / jpg).read_bytes()


def test_layout_is_coco_2017(dataset):
    for name in ("train2017", "val2017"):
        assert (dataset / name).is_dir()
        assert (dataset / "annotations" / f"instances_{name}.json").is_file()
    assert len(list((dataset / "train2017").glob("*.jpg"))) == NUM_TRAIN
    assert len(list((dataset / "val2017").glob("*.jpg"))) == NUM_VAL
    assert not list(dataset.parent.glob(".*partial*"))


def test_categories_are_non_contiguous_coco_ids(split):
    _, coco = split
    ids = [c["id"] for c in coco.dataset["categories"]]
    assert ids == [c.category_id for c in CLASSES]
    assert ids != list(range(1, len(ids) + 1))
    assert len(set(c["name"] for c in coco.dataset["categories"])) == len(ids)
    assert {a["category_id"] for a in coco.dataset["annotations"]} <= set(ids)


def test_some_crowd_annotations_and_some_empty_images(split):
    _, coco = split
    anns = coco.dataset["annotations"]
    crowd = [a for a in anns if a["iscrowd"]]
    assert 1 <= len(crowd) < 0.1 * len(anns)
    empty = [i for i in coco.getImgIds() if not coco.getAnnIds(imgIds=i)]
    assert 1 <= len(empty) <= math.ceil(0.05 * len(coco.getImgIds()))
    for ann in crowd:  # RLE region: decodes to a mask of the stated area whose extent is the box
        rle = coco.annToRLE(ann)
        assert int(coco.annToMask(ann).sum()) == ann["area"]
        np.testing.assert_array_equal(np.asarray(ann["bbox"], dtype=float), mask_utils.toBbox(rle))


def test_boxes_lie_in_the_image_with_positive_size(split):
    _, coco = split
    for ann in coco.dataset["annotations"]:
        img = coco.imgs[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and ann["area"] > 0
        assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]


def test_objects_are_not_tiny(split):
    # At the 128x128 CPU input every object should span several pixels: >= 10% of the side is the design rule.
    _, coco = split
    for ann in coco.dataset["annotations"]:
        img = coco.imgs[ann["image_id"]]
        assert ann["bbox"][2] / img["width"] >= 0.07 and ann["bbox"][3] / img["height"] >= 0.07


def test_polygon_extent_is_the_box_and_its_area_the_area(split):
    # The box is the object's full extent: the polygon, rasterised independently by pycocotools, fills it.
    # pycocotools drops up to 2 px at the sharp tips of a diamond or triangle, hence the tolerance. The area
    # check also covers the ring, whose hole a keyhole polygon must cut out.
    _, coco = split
    for ann in coco.dataset["annotations"]:
        if ann["iscrowd"]:
            continue
        assert isinstance(ann["segmentation"], list) and len(ann["segmentation"][0]) >= 6
        poly_box = mask_utils.toBbox(coco.annToRLE(ann))
        np.testing.assert_allclose(poly_box, ann["bbox"], atol=2.0)
        assert abs(int(coco.annToMask(ann).sum()) - ann["area"]) <= 0.1 * ann["area"]


def test_jpegs_decode_at_the_listed_size(dataset, split):
    name, coco = split
    sizes = set()
    for img in coco.dataset["images"]:
        with Image.open(dataset / name / img["file_name"]) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            im.load()
            assert im.size == (img["width"], img["height"])
            sizes.add(im.size)
        assert 160 <= img["width"] <= 480 and 160 <= img["height"] <= 480
    assert len(sizes) > len(coco.dataset["images"]) // 2  # sizes and aspect ratios vary


def test_object_pixels_carry_the_class_colour(dataset):
    # The largest ordinary object of each val image: the median pixel under its polygon is near the class colour.
    coco = _coco(dataset / "annotations" / "instances_val2017.json")
    colours = {c.category_id: np.array(c.colour) for c in CLASSES}
    checked = 0
    for image_id in coco.getImgIds():
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id)) if not a["iscrowd"]]
        if not anns:
            continue
        top = anns[-1]  # drawn last, so nothing covers it
        img = coco.imgs[image_id]
        pixels = np.asarray(Image.open(dataset / "val2017" / img["file_name"]).convert("RGB"))
        mask = coco.annToMask(top).astype(bool)
        assert np.abs(np.median(pixels[mask], axis=0) - colours[top["category_id"]]).max() < 45
        checked += 1
    assert checked >= NUM_VAL // 2


def test_cocoeval_scores_the_ground_truth_as_perfect(split):
    _, coco = split
    results = [
        {"image_id": a["image_id"], "bbox": a["bbox"], "score": 1.0, "category_id": a["category_id"]}
        for a in coco.dataset["annotations"]
        if not a["iscrowd"]
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    write_split = synthetic._write_split

    def dies_on_val(root, split_code, *args):
        if split_code == 1:
            raise KeyboardInterrupt  # as if the run were stopped after writing train2017
        write_split(root, split_code, *args)

    monkeypatch.setattr(synthetic, "_write_split", dies_on_val)
    out = tmp_path / "coco"
    with pytest.raises(KeyboardInterrupt):
        synthetic.ensure_synthetic(out, 8, 4, SEED, workers=1)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the partial directory was removed too
    assert not synthetic.is_complete(out)


def test_killed_generation_is_not_taken_for_a_dataset(dataset, tmp_path):
    # A SIGKILL cannot clean up: a copy with everything but the manifest stands for what it could leave behind.
    broken = tmp_path / "coco"
    shutil.copytree(dataset, broken)
    (broken / synthetic.MANIFEST).unlink()
    assert synthetic.is_complete(dataset)
    assert not synthetic.is_complete(broken)
    with pytest.raises(FileExistsError, match="not a complete synthetic dataset"):
        synthetic.ensure_synthetic(broken, NUM_TRAIN, NUM_VAL, SEED, workers=1)


def test_ensure_reuses_a_matching_dataset_and_rejects_a_different_one(dataset, monkeypatch):
    def no_generation(*args, **kwargs):
        raise AssertionError("a complete matching dataset must not be regenerated")

    monkeypatch.setattr(synthetic, "generate", no_generation)
    assert synthetic.ensure_synthetic(dataset, NUM_TRAIN, NUM_VAL, SEED) == dataset
    with pytest.raises(ValueError, match="not the requested"):
        synthetic.ensure_synthetic(dataset, NUM_TRAIN, NUM_VAL, SEED + 1)
    manifest = json.loads((dataset / synthetic.MANIFEST).read_text())
    assert manifest["seed"] == SEED and manifest["num_train"] == NUM_TRAIN


def test_generate_fills_an_empty_directory_and_refuses_a_non_empty_one(tmp_path):
    (tmp_path / "empty").mkdir()
    assert synthetic.is_complete(synthetic.generate(tmp_path / "empty", 2, 2, SEED, workers=1))
    (tmp_path / "keep.txt").write_text("someone's data")
    with pytest.raises(FileExistsError):
        synthetic.generate(tmp_path, 2, 2, SEED, workers=1)
    assert (tmp_path / "keep.txt").read_text() == "someone's data"


def test_cli_writes_then_reuses(tmp_path, capsys):
    out = tmp_path / "cli"
    args = [str(out), "--train", "3", "--val", "2", "--seed", "5", "--min-size", "100", "--max-size", "120"]
    assert synthetic.main(args) == out
    assert "written" in capsys.readouterr().out
    images = _coco(out / "annotations" / "instances_train2017.json").dataset["images"]
    assert len(images) == 3 and all(100 <= i["width"] <= 120 and 100 <= i["height"] <= 120 for i in images)
    synthetic.main(args)
    assert "already present" in capsys.readouterr().out


def test_bad_parameters_are_rejected(tmp_path):
    with pytest.raises(ValueError):
        synthetic.generate(tmp_path / "a", 0, 2)
    with pytest.raises(ValueError):
        synthetic.generate(tmp_path / "b", 2, 2, min_size=300, max_size=200)

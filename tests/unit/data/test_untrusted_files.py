"""Annotation files written by other tools read safely (ssd_ds/data/annotations.py, ssd_ds/fileio.py): a
`file_name` pointing outside the image directory is dropped, counted and never opened; a file that starts with a
UTF-8 byte order mark is read; non-ASCII file names load."""

import builtins
import io
import json
import logging
import os
import pathlib
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ssd_ds.coco_eval import coco_eval
from ssd_ds.data.annotations import parse_coco, points_outside
from ssd_ds.data.coco import CocoDetection

SOURCE = pathlib.Path("/data/own/annotations/instances_train2017.json")
IMAGE_DIR = pathlib.Path("/data/own/train2017")
OUTSIDE = ["../../etc/hostname", "/etc/passwd", "..", "sub/../../x.jpg", "a/b/../../../x.jpg", "//etc/passwd"]
INSIDE = ["a.jpg", "sub/a.jpg", "sub/../a.jpg", "./a.jpg", "..a.jpg", "a..jpg", "...", "sub/..x/a.jpg"]


@pytest.mark.parametrize("name", OUTSIDE + INSIDE)
def test_points_outside_judges_the_name_alone(name):
    assert points_outside(name) == (name in OUTSIDE)


def two_images(second_name: str) -> dict:
    return {
        "images": [{"id": 1, "file_name": "sub/a.jpg", "width": 40, "height": 30},
                   {"id": 2, "file_name": second_name, "width": 40, "height": 30},
                   {"id": 3, "file_name": "b.jpg", "width": 40, "height": 30}],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [{"id": i, "image_id": image_id, "category_id": 1, "bbox": [1, 2, 10, 10]}
                        for i, image_id in enumerate([1, 2, 2, 3], start=1)],
    }


@pytest.mark.parametrize("name", OUTSIDE)
def test_an_image_pointing_outside_is_dropped_counted_and_named(name, caplog):
    with caplog.at_level(logging.WARNING, logger="ssd_ds.data.annotations"):
        records, _, stats = parse_coco(two_images(name), IMAGE_DIR, SOURCE)
    assert [r.image_id for r in records] == [1, 3] and records[0].path == IMAGE_DIR / "sub/a.jpg"
    assert stats.images_outside == 1 and stats.on_images_outside == 2
    assert stats.kept_boxes == 2 and stats.kept_boxes + stats.dropped_boxes == stats.annotations_in_json
    assert [r.getMessage() for r in caplog.records] == [
        f"{SOURCE}: 1 image(s) dropped, never opened: file_name points outside the image directory {IMAGE_DIR} "
        f"(first: images[1], id 2, file_name {name!r})"
    ]
    assert stats.summary() == (
        "2 images kept of 3 (0 without boxes, 1 outside the image directory dropped), 2 boxes of 4 "
        "(0 clipped to the image; dropped: 2 on images outside the image directory; 0 crowd kept)"
    )


class OpenWatch:
    """Every path handed to the ways ssd_ds and PIL open files, while installed."""

    def __init__(self, monkeypatch):
        self.paths: list[pathlib.Path] = []
        for owner, name in ((builtins, "open"), (io, "open"), (os, "open"), (Image, "open"),
                            (pathlib.Path, "read_bytes"), (pathlib.Path, "open")):
            monkeypatch.setattr(owner, name, self.wrap(getattr(owner, name)))

    def wrap(self, real):
        def watched(target, *args, **kwargs):
            if isinstance(target, (str, bytes, os.PathLike)):
                self.paths.append(pathlib.Path(os.fsdecode(target)).resolve())
            return real(target, *args, **kwargs)

        return watched


def test_images_pointing_outside_are_never_opened(dataset_copy, monkeypatch):
    """Each outside name points at a real, readable JPEG, so only the rule keeps it from being loaded."""
    ann_file = dataset_copy / "annotations" / "instances_train2017.json"
    data = json.loads(ann_file.read_text())
    first = data["images"][0]
    secret = dataset_copy.parent / "secret.jpg"  # beside the data set, reached by climbing out of train2017
    shutil.copyfile(dataset_copy / "train2017" / first["file_name"], secret)
    (dataset_copy / "train2017" / "sub").mkdir()  # the OS walks sub/.. only where sub exists
    names = ["../../secret.jpg", str(secret), f"sub/../../../{secret.name}"]
    for i, name in enumerate(names):
        image_id = 900_000 + i
        data["images"].append(dict(first, id=image_id, file_name=name))
        data["annotations"].append({"id": 900_000 + i, "image_id": image_id, "category_id": data["categories"][0]["id"],
                                    "bbox": [1, 1, 20, 20], "iscrowd": 0})
    ann_file.write_text(json.dumps(data))
    watch = OpenWatch(monkeypatch)
    for decode in (True, False):
        ds = CocoDetection(dataset_copy, "train", skip_to_next=False, decode=decode)
        assert ds.stats.images_outside == len(names) and ds.stats.on_images_outside == len(names)
        assert all(ds[i] is not None for i in range(len(ds)))
    assert secret.resolve() not in watch.paths
    # The watch saw the reads it should: the annotation file and every kept image, twice over.
    kept = {(dataset_copy / "train2017" / img["file_name"]).resolve() for img in data["images"]
            if img["id"] in {r.image_id for r in ds.records}}
    assert ann_file.resolve() in watch.paths and kept <= set(watch.paths)


def with_bom(path: pathlib.Path) -> pathlib.Path:
    """A copy of the JSON file with a UTF-8 byte order mark in front, as Windows tools write it."""
    bom = path.with_name(f"bom_{path.name}")
    bom.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    return bom


def test_an_annotation_file_with_a_byte_order_mark_is_read(dataset_copy):
    ann_file = dataset_copy / "annotations" / "instances_val2017.json"
    plain = CocoDetection(dataset_copy, "val")
    with_bom(ann_file).replace(ann_file)
    assert ann_file.read_bytes().startswith(b"\xef\xbb\xbf")
    bom = CocoDetection(dataset_copy, "val")
    assert bom.stats == plain.stats and bom.label_to_category == plain.label_to_category
    assert [r.path for r in bom.records] == [r.path for r in plain.records]


@pytest.mark.parametrize("backend", ["hotcoco", "faster", "pycocotools"])
def test_evaluation_reads_an_annotation_file_with_a_byte_order_mark(synthetic_dataset, tmp_path, backend):
    ann_file = synthetic_dataset / "annotations" / "instances_val2017.json"
    bom = with_bom(shutil.copyfile(ann_file, tmp_path / ann_file.name))
    gt = json.loads(ann_file.read_text())
    detections = np.array([[a["image_id"], *a["bbox"], 0.5 + 0.01 * (i % 7), a["category_id"]]
                           for i, a in enumerate(gt["annotations"]) if i % 3])
    assert coco_eval(str(bom), detections, backend) == coco_eval(str(ann_file), detections, backend)


def test_non_ascii_file_names_load(dataset_copy):
    ann_file = dataset_copy / "annotations" / "instances_val2017.json"
    data = json.loads(ann_file.read_text())
    img = data["images"][0]
    name = "Bilder/straße_画像_é.jpg"  # a subdirectory too: names inside the image directory stay allowed
    (dataset_copy / "val2017" / "Bilder").mkdir()
    (dataset_copy / "val2017" / img["file_name"]).rename(dataset_copy / "val2017" / name)
    with Image.open(dataset_copy / "val2017" / name) as pil:
        expected = torch.from_numpy(np.array(pil.convert("RGB")))
    img["file_name"] = name
    ann_file.write_bytes(json.dumps(data, ensure_ascii=False).encode("utf-8"))  # raw UTF-8, not \u escapes
    for decode in (True, False):
        ds = CocoDetection(dataset_copy, "val", skip_to_next=False, decode=decode)
        (index,) = [i for i, r in enumerate(ds.records) if r.image_id == img["id"]]
        assert ds.records[index].path == dataset_copy / "val2017" / name
        image = ds[index][0]
        if decode:
            assert torch.equal(torch.from_numpy(np.array(image)), expected)
        else:
            assert image[0].numel() == (dataset_copy / "val2017" / name).stat().st_size

"""Bbox-only annotation copies (SPEC section 5): the documented keys, atomic writes and clear errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from ssd_ds.data import bbox_only

# A COCO instances document with the fields the real files carry, crowd RLE included.
DOC = {
    "info": {"description": "test", "year": 2017},
    "licenses": [{"id": 1, "name": "cc", "url": "http://example.org"}],
    "images": [
        {"id": 9, "file_name": "000000000009.jpg", "height": 480, "width": 640, "license": 1,
         "coco_url": "http://x/9.jpg", "flickr_url": "http://y/9.jpg", "date_captured": "2013-11-19 20:40:11"},
        {"id": 25, "file_name": "000000000025.jpg", "height": 426, "width": 640, "license": 1,
         "coco_url": "http://x/25.jpg", "flickr_url": "http://y/25.jpg", "date_captured": "2013-11-19 21:40:11"},
    ],
    "annotations": [
        {"id": 1, "image_id": 9, "category_id": 3, "bbox": [1.5, 2.0, 30.0, 40.25], "area": 900.5, "iscrowd": 0,
         "segmentation": [[1.5, 2.0, 31.5, 2.0, 31.5, 42.25, 1.5, 42.25]]},
        {"id": 2, "image_id": 9, "category_id": 90, "bbox": [100, 100, 50, 60], "area": 2500, "iscrowd": 1,
         "segmentation": {"size": [480, 640], "counts": "abc"}},
    ],
    "categories": [
        {"id": 3, "name": "car", "supercategory": "vehicle"},
        {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
    ],
}


@pytest.fixture
def annotations_dir(tmp_path) -> Path:
    for split in bbox_only.SPLITS:
        (tmp_path / f"instances_{split}.json").write_text(json.dumps(DOC))
    return tmp_path


def test_train_copy_keeps_exactly_the_documented_keys(annotations_dir):
    bbox_only.write_bbox_only(annotations_dir)
    out = json.loads(bbox_only.bbox_only_path(annotations_dir, "train2017").read_text())
    assert [list(i) for i in out["images"]] == [["id", "file_name", "height", "width"]] * 2
    assert [list(a) for a in out["annotations"]] == [["id", "image_id", "bbox", "category_id", "iscrowd"]] * 2
    for kept, source in zip(out["annotations"], DOC["annotations"]):
        assert kept == {k: source[k] for k in kept}
    assert out["images"][1] == {"id": 25, "file_name": "000000000025.jpg", "height": 426, "width": 640}
    assert out["categories"] == DOC["categories"] and out["info"] == DOC["info"]


def test_val_copy_keeps_every_key_with_empty_segmentation(annotations_dir):
    bbox_only.write_bbox_only(annotations_dir)
    out = json.loads(bbox_only.bbox_only_path(annotations_dir, "val2017").read_text())
    assert out["images"] == DOC["images"]
    expected = copy.deepcopy(DOC["annotations"])
    for ann in expected:
        ann["segmentation"] = []
    assert out["annotations"] == expected
    assert DOC["annotations"][0]["segmentation"]  # the source document is not modified


def test_cli_writes_both_files_and_no_temporaries(annotations_dir, capsys):
    written = bbox_only.main([str(annotations_dir)])
    assert [p.name for p in written] == ["bbox_only_instances_train2017.json", "bbox_only_instances_val2017.json"]
    assert sorted(p.name for p in annotations_dir.iterdir()) == sorted(
        [f"instances_{s}.json" for s in bbox_only.SPLITS] + [p.name for p in written]
    )
    assert "wrote" in capsys.readouterr().out


def test_malformed_json_error_names_the_file(annotations_dir, capsys):
    bad = annotations_dir / "instances_val2017.json"
    bad.write_text('{"images": [}')
    with pytest.raises(ValueError, match="instances_val2017.json: malformed JSON"):
        bbox_only.write_bbox_only(annotations_dir)
    with pytest.raises(SystemExit) as exc:
        bbox_only.main([str(annotations_dir)])
    assert exc.value.code == 1
    assert str(bad) in capsys.readouterr().err


def test_json_that_is_not_an_instances_file_is_rejected(tmp_path):
    path = tmp_path / "instances_train2017.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a COCO instances file"):
        bbox_only.load_json(path)


def test_missing_key_error_names_file_and_record(annotations_dir):
    doc = copy.deepcopy(DOC)
    del doc["annotations"][1]["iscrowd"]
    src = annotations_dir / "instances_train2017.json"
    src.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"instances_train2017.json: annotation 2 lacks \['iscrowd'\]"):
        bbox_only.write_bbox_only(annotations_dir)


def test_missing_input_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        bbox_only.write_bbox_only(tmp_path)


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    dst = tmp_path / "out.json"
    dst.write_text('{"old": true}')
    with pytest.raises(TypeError):
        bbox_only.write_json_atomic({"not_json": {1, 2}}, dst)  # a set cannot be serialised, mid-write
    assert dst.read_text() == '{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]

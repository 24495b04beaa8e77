"""`python -m ssd_ds.data.convert voc|yolo SRC OUT`: small VOC and YOLO trees written here convert to the COCO layout
with the source's boxes exactly, stable ids, difficult -> iscrowd, errors naming file and line, and the trainer's
dataset reads the result (ssd_ds/data/convert/)."""

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from ssd_ds.cli import run_cli
from ssd_ds.data.coco import CocoDetection
from ssd_ds.data.convert.__main__ import main
from ssd_ds.errors import AlreadyExists, BadInput, NotFound

# VOC: image id -> (width, height, objects as (name, xmin, ymin, xmax, ymax, difficult)) in VOC's 1-based pixels.
VOC_IMAGES = {
    "2008_000001": (40, 30, [("dog", 1, 1, 40, 30, 0), ("cat", 5, 6, 14, 20, 1)]),  # the first box: the whole image
    "2008_000002": (32, 48, [("person", 10, 12, 10, 12, 0)]),  # a single pixel
    "2008_000003": (50, 20, [("cat", 2.5, 3, 20.5, 9, 0), ("person", 1, 1, 3, 4, 1)]),  # fractional, as some tools
    "été_4": (24, 24, [("dog", 3, 3, 22, 22, 0)]),  # a non-ASCII id
}
VOC_CLASSES = {"cat": 1, "dog": 2, "person": 3}  # sorted names
# The same boxes in COCO's continuous xywh, worked out by hand: [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1].
VOC_EXPECTED = {
    "2008_000001": [([0, 0, 40, 30], 2, 0), ([4, 5, 10, 15], 1, 1)],
    "2008_000002": [([9, 11, 1, 1], 3, 0)],
    "2008_000003": [([1.5, 2, 19, 7], 1, 0), ([0, 0, 3, 4], 3, 1)],
    "été_4": [([2, 2, 20, 20], 2, 0)],
}


def write_image(path: Path, width: int, height: int, **save) -> None:
    """A tiny plain image, its format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 165, 40)).save(path, **save)


def voc_xml(image_id: str, width: int, height: int, objects) -> str:
    objs = "".join(
        f"  <object>\n    <name>{name}</name>\n    <difficult>{difficult}</difficult>\n    <bndbox>\n"
        f"      <xmin>{x0}</xmin>\n      <ymin>{y0}</ymin>\n      <xmax>{x1}</xmax>\n      <ymax>{y1}</ymax>\n"
        f"    </bndbox>\n  </object>\n"
        for name, x0, y0, x1, y1, difficult in objects
    )
    return (f"<annotation>\n  <filename>{image_id}.jpg</filename>\n  <size>\n    <width>{width}</width>\n"
            f"    <height>{height}</height>\n  </size>\n{objs}</annotation>\n")


def write_voc(root: Path, lists=None) -> Path:
    """A VOC tree with VOC_IMAGES; lists: list name -> ids (default train: the first three, val: the fourth)."""
    lists = lists or {"train": list(VOC_IMAGES)[:3], "val": list(VOC_IMAGES)[3:]}
    for image_id, (width, height, objects) in VOC_IMAGES.items():
        write_image(root / "JPEGImages" / f"{image_id}.jpg", width, height)
        (root / "Annotations" / f"{image_id}.xml").parent.mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(image_id, width, height, objects),
                                                                encoding="utf-8")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for name, ids in lists.items():
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    return root


def coco(out: Path, split: str) -> dict:
    return json.loads((out / "annotations" / f"instances_{split}2017.json").read_text())


def boxes_by_file(doc: dict) -> dict[str, list]:
    by_id = {img["id"]: img["file_name"] for img in doc["images"]}
    boxes = {name: [] for name in by_id.values()}
    for ann in doc["annotations"]:
        boxes[by_id[ann["image_id"]]].append((ann["bbox"], ann["category_id"], ann["iscrowd"]))
    return boxes


def test_voc_converts_with_exact_boxes_difficult_as_crowd_and_relative_links(tmp_path, capsys):
    src, out = write_voc(tmp_path / "VOC"), tmp_path / "out"
    main(["voc", str(src), str(out)])
    for split, ids in (("train", list(VOC_IMAGES)[:3]), ("val", list(VOC_IMAGES)[3:])):
        doc = coco(out, split)
        assert {c["name"]: c["id"] for c in doc["categories"]} == VOC_CLASSES
        assert boxes_by_file(doc) == {f"{i}.jpg": VOC_EXPECTED[i] for i in ids}
        assert [(img["width"], img["height"]) for img in doc["images"]] == [VOC_IMAGES[i][:2] for i in ids]
        for img in doc["images"]:
            link = out / f"{split}2017" / img["file_name"]
            assert link.is_symlink() and not os.path.isabs(os.readlink(link))
            assert link.resolve() == (src / "JPEGImages" / img["file_name"]).resolve()
    printed = capsys.readouterr().out
    assert "train: 3 images (0 without boxes), 5 boxes (2 iscrowd), 3 of 3 classes" in printed
    assert "val: 1 images (0 without boxes), 1 boxes (0 iscrowd), 1 of 3 classes" in printed


def test_ids_are_stable_across_runs_and_follow_sorted_file_names(tmp_path):
    src = write_voc(tmp_path / "VOC", {"train": ["2008_000003", "été_4", "2008_000001"], "val": ["2008_000002"]})
    main(["voc", str(src), str(tmp_path / "a")])
    first = {split: coco(tmp_path / "a", split) for split in ("train", "val")}
    main(["voc", str(src), str(tmp_path / "a")])  # replaces its own earlier output
    main(["voc", str(src), str(tmp_path / "b"), "--copy"])
    for split in ("train", "val"):
        assert coco(tmp_path / "a", split) == coco(tmp_path / "b", split) == first[split]
    names = [img["file_name"] for img in first["train"]["images"]]
    assert names == sorted(names) and [img["id"] for img in first["train"]["images"]] == [1, 2, 3]
    assert [a["id"] for a in first["train"]["annotations"]] == list(range(1, 6))
    copied = tmp_path / "b" / "train2017" / names[0]
    assert not copied.is_symlink() and copied.read_bytes() == (src / "JPEGImages" / names[0]).read_bytes()


def test_voc_lists_fall_back_to_trainval_and_test_and_may_be_chosen(tmp_path, capsys):
    ids = list(VOC_IMAGES)
    src = write_voc(tmp_path / "VOC", {"trainval": ids[:2], "test": ids[2:], "train": ids[:1], "val": ids[1:2]})
    main(["voc", str(src), str(tmp_path / "out"), "--train-list", "trainval", "--val-list", "test"])
    assert len(coco(tmp_path / "out", "train")["images"]) == 2 and len(coco(tmp_path / "out", "val")["images"]) == 2
    assert "not converted: train.txt, val.txt" in capsys.readouterr().out
    with pytest.raises(BadInput, match=r"trainval.txt and .*val.txt share 1 image\(s\) \(first: 2008_000002\)"):
        main(["voc", str(src), str(tmp_path / "out2"), "--train-list", "trainval", "--val-list", "val"])
    (src / "ImageSets" / "Main" / "train.txt").unlink()
    (src / "ImageSets" / "Main" / "val.txt").unlink()
    main(["voc", str(src), str(tmp_path / "out")])  # defaults: train.txt else trainval.txt, val.txt else test.txt
    assert "train <- ImageSets/Main/trainval.txt, val <- ImageSets/Main/test.txt" in capsys.readouterr().out


def test_a_voc_filename_pointing_outside_is_not_followed(tmp_path):
    src = write_voc(tmp_path / "VOC")
    write_image(tmp_path / "secret.jpg", 8, 8)
    xml = src / "Annotations" / "2008_000001.xml"
    xml.write_text(xml.read_text().replace("<filename>2008_000001.jpg", "<filename>../../secret.jpg"))
    main(["voc", str(src), str(tmp_path / "out")])
    link = tmp_path / "out" / "train2017" / "2008_000001.jpg"
    assert link.resolve() == (src / "JPEGImages" / "2008_000001.jpg").resolve()


def broken_xml(path: Path, line: int, old: str, new: str) -> None:
    """Replace old by new on the given line (1-based) of the file."""
    lines = path.read_text().splitlines()
    assert old in lines[line - 1], lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new)
    path.write_text("\n".join(lines) + "\n")


# voc_xml's layout: line 7 is the first <object>, 8 its <name>, 9 <difficult>, 10 <bndbox>, 11-14 xmin..ymax.
XML_ERRORS = [
    (11, "<xmin>1</xmin>", "<xmin>1</ymin>", r":11: malformed XML \(mismatched tag\)"),
    (12, "<ymin>1</ymin>", "<ymin>one</ymin>", r":12: <ymin> is 'one', not a number"),
    (13, "<xmax>40</xmax>", "", r":10: <bndbox> has no <xmax>"),
    (13, "<xmax>40</xmax>", "<xmax>0</xmax>", r":10: <bndbox> has xmax < xmin"),
    (9, "<difficult>0</difficult>", "<difficult>2</difficult>", r":9: <difficult> is '2', not 0 or 1"),
    (8, "<name>dog</name>", "<name> </name>", r":7: <object> has no <name>"),
]


@pytest.mark.parametrize("line,old,new,message", XML_ERRORS, ids=[e[3] for e in XML_ERRORS])
def test_malformed_voc_xml_is_one_error_naming_file_and_line(tmp_path, line, old, new, message):
    src = write_voc(tmp_path / "VOC")
    broken_xml(src / "Annotations" / "2008_000001.xml", line, old, new)
    with pytest.raises(BadInput, match=rf"^{src / 'Annotations' / '2008_000001.xml'}{message}"):
        main(["voc", str(src), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_errors_reach_the_command_line_as_one_line_and_status_2(tmp_path, capsys):
    src = write_voc(tmp_path / "VOC")
    (src / "ImageSets" / "Main" / "train.txt").write_text("2008_000001\n2008_000002 1\n")
    with pytest.raises(SystemExit) as exc:
        run_cli(main, ["voc", str(src), str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {src / 'ImageSets' / 'Main' / 'train.txt'}:2: expected one image id, got '2008_000002 1'\n"


def test_out_must_be_empty_or_an_earlier_output(tmp_path):
    src, out = write_voc(tmp_path / "VOC"), tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(AlreadyExists, match="not empty and not an output of ssd_ds.data.convert"):
        main(["voc", str(src), str(out)])
    (out / "notes.txt").unlink()
    main(["voc", str(src), str(out)])  # an empty directory is fine
    (out / "bbox_only_instances_train2017.json").write_text("{}")
    with pytest.raises(AlreadyExists, match="also holds 'bbox_only_instances_train2017.json', which would be lost"):
        main(["voc", str(src), str(out)])
    with pytest.raises(BadInput, match="it holds the source"):
        main(["voc", str(src), str(tmp_path)])
    assert (out / "bbox_only_instances_train2017.json").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "VOC", "out"]  # nothing half-written left beside


# YOLO: split -> file name -> (width, height, label lines as (class, cx, cy, w, h)); None: no label file.
YOLO_IMAGES = {
    "train": {"a.jpg": (64, 32, [(0, 0.5, 0.5, 0.25, 0.5), (2, 0.125, 0.25, 0.25, 0.5)]),
              "sub/b.png": (20, 40, [(1, 0.5, 0.5, 1.0, 1.0)]),
              "c.jpg": (16, 16, None)},  # a background image
    "val": {"d.jpg": (30, 10, [(2, 0.3, 0.45, 0.2, 0.3)])},
}
YOLO_NAMES = ["person", "car", "traffic light"]


def write_yolo(root: Path, layout: str, names: str = "yaml-list") -> Path:
    for split, images in YOLO_IMAGES.items():
        split_name = "valid" if split == "val" and layout == "roboflow" else split
        if layout == "ultralytics":
            images_dir, labels_dir = root / "images" / split_name, root / "labels" / split_name
        else:
            images_dir, labels_dir = root / split_name / "images", root / split_name / "labels"
        for name, (width, height, lines) in images.items():
            write_image(images_dir / name, width, height)
            if lines is not None:
                label = labels_dir / Path(name).with_suffix(".txt")
                label.parent.mkdir(parents=True, exist_ok=True)
                label.write_text("".join(" ".join(map(str, line)) + "\n" for line in lines))
    if names == "yaml-list":
        (root / "data.yaml").write_text("path: .\ntrain: images/train\nnames: [person, car, traffic light]\nnc: 3\n")
    elif names == "yaml-dict":
        (root / "data.yaml").write_text("names:\n  0: person\n  1: car\n  2: traffic light\n")
    else:
        (root / "classes.txt").write_text("\n".join(YOLO_NAMES) + "\n\n")
    return root


@pytest.mark.parametrize("layout,names", [("ultralytics", "yaml-list"), ("roboflow", "yaml-dict"),
                                          ("ultralytics", "classes.txt")])
def test_yolo_converts_with_exact_boxes(tmp_path, layout, names, capsys):
    src, out = write_yolo(tmp_path / "yolo", layout, names), tmp_path / "out"
    (src / ("labels/train" if layout == "ultralytics" else "train/labels") / "gone.txt").write_text("0 .5 .5 .1 .1\n")
    main(["yolo", str(src), str(out)])
    for split, images in YOLO_IMAGES.items():
        doc = coco(out, split)
        assert [(c["id"], c["name"]) for c in doc["categories"]] == list(enumerate(YOLO_NAMES, start=1))
        expected = {
            name: [([(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height], cls + 1, 0)
                   for cls, cx, cy, w, h in lines or []]
            for name, (width, height, lines) in images.items()
        }
        assert boxes_by_file(doc) == expected
        assert {img["file_name"]: (img["width"], img["height"]) for img in doc["images"]} == {
            name: (w, h) for name, (w, h, _) in images.items()}
    assert boxes_by_file(coco(out, "train"))["a.jpg"][0][0] == [24, 8, 16, 16]  # one worked by hand
    printed = capsys.readouterr().out
    assert "train: 3 images (1 without boxes), 3 boxes (0 iscrowd), 3 of 3 classes" in printed
    assert "skipped 1 label files without an image (first: " in printed and "gone.txt" in printed


def test_a_yolo_image_with_an_exif_rotation_is_skipped(tmp_path, capsys):
    src = write_yolo(tmp_path / "yolo", "ultralytics")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    write_image(src / "images" / "train" / "e.jpg", 20, 10, exif=exif.tobytes())
    main(["yolo", str(src), str(tmp_path / "out")])
    assert "e.jpg" not in boxes_by_file(coco(tmp_path / "out", "train"))
    assert "skipped 1 images with an EXIF rotation" in capsys.readouterr().out


YOLO_ERRORS = [
    ("0 0.5 0.5 0.25\n", r":1: expected 5 values \(class cx cy w h\), got 4"),
    ("0 0.5 0.5 0.25 0.5\n\n1 0.5 x 0.2 0.2\n", r":3: expected a class index and 4 numbers, got '1 0.5 x 0.2 0.2'"),
    ("1.0 0.5 0.5 0.2 0.2\n", r":1: expected a class index and 4 numbers"),
    ("0 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.2 0.2\n", r":2: class 3 is not among the 3 names of .*data.yaml"),
    ("-1 0.5 0.5 0.2 0.2\n", r":1: class -1 is not among the 3 names"),
    ("0 12 30 5 5\n", r":1: cx cy w h must be normalised to \[0, 1\], w and h > 0"),
    ("0 0.5 0.5 0 0.2\n", r":1: cx cy w h must be normalised"),
    ("0 0.5 nan 0.2 0.2\n", r":1: cx cy w h must be normalised"),
]


@pytest.mark.parametrize("text,message", YOLO_ERRORS, ids=[e[1] for e in YOLO_ERRORS])
def test_a_malformed_label_line_is_one_error_naming_file_and_line(tmp_path, text, message):
    src = write_yolo(tmp_path / "yolo", "ultralytics")
    label = src / "labels" / "val" / "d.txt"
    label.write_text(text)
    with pytest.raises(BadInput, match=rf"^{label}{message}"):
        main(["yolo", str(src), str(tmp_path / "out")])


def test_yolo_class_names_must_be_found_and_well_formed(tmp_path):
    src = write_yolo(tmp_path / "yolo", "ultralytics")
    (src / "data.yaml").write_text("names: [person, car\nnc: 3\n")
    with pytest.raises(BadInput, match=rf"^{src / 'data.yaml'}:2: malformed YAML"):
        main(["yolo", str(src), str(tmp_path / "out")])
    (src / "data.yaml").write_text("names: [person, car]\nnc: 3\n")
    with pytest.raises(BadInput, match="nc is 3, but names has 2"):
        main(["yolo", str(src), str(tmp_path / "out")])
    (src / "data.yaml").unlink()
    with pytest.raises(NotFound, match="data.yaml: not found, nor .*classes.txt"):
        main(["yolo", str(src), str(tmp_path / "out")])


@pytest.mark.parametrize("kind", ["voc", "yolo"])
@pytest.mark.parametrize("copy", [False, True])
def test_the_trainers_dataset_reads_the_converted_output(tmp_path, kind, copy):
    src = write_voc(tmp_path / "src") if kind == "voc" else write_yolo(tmp_path / "src", "ultralytics")
    out = tmp_path / "out"
    main([kind, str(src), str(out)] + (["--copy"] if copy else []))
    for split in ("train", "val"):
        doc = coco(out, split)
        ds = CocoDetection(out, split, skip_to_next=False)
        assert ds.stats.images_outside == 0 and ds.stats.dropped_boxes == 0
        assert ds.class_names == ["background"] + [c["name"] for c in doc["categories"]]
        expected = boxes_by_file(doc)
        for i, rec in enumerate(ds.records):
            image, boxes_ltrb, labels, skipped = ds[i]
            assert skipped == 0 and image.size == (rec.width, rec.height)
            boxes = expected[rec.path.relative_to(out / f"{split}2017").as_posix()]
            want = torch.tensor([[x, y, x + w, y + h] for (x, y, w, h), _, _ in boxes], dtype=torch.float32)
            assert torch.equal(boxes_ltrb, want.clamp(min=0).minimum(torch.tensor([rec.width, rec.height] * 2)))
            assert [ds.label_to_category[label] for label in labels.tolist()] == [cid for _, cid, _ in boxes]
        assert len(ds) == sum(1 for b in expected.values() if b)

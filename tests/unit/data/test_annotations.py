"""parse_coco on malformed instances files: a bad annotation is dropped and counted under its reason, a broken
`images`/`categories` entry is one ValueError naming the file, and nothing else ever escapes
(ssd_ds/data/annotations.py)."""

import copy
import json
import logging
import math
import random
from pathlib import Path

import pytest
import torch

from ssd_ds.data.annotations import parse_coco
from ssd_ds.data.coco import CocoDetection

SOURCE = Path("/data/coco/annotations/instances_fuzz2017.json")
IMAGE_DIR = Path("/data/coco/fuzz2017")
ANNOTATION_REASONS = {
    "not an object", "no id", "no image_id", "no category_id", "no bbox",
    "bad id", "bad image_id", "bad category_id", "bad bbox", "bad iscrowd",
}


def valid_coco() -> dict:
    """A small valid file: category ids out of order with gaps, a float image size, a crowd box, a box to clip,
    and an image without annotations."""
    return {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
            {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48},
            {"id": 5, "file_name": "c.jpg", "width": 30.5, "height": 20},
            {"id": 9, "file_name": "d.jpg", "width": 50, "height": 50},
        ],
        "categories": [{"id": 7, "name": "x"}, {"id": 3, "name": "y"}, {"id": 11, "name": "z"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 7, "bbox": [10, 20, 30, 40], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [0.5, 1.25, 99.5, 78.75], "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 11, "bbox": [50, 40, 30, 30], "iscrowd": 0},  # clipped
            {"id": 13, "image_id": 2, "category_id": 7, "bbox": [1, 2, 3, 4], "iscrowd": 1},
            {"id": 14, "image_id": 5, "category_id": 3, "bbox": [2.5, 3.5, 20, 10]},  # no iscrowd: 0
            {"id": 15, "image_id": 5, "category_id": 11, "bbox": [-4, -2, 10, 10], "iscrowd": 0},  # clipped
            {"id": 16, "image_id": 1, "category_id": 11, "bbox": [60, 10, 5, 5], "iscrowd": 0},
        ],
    }


def clipped_ltrb(bbox_xywh, img) -> list[float]:
    """The kept box, by the definition: the bbox's corners clamped to [0, width] x [0, height]."""
    x, y, w, h = bbox_xywh
    return [min(max(x, 0), img["width"]), min(max(y, 0), img["height"]),
            min(max(x + w, 0), img["width"]), min(max(y + h, 0), img["height"])]


def check_result(data: dict, original: dict, result) -> None:
    """What every successful parse must satisfy, whatever the input."""
    records, label_to_category, stats = result
    categories = [c["id"] for c in data["categories"]]
    assert label_to_category == {i + 1: cid for i, cid in enumerate(categories)}
    images = {img["id"]: img for img in data["images"]}
    for rec in records:
        img = images[rec.image_id]
        boxes = rec.boxes_ltrb
        assert boxes.dtype == torch.float32 and boxes.shape == (len(rec.labels), 4) and len(rec.labels) > 0
        assert torch.isfinite(boxes).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all()
        assert (boxes[:, 2] <= img["width"]).all() and (boxes[:, 3] <= img["height"]).all()
        assert ((rec.labels >= 1) & (rec.labels <= len(categories))).all()
        assert (rec.width, rec.height, rec.path) == (img["width"], img["height"], IMAGE_DIR / img["file_name"])
    # The counts add up: every annotation is kept or dropped under exactly one reason.
    assert stats.annotations_in_json == len(data["annotations"])
    assert stats.kept_boxes + stats.dropped_boxes == stats.annotations_in_json
    assert stats.kept_boxes == sum(len(r.labels) for r in records) == sum(stats.per_category.values())
    assert set(stats.malformed) <= ANNOTATION_REASONS and all(n > 0 for n in stats.malformed.values())
    assert stats.kept_images == len(records) == (stats.images_in_json - stats.images_without_boxes
                                                 - stats.images_outside)
    assert 0 <= stats.clipped_boxes <= stats.kept_boxes and 0 <= stats.crowd_boxes <= stats.kept_boxes
    # Every annotation the mutations left alone (with its image and category intact) is kept, clipped, labelled.
    # Compared as JSON text, since 0 == 0.0 == False to Python but not to the parser.
    kept = {
        (r.image_id, tuple(box.tolist()), int(label)) for r in records for box, label in zip(r.boxes_ltrb, r.labels)
    }
    as_text = {json.dumps(v, sort_keys=True) for v in original["images"] + original["annotations"]}
    intact_images = {img["id"]: img for img in data["images"] if json.dumps(img, sort_keys=True) in as_text}
    for ann in data["annotations"]:
        intact = json.dumps(ann, sort_keys=True) in as_text
        if intact and ann["image_id"] in intact_images and ann["category_id"] in categories:
            box = torch.tensor(clipped_ltrb(ann["bbox"], intact_images[ann["image_id"]]), dtype=torch.float32)
            assert (ann["image_id"], tuple(box.tolist()), categories.index(ann["category_id"]) + 1) in kept


# Random junk of every JSON type and then some; ids 1..16 hit real image and category ids now and then.
def junk(rng: random.Random):
    pick = rng.randrange(16)
    return [
        None, True, False, "", "7", "abc", math.nan, math.inf, -math.inf, 10**400, -rng.randint(0, 5),
        rng.randint(0, 16), rng.uniform(-1e3, 1e3), [], [1, 2, 3, 4][: rng.randint(0, 4)], {"id": 1},
    ][pick]


def junk_bbox(rng: random.Random):
    """A bbox that is wrong in one way: length, nesting, type, an odd element, or a sliver / huge extent."""
    good = [rng.uniform(-20, 90), rng.uniform(-20, 90), rng.uniform(-5, 60), rng.uniform(-5, 60)]
    kind = rng.randrange(7)
    if kind == 0:
        return good[: rng.choice([0, 1, 2, 3])] + ([] if rng.random() < 0.5 else [1.0] * rng.randint(2, 3))
    if kind == 1:
        return [good]
    if kind == 2:
        return tuple(good)  # a tuple is fine from Python
    if kind == 3:
        return ",".join(map(str, good))
    if kind == 4:
        good[rng.randrange(4)] = junk(rng)
        return good
    if kind == 5:
        good[rng.randrange(2, 4)] = rng.choice([1e-9, 5e-324, 1e-7, 0.0, -0.0])  # slivers: kept or degenerate
        return good
    return [rng.choice([-1e308, 1e308, -1e300, 1e20]), good[1], rng.choice([1e308, 1.7e308, 2e20]), good[3]]


def mutate(data: dict, rng: random.Random) -> tuple[str, bool]:
    """Apply one random mutation in place; -> (what it did, whether it touched the file level)."""
    anns, images, cats = data["annotations"], data["images"], data["categories"]
    op = rng.randrange(9) if rng.random() < 0.8 else rng.randrange(9, 16)  # mostly single annotations
    if op < 9 and anns:
        i = rng.randrange(len(anns))
        ann = anns[i]
        if op == 0:
            anns[i] = junk(rng)
        elif op == 1 and isinstance(ann, dict) and ann:
            del ann[rng.choice(sorted(ann))]
        elif op == 2 and isinstance(ann, dict):
            ann[rng.choice(["id", "image_id", "category_id", "iscrowd"])] = junk(rng)
        elif op in (3, 4) and isinstance(ann, dict):
            ann["bbox"] = junk_bbox(rng)
        elif op == 5 and isinstance(ann, dict):
            ann[rng.choice(["image_id", "category_id"])] = rng.choice([0, 4, 999, -1, 2**40])
        elif op == 6:
            anns.append(copy.deepcopy(ann))  # a duplicate row, same id
        elif op == 7 and isinstance(ann, dict):
            ann["iscrowd"] = rng.choice([0, 1, 2, -1, 0.0, 1.0, "1", None, True, [1]])
        else:
            anns.pop(i)
        return f"annotation[{i}] op {op}", False
    if op == 9 and images:
        i = rng.randrange(len(images))
        if rng.random() < 0.3:
            images[i] = junk(rng)
        elif isinstance(images[i], dict):
            key = rng.choice(["id", "file_name", "width", "height"])
            if rng.random() < 0.3:
                images[i].pop(key, None)
            else:
                images[i][key] = junk(rng)
        return f"images[{i}]", True
    if op == 10 and images:
        images.append(copy.deepcopy(rng.choice(images)))
        return "duplicate image", True
    if op == 11 and cats:
        i = rng.randrange(len(cats))
        if rng.random() < 0.3:
            cats[i] = junk(rng)
        elif isinstance(cats[i], dict):
            if rng.random() < 0.5:
                cats[i].pop("id", None)
            else:
                cats[i]["id"] = junk(rng)
        return f"categories[{i}]", True
    if op == 12 and cats:
        cats.append(copy.deepcopy(rng.choice(cats)))
        return "duplicate category", True
    if op == 13:
        data[rng.choice(["images", "annotations", "categories"])] = junk(rng)
        return "top-level list replaced", True
    if op == 14 and cats:
        cats.pop(rng.randrange(len(cats)))  # its annotations become unknown-category rows, not an error
        return "category removed", False
    if op == 15 and len(images) > 1:
        images.pop(rng.randrange(len(images)))  # its annotations become unknown-image rows, not an error
        return "image removed", False
    return "no-op", False


def test_randomly_malformed_files_parse_or_raise_one_clear_value_error():
    rng = random.Random(20261130)
    original = valid_coco()
    outcomes = {"ok": 0, "error": 0}
    reasons, unknown_image, unknown_category, degenerate, clipped = set(), 0, 0, 0, 0
    for run in range(3000):
        data = copy.deepcopy(original)
        steps = []
        for _ in range(rng.randint(1, 4)):
            if not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
                break  # the file-level error is already made; mutating further only repeats it
            steps.append(mutate(data, rng))
        file_level = any(f for _, f in steps)
        try:
            result = parse_coco(data, IMAGE_DIR, SOURCE)
        except ValueError as exc:
            assert str(SOURCE) in str(exc), f"run {run} {steps}: {exc}"
            assert file_level, f"run {run} {steps}: annotation-level damage raised {exc}"
            outcomes["error"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 - the property under test: nothing but ValueError escapes
            pytest.fail(f"run {run} {steps}: {type(exc).__name__}: {exc}")
        try:
            check_result(data, original, result)
        except AssertionError as exc:
            raise AssertionError(f"run {run} {steps}") from exc
        stats = result[2]
        outcomes["ok"] += 1
        reasons |= set(stats.malformed)
        unknown_image += stats.unknown_image
        unknown_category += sum(stats.unknown_category.values())
        degenerate += stats.degenerate_boxes
        clipped += stats.clipped_boxes
    # The generator reaches every outcome, so the invariants above were exercised on each.
    assert outcomes["ok"] > 1500 and outcomes["error"] > 300, outcomes
    assert reasons == ANNOTATION_REASONS
    assert min(unknown_image, unknown_category, degenerate, clipped) > 0


def parse_one(ann) -> tuple:
    """parse_coco on the valid file plus one extra annotation on image 1."""
    data = valid_coco()
    data["annotations"].append(ann)
    return parse_coco(data, IMAGE_DIR, SOURCE)


BASE = {"id": 99, "image_id": 1, "category_id": 3, "bbox": [5, 5, 10, 10], "iscrowd": 0}
MALFORMED = [
    ([1, 2], "not an object"), (None, "not an object"), ("annotation", "not an object"),
    *[({k: v for k, v in BASE.items() if k != key}, f"no {key}") for key in ("id", "image_id", "category_id", "bbox")],
    (dict(BASE, id="99"), "bad id"), (dict(BASE, id=None), "bad id"), (dict(BASE, id=99.0), "bad id"),
    (dict(BASE, image_id=True), "bad image_id"), (dict(BASE, image_id="1"), "bad image_id"),
    (dict(BASE, image_id=[1]), "bad image_id"),
    (dict(BASE, category_id=True), "bad category_id"), (dict(BASE, category_id={"id": 3}), "bad category_id"),
    (dict(BASE, bbox=[5, 5, 10]), "bad bbox"), (dict(BASE, bbox=[5, 5, 10, 10, 1]), "bad bbox"),
    (dict(BASE, bbox="5,5,10,10"), "bad bbox"), (dict(BASE, bbox=None), "bad bbox"),
    (dict(BASE, bbox=[[5, 5, 10, 10]]), "bad bbox"), (dict(BASE, bbox=[5, "5", 10, 10]), "bad bbox"),
    (dict(BASE, bbox=[5, 5, True, 10]), "bad bbox"), (dict(BASE, bbox=[5, 5, math.nan, 10]), "bad bbox"),
    (dict(BASE, bbox=[5, 5, 10, math.inf]), "bad bbox"), (dict(BASE, bbox=[-math.inf, 5, 10, 10]), "bad bbox"),
    (dict(BASE, bbox=[5, 5, 10**400, 10]), "bad bbox"), (dict(BASE, bbox={"x": 5}), "bad bbox"),
    (dict(BASE, iscrowd="1"), "bad iscrowd"), (dict(BASE, iscrowd=None), "bad iscrowd"),
    (dict(BASE, iscrowd=True), "bad iscrowd"), (dict(BASE, iscrowd=2), "bad iscrowd"),
    (dict(BASE, iscrowd=0.5), "bad iscrowd"), (dict(BASE, iscrowd=math.nan), "bad iscrowd"),
    (dict(BASE, iscrowd=[0]), "bad iscrowd"),
]


@pytest.mark.parametrize("ann,reason", MALFORMED, ids=[f"{r}-{i}" for i, (_, r) in enumerate(MALFORMED)])
def test_a_malformed_annotation_is_dropped_counted_and_reported(ann, reason, caplog):
    expected_records, _, expected = parse_coco(valid_coco(), IMAGE_DIR, SOURCE)
    with caplog.at_level(logging.WARNING, logger="ssd_ds.data.annotations"):
        records, _, stats = parse_one(ann)
    assert stats.malformed == {reason: 1}
    assert stats.kept_boxes == expected.kept_boxes and stats.dropped_boxes == 1
    assert [r.image_id for r in records] == [r.image_id for r in expected_records]
    # One warning says where the first such row is (index 7: after the seven valid ones).
    assert [r.getMessage() for r in caplog.records] == [
        f"{SOURCE}: 1 annotation(s) dropped: {reason} (first: annotations[7], id "
        f"{ann.get('id') if isinstance(ann, dict) else None!r})"
    ]


def test_a_valid_extra_annotation_is_kept_with_or_without_iscrowd():
    no_iscrowd = {k: v for k, v in BASE.items() if k != "iscrowd"}
    for ann in (BASE, no_iscrowd, dict(BASE, iscrowd=1.0), dict(BASE, bbox=(5, 5.5, 10, 10))):
        _, _, stats = parse_one(ann)
        assert stats.dropped_boxes == 0 and stats.kept_boxes == len(valid_coco()["annotations"]) + 1


def test_unknown_image_and_unknown_category_are_dropped_and_counted():
    data = valid_coco()
    data["annotations"] += [
        dict(BASE, id=100, category_id=999), dict(BASE, id=101, category_id=999), dict(BASE, id=102, category_id=0),
        dict(BASE, id=103, image_id=4), dict(BASE, id=104, image_id=999, category_id=999),  # image checked first
    ]
    _, _, stats = parse_coco(data, IMAGE_DIR, SOURCE)
    assert stats.unknown_category == {999: 2, 0: 1}
    assert stats.unknown_image == 2 and stats.malformed == {} and stats.degenerate_boxes == 0
    assert stats.kept_boxes == 7 and stats.dropped_boxes == 5


def test_unknown_category_is_summarised_per_id_in_the_load_line(dataset_copy, caplog):
    ann_file = dataset_copy / "annotations" / "instances_train2017.json"
    data = json.loads(ann_file.read_text())
    before = len(data["annotations"])
    base = dict(data["annotations"][0])
    for i, cid in enumerate([999, 999, 555]):
        data["annotations"].append(dict(base, id=50_000 + i, category_id=cid))
    ann_file.write_text(json.dumps(data))
    with caplog.at_level(logging.INFO, logger="ssd_ds.data.coco"):
        ds = CocoDetection(dataset_copy, "train")
    assert ds.stats.unknown_category == {999: 2, 555: 1}
    assert ds.stats.kept_boxes == before and ds.stats.annotations_in_json == before + 3
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert line.startswith(f"{ann_file}: ") and "\n" not in line
    assert f"{before} boxes of {before + 3} (0 clipped to the image; " in line
    assert "; dropped: 3 unknown category {999: 2, 555: 1}; " in line


def test_summary_names_only_the_reasons_that_occurred():
    data = valid_coco()
    data["annotations"] += [
        dict(BASE, id=100, bbox=[5, 5, 0, 10]), dict(BASE, id=101, category_id=999), dict(BASE, id=102, image_id=4),
        dict(BASE, id=103, bbox=None), dict(BASE, id=104, bbox=[1, 2]), {"id": 105},
    ]
    _, _, stats = parse_coco(data, IMAGE_DIR, SOURCE)
    assert stats.summary() == (
        "3 images kept of 4 (1 without boxes dropped), 7 boxes of 13 (2 clipped to the image; dropped: 1 degenerate, "
        "1 unknown category {999: 1}, 1 unknown image, 2 bad bbox, 1 no image_id; 1 crowd kept)"
    )
    _, _, clean = parse_coco(valid_coco(), IMAGE_DIR, SOURCE)
    assert clean.summary() == (
        "3 images kept of 4 (1 without boxes dropped), 7 boxes of 7 (2 clipped to the image; 1 crowd kept)"
    )


def test_boxes_partly_outside_are_clipped_kept_and_counted():
    records, _, stats = parse_coco(valid_coco(), IMAGE_DIR, SOURCE)
    boxes = {r.image_id: r.boxes_ltrb.tolist() for r in records}
    assert boxes[2][0] == [50, 40, 64, 48]  # [50, 40, 30, 30] on a 64x48 image
    assert boxes[5][1] == [0, 0, 6, 8]  # [-4, -2, 10, 10]
    assert stats.clipped_boxes == 2 and stats.degenerate_boxes == 0
    # Touching the edges exactly is not clipping; one pixel past is.
    for bbox, clipped in (([0, 0, 100, 80], 0), ([0, 0, 100.5, 80], 1), ([-0.25, 0, 10, 10], 1), ([99, 79, 1, 1], 0)):
        _, _, stats = parse_one(dict(BASE, bbox=bbox))
        assert stats.clipped_boxes == 2 + clipped and stats.kept_boxes == 8, bbox


def test_degenerate_boxes_include_slivers_that_vanish_in_float32():
    slivers = ([50, 5, 1e-6, 10], [5, 5, 5e-324, 3])  # r > l in float64, r == l in float32
    for bbox in ([5, 5, 0, 10], [5, 5, 10, -1], [100, 5, 10, 10], [-30, 5, 20, 10], *slivers):
        _, _, stats = parse_one(dict(BASE, bbox=bbox))
        assert stats.degenerate_boxes == 1 and stats.kept_boxes == 7, bbox
    _, _, stats = parse_one(dict(BASE, bbox=[0.5, 5, 1e-6, 10]))  # representable in float32 near 0.5: kept
    assert stats.degenerate_boxes == 0 and stats.kept_boxes == 8


def edit(path: str, value):
    """A function setting data[path] (dotted, list indices as ints) to value, or deleting it when value is DELETE."""

    def apply(data):
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        target = data
        for p in parents:
            target = target[p]
        if value is DELETE:
            del target[last]
        else:
            target[last] = value

    return apply


DELETE = object()
FILE_ERRORS = [
    (edit("images", {"id": 1}), r"'images' is dict, not a list"),
    (edit("annotations", None), r"'annotations' is NoneType, not a list"),
    (edit("categories", "cats"), r"'categories' is str, not a list"),
    (edit("images.2", [5]), r"images\[2\] is list, not an object"),
    (edit("images.1.id", DELETE), r"images\[1\] has no integer id \(id=None\)"),
    (edit("images.1.id", "2"), r"images\[1\] has no integer id \(id='2'\)"),
    (edit("images.1.id", True), r"images\[1\] has no integer id \(id=True\)"),
    (edit("images.3.id", 2), r"images\[3\] repeats id 2 of images\[1\]"),
    (edit("images.0.file_name", DELETE), r"image 1 has no file_name \(file_name=None\)"),
    (edit("images.0.file_name", 17), r"image 1 has no file_name \(file_name=17\)"),
    (edit("images.0.width", DELETE), r"image 1 has width=None"),
    (edit("images.0.width", "640"), r"image 1 has width='640'"),
    (edit("images.0.width", 0), r"image 1 has width=0"),
    (edit("images.1.height", -48), r"image 2 has height=-48"),
    (edit("images.1.height", math.nan), r"image 2 has height=nan"),
    (edit("images.1.height", math.inf), r"image 2 has height=inf"),
    (edit("images.1.height", True), r"image 2 has height=True"),
    (edit("images.1.height", 2**30), r"image 2 has height=1073741824, not a number in \(0, 16777216\]"),
    (edit("categories.1", None), r"categories\[1\] is NoneType, not an object"),
    (edit("categories.1.id", DELETE), r"categories\[1\] has no integer id"),
    (edit("categories.1.id", 3.0), r"categories\[1\] has no integer id \(id=3.0\)"),
    (edit("categories.2.id", 7), r"categories\[2\] repeats id 7 of categories\[0\]"),
]


@pytest.mark.parametrize("damage,message", FILE_ERRORS, ids=[m for _, m in FILE_ERRORS])
def test_a_broken_image_or_category_entry_is_one_value_error_naming_file_and_id(damage, message):
    data = valid_coco()
    damage(data)
    with pytest.raises(ValueError, match=message) as info:
        parse_coco(data, IMAGE_DIR, SOURCE)
    assert str(info.value).startswith(f"{SOURCE}: ")


def test_a_document_that_is_not_an_object_is_a_value_error():
    with pytest.raises(ValueError, match=rf"^{SOURCE}: not a COCO instances file \(a list"):
        parse_coco([valid_coco()], IMAGE_DIR, SOURCE)


def test_dataset_load_names_the_annotation_file_on_a_duplicate_image_id(dataset_copy):
    ann_file = dataset_copy / "annotations" / "instances_val2017.json"
    data = json.loads(ann_file.read_text())
    data["images"].append(dict(data["images"][0]))
    ann_file.write_text(json.dumps(data))
    message = rf"^{ann_file}: images\[{len(data['images']) - 1}\] repeats id {data['images'][0]['id']} of images\[0\]$"
    with pytest.raises(ValueError, match=message):
        CocoDetection(dataset_copy, "val")


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_valid_dataset_keeps_every_annotation_as_its_bbox(synthetic_dataset, split):
    ds = CocoDetection(synthetic_dataset, split)
    data = json.loads((synthetic_dataset / "annotations" / f"instances_{split}2017.json").read_text())
    label = {c["id"]: i + 1 for i, c in enumerate(data["categories"])}
    per_image = {}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        per_image.setdefault(ann["image_id"], []).append(([x, y, x + w, y + h], label[ann["category_id"]]))
    # Records in JSON image order, annotations in JSON order, the bbox as float32 ltrb: nothing clipped or dropped.
    assert [r.image_id for r in ds.records] == [img["id"] for img in data["images"] if img["id"] in per_image]
    for rec in ds.records:
        anns = per_image[rec.image_id]
        assert torch.equal(rec.boxes_ltrb, torch.tensor([a[0] for a in anns], dtype=torch.float32))
        assert torch.equal(rec.labels, torch.tensor([a[1] for a in anns]))
    stats = ds.stats
    assert stats.kept_boxes == stats.annotations_in_json == len(data["annotations"])
    assert stats.dropped_boxes == stats.clipped_boxes == 0
    assert stats.crowd_boxes == sum(a["iscrowd"] for a in data["annotations"]) > 0

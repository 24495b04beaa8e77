"""`python -m ssd_ds.data.check` on small hand-made COCO sets: what it counts, when it calls a set unusable (one error
line, exit 2) and the flag it proposes with --fit (ssd_ds/data/check.py)."""

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from ssd_ds.data.check import main, problems
from ssd_ds.data.split_stats import SplitCheck, longest_cyclic_run, measure_coverage
from ssd_ds.errors import BadInput, NotFound
from ssd_ds.model_config import build_model_config
from tests.helpers import REPO, env

CATEGORIES = [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 11, "name": "unused"}]


def write_split(root, split, images, annotations, categories=CATEGORIES, unreadable=()):
    """`root/{split}2017/` with a PNG of each image's size (garbage bytes for the ids in `unreadable`) and
    `root/annotations/instances_{split}2017.json`."""
    (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    for img in images:
        path = root / f"{split}2017" / img["file_name"]
        if img["id"] in unreadable:
            path.write_bytes(b"not an image")
        else:
            Image.new("RGB", (img["width"], img["height"]), (90, 120, 150)).save(path)
    data = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))


def image(i, width=200, height=150):
    return {"id": i, "file_name": f"{i:012d}.png", "width": width, "height": height}


def box(ann_id, image_id, category_id, bbox):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": 0}


@pytest.fixture
def hand_made(tmp_path):
    """Train: image 1 has a small (10x10 = 100 px^2) and a medium box (40x50, clipped by the right edge to 40x50 of
    50x50 asked); image 2 a large box (100x100) and a degenerate one; image 3 no box; image 4 only a box of an unknown
    category; image 5 a box but unreadable bytes; one annotation cites an unknown image. Val: one image, one box."""
    images = [image(i) for i in range(1, 6)]
    annotations = [
        box(1, 1, 7, [5, 5, 10, 10]),
        box(2, 1, 3, [160, 20, 50, 50]),  # clipped to x <= 200: 40 x 50 = 2000 px^2
        box(3, 2, 7, [50, 25, 100, 100]),
        box(4, 2, 7, [10, 10, 0, 5]),  # degenerate: zero width
        box(5, 4, 999, [10, 10, 20, 20]),  # unknown category
        box(6, 5, 3, [10, 10, 20, 20]),  # on the unreadable image
        box(7, 42, 7, [10, 10, 20, 20]),  # unknown image
    ]
    write_split(tmp_path, "train", images, annotations, unreadable={5})
    write_split(tmp_path, "val", [image(1)], [box(1, 1, 3, [20, 20, 60, 60])])
    return tmp_path


def test_counts_on_a_hand_made_set(hand_made, tmp_path, capsys):
    report = tmp_path / "out" / "report.png"
    assert main([str(hand_made), "--report", str(report), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    train_part = out.split("\nval: ")[0]
    assert "3 images kept of 5 (2 without boxes dropped), 4 boxes of 7" in train_part
    assert "1 clipped to the image" in train_part and "1 degenerate" in train_part
    assert "1 unknown category {999: 1}" in train_part and "1 unknown image" in train_part
    assert "images: 2 readable of 3 kept; 1 unreadable" in train_part and "000000000005.png" in train_part
    # The unreadable image's box is not among the boxes the trainer sees: 3 boxes on 2 images.
    assert "boxes per image: mean 1.50, max 2; images with 1: 1 | 2-5: 1 | 6-10: 0" in train_part
    assert "small 1 (33.3%), medium 1 (33.3%), large 1 (33.3%)" in train_part
    assert "boxes per class: cat 2; dog 1; unused 0" in train_part  # names, not ids; a class never used shows 0
    assert "usable: the trainer reads 2 train images with 3 boxes and 1 val images with 1 boxes" in out
    assert report.stat().st_size > 10_000 and report.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_box_sizes_are_in_pixels_of_the_square_input(hand_made, capsys):
    """cpu_small's input is 128 px: the 10x10 box of a 200x150 image becomes 6.4 x 8.53, sqrt 7.39 px; the 100x100
    one 64 x 85.3, sqrt 73.9 px."""
    main([str(hand_made), "--split", "train"])
    line = next(line for line in capsys.readouterr().out.splitlines() if "box size in the 128px input" in line)
    assert "min 7.4," in line and "max 73.9 px" in line


def test_longest_unreadable_run_wraps_around():
    assert longest_cyclic_run([True, False, False, True, True]) == 3
    assert longest_cyclic_run([False, True, True, False]) == 2
    assert longest_cyclic_run([True] * 4) == 4 and longest_cyclic_run([False] * 3) == 0


def test_coverage_per_size_and_class_of_a_split():
    """Two boxes equal to a default box (IoU 1) and one far smaller than any (IoU well below 0.5): shares overall, per
    COCO size bucket and per class follow from which boxes are covered."""
    anchors = build_model_config("cpu_small").anchors
    from ssd_ds.anchors import default_boxes_ltrb

    dboxes = default_boxes_ltrb(anchors)
    gt = torch.stack([dboxes[0], dboxes[-1], torch.tensor([0.50, 0.50, 0.51, 0.51])])
    check = SplitCheck("train", REPO / "x.json", None, ["background", "a", "b", "c"], 1, [], [], 0,
                       torch.tensor([3]), gt, torch.tensor([1, 2, 2]), torch.tensor([500.0, 20000.0, 4.0]))
    coverage = measure_coverage(check, anchors, "own")
    assert coverage.best_iou[:2].tolist() == pytest.approx([1.0, 1.0]) and coverage.best_iou[2] < 0.1
    assert coverage.overall == pytest.approx(2 / 3)
    assert coverage.per_size.tolist() == pytest.approx([0.5, float("nan"), 1.0], nan_ok=True)  # small: 500 and 4
    assert coverage.per_class[1:3].tolist() == pytest.approx([1.0, 0.5]) and coverage.per_class[3].isnan()


def test_fit_through_the_command_line_prints_the_flag(tmp_path, capsys):
    """Boxes of 6% of the image side, which cpu_small's smallest default boxes (10%) miss: --fit proposes scales, the
    printed flag is one the trainer's config accepts, and coverage rises on train and val."""
    from ssd_ds.run_config import config_from_args

    for split, count in (("train", 12), ("val", 3)):
        images = [image(i, 256, 256) for i in range(1, count + 1)]
        annotations = [box(10 * i + k, i, 7 if k % 2 else 3, [16 + 48 * k, 16 + 32 * (i % 4), 15, 15])
                       for i in range(1, count + 1) for k in range(4)]
        write_split(tmp_path, split, images, annotations)
    assert main([str(tmp_path), "--fit"]) == 0
    out = capsys.readouterr().out
    flag = next(line for line in out.splitlines() if "train with:" in line).split("--anchor_scales ")[1]
    cfg = config_from_args(["--anchor_scales", flag])
    assert len(cfg.anchor_scales) == 6 and cfg.anchor_scales[0] < 0.1 * 128
    before, after = (float(s.rstrip("%")) for s in
                     next(line for line in out.splitlines() if "train coverage:" in line).split()[2:5:2])
    assert after > before + 20


@pytest.mark.parametrize("args, error", [
    (["--fit", "--model", "mlperf"], "the mlperf model keeps the benchmark's 8732 default boxes"),
    (["--fit", "--split", "val"], "--fit fits on the train split"),
    (["--anchor_scales", "1,2"], "model cpu_small has 5 feature levels, so it takes 6 scales"),
    (["--anchor_scales", "a,b"], "--anchor_scales: expected a comma-separated list of float"),
])
def test_bad_flags_are_user_errors(hand_made, args, error):
    with pytest.raises(BadInput, match=error):
        main([str(hand_made), *args])


def test_a_missing_split_or_a_set_without_readable_images_is_unusable(tmp_path):
    write_split(tmp_path, "train", [image(1), image(2)], [box(1, 1, 7, [5, 5, 50, 50]), box(2, 2, 3, [5, 5, 50, 50])],
                unreadable={1, 2})
    with pytest.raises(NotFound, match="val2017: image directory not found"):
        main([str(tmp_path)])
    with pytest.raises(BadInput, match="instances_train2017.json: none of its 2 images with boxes can be read"):
        main([str(tmp_path), "--split", "train"])


def test_more_consecutive_unreadable_train_images_than_the_trainer_passes_over(tmp_path):
    images = [image(i, 32, 32) for i in range(1, 21)]
    write_split(tmp_path, "train", images, [box(i, i, 7, [1, 1, 20, 20]) for i in range(1, 21)],
                unreadable=set(range(2, 20)))
    with pytest.raises(BadInput, match="18 consecutive unreadable images; the trainer passes over at most 16"):
        main([str(tmp_path), "--split", "train"])


def test_train_and_val_with_other_categories_are_unusable(hand_made):
    write_split(hand_made, "val", [image(1)], [box(1, 1, 3, [20, 20, 60, 60])], categories=CATEGORIES[:2])
    with pytest.raises(BadInput, match="instances_val2017.json: its categories are not train's"):
        main([str(hand_made)])
    assert problems([]) == []


def test_an_unusable_set_exits_2_with_one_error_line(tmp_path):
    """As users run it, in its own process: a set whose every box is degenerate."""
    write_split(tmp_path, "train", [image(1)], [box(1, 1, 7, [5, 5, 0, 0])])
    write_split(tmp_path, "val", [image(1)], [box(1, 1, 7, [5, 5, 10, 10])])
    quiet = {k: v for k, v in env().items() if k != "SSD_DS_DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "ssd_ds.data.check", str(tmp_path)], cwd=REPO, env=quiet,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert lines == [f"error: {tmp_path / 'annotations' / 'instances_train2017.json'}: no image with a usable box"]

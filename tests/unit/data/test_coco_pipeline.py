import json

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms import v2

from ssd_ds.anchors import default_boxes_ltrb
from ssd_ds.box_coder import BoxCoder
from ssd_ds.data import transforms
from ssd_ds.data.batch import box_slot_counts
from ssd_ds.data.coco import CocoDetection
from ssd_ds.data.loaders import TrainSampler, build_eval_loader, build_train_loader, eval_shard, sample_seed
from ssd_ds.data.transforms import CROP_MODES, EvalTransform, TrainTransform, try_crop
from ssd_ds.model_config import cpu_small


def train_transform(num_classes):
    cfg = cpu_small(num_classes)
    return TrainTransform(cfg.input_size, BoxCoder(default_boxes_ltrb(cfg.anchors))), cfg


def test_category_mapping_round_trips(synthetic_dataset):
    ds = CocoDetection(synthetic_dataset, "train")
    data = json.loads((synthetic_dataset / "annotations" / "instances_train2017.json").read_text())
    ids = [c["id"] for c in data["categories"]]
    assert sorted(ds.label_to_category) == list(range(1, len(ids) + 1))
    assert [ds.label_to_category[label] for label in range(1, len(ids) + 1)] == ids  # JSON order
    assert ids != list(range(1, len(ids) + 1))  # the generator's ids are COCO-like, with gaps
    # Every kept box's label maps back to the category of an annotation of that image.
    per_image = {}
    for ann in data["annotations"]:
        per_image.setdefault(ann["image_id"], set()).add(ann["category_id"])
    for rec in ds.records:
        assert {ds.label_to_category[int(l)] for l in rec.labels} <= per_image[rec.image_id]


def test_images_without_annotations_are_dropped_and_counted(synthetic_dataset):
    ds = CocoDetection(synthetic_dataset, "train")
    data = json.loads((synthetic_dataset / "annotations" / "instances_train2017.json").read_text())
    annotated = {a["image_id"] for a in data["annotations"]}
    empty = [img["id"] for img in data["images"] if img["id"] not in annotated]
    assert ds.stats.images_without_boxes == len(empty) > 0
    assert len(ds) == len(data["images"]) - len(empty)
    assert not set(empty) & {r.image_id for r in ds.records}


def test_degenerate_boxes_are_dropped_and_counted(dataset_copy):
    ann_file = dataset_copy / "annotations" / "instances_train2017.json"
    data = json.loads(ann_file.read_text())
    img = data["images"][0]
    base = dict(data["annotations"][0], image_id=img["id"])
    bad = [[5, 5, 0, 10], [5, 5, 10, -1], [img["width"] + 5, 5, 10, 10], [-30, -30, 20, 20]]
    for i, bbox in enumerate(bad):
        data["annotations"].append(dict(base, id=10_000 + i, bbox=bbox))
    ann_file.write_text(json.dumps(data))
    assert CocoDetection(dataset_copy, "train").stats.degenerate_boxes == len(bad)


@pytest.mark.parametrize("min_iou", [m for m in CROP_MODES if m is not None])
def test_crop_respects_mode_minimum_iou(min_iou):
    g = torch.Generator().manual_seed(1)
    accepted = 0
    for trial in range(500):
        n = 1 + trial % 2
        xy = torch.rand(n, 2, generator=g) * 0.4
        boxes = torch.cat([xy, xy + 0.2 + torch.rand(n, 2, generator=g) * 0.4], dim=1).clamp(max=1)
        window = try_crop(boxes, min_iou, max_samples=1)
        if window is None:
            continue
        accepted += 1
        assert (box_iou(boxes, torch.tensor([window])) > min_iou).all()
        w, h = window[2] - window[0], window[3] - window[1]
        assert 0.3 <= w <= 1 and 0.3 <= h <= 1 and 0.5 <= w / h <= 2
    assert accepted > 0 or min_iou >= 0.7  # high minimums may reject every draw


def test_augmented_boxes_stay_inside_the_image(synthetic_dataset):
    ds = CocoDetection(synthetic_dataset, "train")
    tt, _ = train_transform(ds.num_classes)
    for i in range(60):
        torch.manual_seed(i)
        rec = ds.records[i % len(ds)]
        image, boxes, labels = tt.augment(ds.load_image(i % len(ds)), rec.boxes_ltrb, rec.labels)
        assert image.shape == (3, 128, 128)
        assert len(boxes) == len(labels) > 0
        assert (boxes >= 0).all() and (boxes <= 1).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()


def test_flip_mirrors_boxes(monkeypatch):
    monkeypatch.setattr(transforms, "ssd_crop_window", lambda boxes, max_samples=1: None)
    monkeypatch.setattr(transforms, "FLIP_P", 1.0)  # always flip
    tt, _ = train_transform(3)
    image = Image.new("RGB", (200, 100), (0, 0, 0))
    image.paste((255, 0, 0), (20, 10, 80, 60))  # red box at l=20..80, t=10..60
    box_px = torch.tensor([[20.0, 10.0, 80.0, 60.0]])
    out, boxes, _ = tt.augment(image, box_px, torch.tensor([1]))
    assert torch.allclose(boxes, torch.tensor([[1 - 0.4, 0.1, 1 - 0.1, 0.6]]), atol=1e-5)
    red = out[0] - out[1]  # normalised red minus green: high inside the painted box only
    l, t, r, b = (boxes[0] * 128).round().int().tolist()
    assert red[t + 2 : b - 2, l + 2 : r - 2].min() > red[:, : l - 2].max()


def torchvision_augment(image, boxes_px, labels, size):
    """SPEC section 5's augmentation with torchvision's transforms drawing their own parameters, as TrainTransform
    composed it before `draw_augmentation` drew them all in one place: the crop, then RandomHorizontalFlip (p 0.5),
    Resize, ColorJitter (0.125, 0.5, 0.5, 0.05) and PILToTensor."""
    W, H = image.size
    boxes_rel = boxes_px / torch.tensor([W, H, W, H], dtype=torch.float32)
    window = transforms.ssd_crop_window(boxes_rel, 1)
    if window is not None:
        image = image.crop(transforms.window_pixels(window, W, H))
        boxes_rel, labels = transforms.apply_crop(boxes_rel, labels, window)
    W, H = image.size
    boxes = tv_tensors.BoundingBoxes(boxes_rel * torch.tensor([W, H, W, H]), format="XYXY", canvas_size=(H, W))
    image, boxes = v2.Compose([
        v2.RandomHorizontalFlip(p=0.5),
        v2.Resize((size, size), interpolation=v2.InterpolationMode.BILINEAR),
        v2.ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05),
        v2.PILToTensor(),
    ])(image, boxes)
    return image, (boxes.as_subclass(torch.Tensor) / size).clamp_(0, 1), labels


@pytest.mark.slow
def test_train_transform_is_torchvisions_pipeline(synthetic_dataset):
    """TrainTransform's samples are torchvision's pipeline's bit for bit (image, boxes, labels, encoded targets), and
    leave the RNG where it does: the draw order that exact resume and the CPU demo's AP depend on. Over seeds that
    crop, flip and order the colour ops in many ways, each counted so that the comparison is known to cover them."""
    ds = CocoDetection(synthetic_dataset, "train")
    tt, _ = train_transform(ds.num_classes)
    crops = flips = 0
    orders = set()
    for k in range(20):
        seed = sample_seed(4, 0, k)
        for index in (0, 7, 13):
            rec = ds.records[index]
            outputs = []
            for augment in (lambda image: tt(image, rec),
                            lambda image: torchvision_augment(image, rec.boxes_ltrb, rec.labels, tt.input_size)):
                image = ds.load_image(index)
                torch.manual_seed(seed)
                outputs.append((augment(image), torch.rand(())))
            (sample, cpu_next), ((image, boxes, labels), reference_next) = outputs
            assert torch.equal(sample.image, image) and torch.equal(sample.boxes, boxes)
            assert torch.equal(sample.labels, labels)
            loc_t, labels_t = tt.coder.encode(boxes, labels)
            assert torch.equal(sample.loc_t, loc_t) and torch.equal(sample.labels_t, labels_t)
            assert cpu_next == reference_next
            W, H = rec.width, rec.height
            torch.manual_seed(seed)
            draw = transforms.draw_augmentation(rec.boxes_ltrb / torch.tensor([W, H, W, H], dtype=torch.float32))
            crops += draw.window is not None
            flips += draw.flip
            orders.add(tuple(draw.colour_order.tolist()))
    assert 10 < crops < 50 and 10 < flips < 50 and len(orders) > 10  # measured: 33, 30 and 16 of 24


def test_targets_have_fixed_shapes_and_are_deterministic(synthetic_dataset):
    ds = CocoDetection(synthetic_dataset, "train")
    tt, cfg = train_transform(ds.num_classes)
    ds.transform = tt
    first = ds[(3, 1234)]
    again = ds[(3, 1234)]
    other = ds[(3, 999)]
    image, boxes, labels, loc_t, labels_t, skipped = first
    assert image.shape == (3, 128, 128) and boxes.shape == (len(labels), 4)
    assert loc_t.shape == (cfg.anchors.num_anchors, 4) and labels_t.shape == (cfg.anchors.num_anchors,)
    assert labels_t.dtype == torch.int64 and skipped == 0
    assert all(torch.equal(a, b) for a, b in zip(first[:5], again[:5]))
    assert not torch.equal(first[0], other[0])


def test_corrupt_image_is_skipped_and_counted(dataset_copy, caplog):
    ds = CocoDetection(dataset_copy, "train")
    victim = ds.records[5].path
    victim.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    ds.records[9].path.unlink()  # a missing file counts too
    ds.transform, _ = train_transform(ds.num_classes)
    sampler = TrainSampler(len(ds), seed=0)
    loader = build_train_loader(ds, sampler, batch_size=8, workers=0)
    skipped = sum(batch.skipped for batch in loader)
    assert skipped == 2
    assert "skipping unreadable image" in caplog.text and victim.name in caplog.text
    val = CocoDetection(dataset_copy, "val", transform=EvalTransform(128), skip_to_next=False)
    val.records[0].path.write_bytes(b"garbage")
    counted = sum(b[3] for b in build_eval_loader(val, 0, 1, batch_size=4, workers=0))
    seen = sum(len(b[1]) for b in build_eval_loader(val, 0, 1, batch_size=4, workers=0))
    assert counted == 1 and seen == len(val) - 1


@pytest.mark.parametrize("world", [1, 2, 3])
def test_eval_sharding_covers_each_image_once(world):
    for n in (0, 1, 7, 16, 101):
        shards = [list(eval_shard(n, r, world)) for r in range(world)]
        assert sorted(i for s in shards for i in s) == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_train_sampler_shards_and_resumes():
    full = TrainSampler(10, seed=3, rank=0, world_size=1)
    full.set_epoch(2)
    whole = list(full)
    resumed = TrainSampler(10, seed=3)
    resumed.set_epoch(2, start=4)
    assert list(resumed) == whole[4:]
    shards = []
    for r in range(3):
        s = TrainSampler(10, seed=3, rank=r, world_size=3)
        s.set_epoch(2)
        shards.append([i for i, _ in s])
    assert {i for s in shards for i in s} == set(range(10)) and all(len(s) == 4 for s in shards)
    full.set_epoch(3)
    assert [i for i, _ in full] != [i for i, _ in whole]  # reshuffled per epoch


def test_missing_inputs_are_clear_errors(tmp_path, dataset_copy):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CocoDetection(tmp_path / "nowhere", "train")
    (dataset_copy / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(FileNotFoundError, match="instances_val2017.json"):
        CocoDetection(dataset_copy, "val")
    (dataset_copy / "annotations" / "instances_train2017.json").write_text("{not json")
    with pytest.raises(ValueError, match="instances_train2017.json: malformed JSON"):
        CocoDetection(dataset_copy, "train")


def test_boxes_left_to_the_device_encode_as_the_workers_encode(synthetic_dataset):
    from ssd_ds.box_coder import encode_batch

    ds = CocoDetection(synthetic_dataset, "train")
    encoded, cfg = train_transform(ds.num_classes)
    raw = TrainTransform(cfg.input_size, None, max_boxes=16)
    for index in range(6):
        ds.transform = encoded
        in_worker = ds[(index, 77 + index)]
        ds.transform = raw
        left = ds[(index, 77 + index)]
        assert left.loc_t is None and left.labels_t is None
        assert torch.equal(in_worker.image, left.image) and torch.equal(in_worker.boxes, left.boxes)  # one draw
        n = len(left.labels)
        assert n > 0 and left.boxes.shape == (n, 4)
        loc_t, labels_t = encode_batch(left.boxes[None], left.labels[None], torch.tensor([n]),
                                       encoded.coder.dboxes_ltrb)
        assert torch.equal(labels_t[0], in_worker.labels_t)
        assert torch.allclose(loc_t[0], in_worker.loc_t, atol=1e-5)


def test_images_ship_as_uint8_and_normalise_on_the_device_as_the_workers_did(synthetic_dataset):
    from torchvision.transforms import v2

    from ssd_ds.data.transforms import MEAN, STD, normalize_images

    train = CocoDetection(synthetic_dataset, "train", transform=train_transform(7)[0])
    val = CocoDetection(synthetic_dataset, "val", transform=EvalTransform(128), skip_to_next=False)
    images = torch.stack([train[0].image, train[1].image, val[0][0]])
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 128, 128)
    # What the workers computed per image before images shipped as uint8: the same values, bit for bit.
    per_image = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    want = torch.stack([per_image(image) for image in images])
    got = normalize_images(images, torch.channels_last)
    assert got.dtype == torch.float32 and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, want)


@pytest.mark.slow
def test_batches_pad_boxes_to_a_power_of_two_above_their_largest_count(synthetic_dataset):
    from ssd_ds.box_coder import encode_batch

    ds = CocoDetection(synthetic_dataset, "train")
    encoded, cfg = train_transform(ds.num_classes)
    for coder in (None, encoded.coder):  # the device encodes, or the workers do: one batch shape either way
        ds.transform = TrainTransform(cfg.input_size, coder, max_boxes=128)
        for batch in build_train_loader(ds, TrainSampler(len(ds), seed=3), batch_size=8, workers=0):
            count = int(batch.num_boxes.max())
            G = batch.boxes.shape[1]
            assert G in box_slot_counts(128)  # the counts the warm-up encodes at
            assert batch.labels.shape == (8, G) and batch.images.shape == (8, 3, 128, 128)
            assert G >= max(count, 8) and G & (G - 1) == 0 and (G == 8 or G < 2 * count)
            assert torch.equal(batch.num_boxes, (batch.labels > 0).sum(dim=1))
            assert (batch.loc_t is None) == (coder is None)
            # Padding rows never match: the same targets as a batch padded to 128.
            padded = (torch.nn.functional.pad(batch.boxes, (0, 0, 0, 128 - G)),
                      torch.nn.functional.pad(batch.labels, (0, 128 - G)))
            want = encode_batch(*padded, batch.num_boxes, encoded.coder.dboxes_ltrb)
            got = encode_batch(batch.boxes, batch.labels, batch.num_boxes, encoded.coder.dboxes_ltrb)
            assert all(torch.equal(g, w) for g, w in zip(got, want))
            if coder is not None:
                assert torch.equal(batch.labels_t, got[1]) and torch.allclose(batch.loc_t, got[0], atol=1e-5)

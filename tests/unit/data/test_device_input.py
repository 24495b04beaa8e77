"""The device input path (ssd_ds/data/device_input.py) against the CPU path (transforms.TrainTransform): the same
parameters from the same seed, the same distributions, close pixels, and awkward files handled like PIL handles them.
CPU tensors only; the CUDA decode has its own test, skipped without a GPU."""

import contextlib
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torch.utils.data import DataLoader
from torchvision.io import ImageReadMode, decode_image
from torchvision.ops import box_iou
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

import ssd_ds.data.transforms as transforms
from ssd_ds.data import device_input
from ssd_ds.data.annotations import ImageRecord
from ssd_ds.data.batch import box_slots
from ssd_ds.data.coco import CocoDetection, read_image_bytes
from ssd_ds.data.device_input import (
    BatchDecoder,
    CompressedBatch,
    CompressedSample,
    CompressedTrainTransform,
    collate_compressed,
    colour_jitter,
    decode_and_augment,
    decode_images,
    is_progressive_jpeg,
)
from ssd_ds.data.loaders import TrainSampler, build_train_loader, sample_seed
from ssd_ds.data.transforms import TrainTransform

# torchvision 0.29 deprecates its decoders in favour of TorchCodec, with a warning on every call.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

CPU = torch.device("cpu")
JITTER = dict(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05)  # SPEC section 5


def bytes_dataset(root, transform: CompressedTrainTransform) -> CocoDetection:
    """The training set as the trainer wires the device path: the workers read bytes, the device decodes."""
    return CocoDetection(root, "train", transform=transform, decode=False)


def seeded(fn, seed: int):
    """fn() under `seed` as CocoDetection seeds a sample, and the RNG's next draw after it: equal next draws mean
    both paths consumed the same number of draws.

    The CPU generator is seeded as torch.manual_seed seeds it, without the lazy CUDA seeding that records the stack,
    which costs milliseconds a call at pytest's depth."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return fn(), torch.rand(())


def pil_image(path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")  # as CocoDetection.load_image


def cpu_sample(transform: TrainTransform, rec: ImageRecord, seed: int):
    return seeded(lambda: transform(pil_image(rec.path), rec), seed)


def device_sample(transform: CompressedTrainTransform, rec: ImageRecord, seed: int):
    return seeded(lambda: transform(read_image_bytes(rec.path), rec), seed)


def device_images(samples, size: int, chunk: int = 64) -> torch.Tensor:
    return torch.cat([decode_and_augment(collate_compressed(samples[i : i + chunk]), CPU, size)[0].images
                      for i in range(0, len(samples), chunk)])


@contextlib.contextmanager
def recording_cpu_draws():
    """Records, per TrainTransform call, what it drew (transforms.AugmentationDraw's fields: the relative crop window
    or None, the flip, the colour factors and order) and the pixels it cut (or None), by spying on the calls that
    make them."""
    draws = []
    draw_augmentation, pil_crop = transforms.draw_augmentation, Image.Image.crop

    def draw_spy(boxes, max_crop_samples):
        draw = draw_augmentation(boxes, max_crop_samples)
        draws.append(dict(draw._asdict(), cut=None))
        return draw

    def pil_crop_spy(self, box=None):
        draws[-1]["cut"] = tuple(box)
        return pil_crop(self, box)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(transforms, "draw_augmentation", draw_spy)
        mp.setattr(Image.Image, "crop", pil_crop_spy)
        yield draws


def rounded_window(window, rec: ImageRecord) -> tuple[int, int, int, int]:
    """The window rounded to whole pixels, which both paths cut before 877bd21 (they now truncate: window_pixels):
    the samples where the two differ are the ones a cut edge moved on."""
    if window is None:
        return 0, 0, rec.width, rec.height
    l, t, r, b = window
    W, H = rec.width, rec.height
    return round(l * W), round(t * H), round(r * W), round(b * H)


@pytest.fixture(scope="module")
def records(synthetic_dataset) -> list[ImageRecord]:
    return CocoDetection(synthetic_dataset, "train").records


@pytest.mark.slow
def test_same_seed_draws_the_same_parameters(records):
    cpu, device = TrainTransform(32, None), CompressedTrainTransform()
    windows_moved = 0
    for k in range(300):
        rec, seed = records[k % len(records)], sample_seed(7, 0, k)
        with recording_cpu_draws() as draws:
            cpu_out, cpu_next = cpu_sample(cpu, rec, seed)
        (draw,) = draws
        out, next_draw = device_sample(device, rec, seed)
        assert next_draw == cpu_next  # the same number of draws
        assert out.flip == draw["flip"]
        assert out.colour.tolist() == list(draw["colour"])
        assert torch.equal(out.colour_order, draw["colour_order"])
        W, H = rec.width, rec.height
        if draw["window"] is None:
            assert out.window.tolist() == [0, 0, W, H]
        else:
            l, t, r, b = draw["window"]
            assert out.window.tolist() == [int(l * W), int(t * H), int(r * W), int(b * H)]  # truncated (SPEC 5)
            assert tuple(out.window.tolist()) == draw["cut"]  # the pixels the CPU path cut
        assert (out.window - torch.tensor(rounded_window(draw["window"], rec))).abs().max() <= 1
        windows_moved += out.window.tolist() != list(rounded_window(draw["window"], rec))
        # The boxes keep the fractional window on both paths: equal up to float rounding.
        torch.testing.assert_close(out.boxes, cpu_out.boxes, atol=1e-5, rtol=0)
        assert torch.equal(out.labels, cpu_out.labels)
    assert windows_moved > 0  # truncation and rounding did differ somewhere: the bound above was exercised


def test_colour_jitter_has_torchvision_tensor_semantics():
    """Batched, per-image factors and orders, against torchvision's own ops applied image by image."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(48, 3, 20, 24, generator=g)
    images[:8] = (images[:8] * 4).round() / 4  # channels tied for the maximum, black and white pixels
    images[8:12] = images[8:12, :1]  # grey: no hue
    low, high = torch.tensor([0.875, 0.5, 0.5, -0.05]), torch.tensor([1.125, 1.5, 1.5, 0.05])
    factors = low + (high - low) * torch.rand(48, 4, generator=g)
    factors[12:16, 3] = torch.tensor([-0.5, 0.5, 0.25, -0.3])  # hue shifts past the sector edges
    order = torch.stack([torch.randperm(4, generator=g) for _ in range(48)])
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    expected = []
    for image, f, o in zip(images, factors, order):
        for op in o.tolist():
            image = ops[op](image, float(f[op]))
        expected.append(image)
    torch.testing.assert_close(colour_jitter(images, factors, order), torch.stack(expected), atol=1e-5, rtol=0)


def test_crop_resize_and_flip_match_pil(records):
    """With the colour left alone, a given window and flip give PIL's crop -> flip -> bilinear resize (the CPU path's
    operations) up to rounding: the device resizes in float and flips after resizing."""
    recs = records[:6]
    samples = []
    for i, rec in enumerate(recs):
        data, W, H = read_image_bytes(rec.path)
        window = torch.tensor([W // 7, H // 5, W - W // 9, H - 2]) if i % 3 else torch.tensor([0, 0, W, H])
        samples.append(CompressedSample(
            data=data, window=window, flip=i % 2 == 1, colour=torch.tensor([1.0, 1.0, 1.0, 0.0]),  # colour unchanged
            colour_order=torch.arange(4), boxes=torch.tensor([[0.2, 0.2, 0.6, 0.6]]), labels=torch.tensor([1]),
            image_id=rec.image_id, skipped=0,
        ))
    images = decode_and_augment(collate_compressed(samples), CPU, 300)[0].images
    for image, sample, rec in zip(images, samples, recs):
        expected = pil_image(rec.path).crop(tuple(sample.window.tolist()))
        if sample.flip:
            expected = expected.transpose(Image.FLIP_LEFT_RIGHT)
        expected = TF.pil_to_tensor(expected.resize((300, 300), Image.BILINEAR))
        diff = (image.float() - expected.float()).abs()
        assert diff.max() <= 1 and diff.mean() < 0.3  # measured: max 1, mean 0.18 (PIL rounds its resize)


def test_window_is_clamped_to_the_decoded_image(records):
    """A header that claimed a larger image than the data holds placed the window: it is cut at the data's edge."""
    data, W, H = read_image_bytes(records[0].path)
    whole, beyond = (CompressedSample(data, torch.tensor(window), False, torch.tensor([1.0, 1.0, 1.0, 0.0]),
                                      torch.arange(4), torch.tensor([[0.2, 0.2, 0.6, 0.6]]), torch.tensor([1]), 1, 0)
                     for window in ([0, 0, W, H], [0, 0, W + 40, H + 9]))
    images = decode_and_augment(collate_compressed([whole, beyond]), CPU, 32)[0].images
    assert torch.equal(images[0], images[1])


@pytest.mark.slow
def test_pixels_close_to_the_cpu_path(records):
    """The same sample and seed through TrainTransform and the device path, at the real size.

    Both paths cut the same pixels (window_pixels). Measured mean |difference| per image: 1.16-2.37, most of it PIL
    truncating after each blend (the mean signed difference is 1.42). Before both truncated, the samples where
    rounding would have moved a cut edge differed by 2.7-7.3 (per-pixel noise, a small crop enlarged up to ~3x):
    the split below keeps those apart."""
    cpu, device = TrainTransform(300, None), CompressedTrainTransform()
    seeds = [sample_seed(3, 0, k) for k in range(24)]
    recs = [records[k % len(records)] for k in range(24)]
    with recording_cpu_draws() as draws:
        cpu_images = torch.stack([cpu_sample(cpu, rec, seed)[0].image for rec, seed in zip(recs, seeds)])
    samples = [device_sample(device, rec, seed)[0] for rec, seed in zip(recs, seeds)]
    images = device_images(samples, 300)
    assert images.shape == cpu_images.shape == (24, 3, 300, 300) and images.dtype == torch.uint8
    diff = (images.float() - cpu_images.float()).abs().mean((1, 2, 3))
    same_cut = torch.tensor([s.window.tolist() == list(rounded_window(d["window"], r))
                             for s, d, r in zip(samples, draws, recs)])
    assert same_cut.any() and not same_cut.all()
    assert diff[same_cut].max() < 3.0
    assert diff[~same_cut].max() < 12.0
    assert diff.max() < 3.0  # the same cut everywhere: no sample is far off


def crop_stats(windows_px, recs) -> np.ndarray:
    """[N,3]: the window's area fraction, its aspect (relative w/h, which SPEC bounds to [0.5, 2]) and its least IoU
    with the image's boxes."""
    rows = []
    for (l, t, r, b), rec in zip(windows_px, recs):
        W, H = rec.width, rec.height
        iou = box_iou(rec.boxes_ltrb, torch.tensor([[l, t, r, b]], dtype=torch.float32)).min()
        rows.append(((r - l) * (b - t) / (W * H), (r - l) / W * H / (b - t), float(iou)))
    return np.array(rows)


def channel_stats(images: torch.Tensor) -> np.ndarray:
    """[N,6]: each image's per-channel mean and standard deviation."""
    x = images.float()
    return torch.cat([x.mean((2, 3)), x.std((2, 3))], dim=1).numpy()


@pytest.mark.slow
def test_distributions_match_the_cpu_path(records, monkeypatch):
    """Two-sample tests, CPU path against device path over the same images with independent seeds, on the crop
    (area, aspect, least IoU with the boxes), the flip rate and the images' channel means and spreads; then the same
    tests reject deliberately wrong variants of the device path, so they have the power to catch such a bug.

    The CPU path's images are darker by a fixed offset (PIL truncates after each blend; measured 1.35-1.48 grey
    levels), which 1000 samples can detect; it is measured on same-seed pairs, bounded, and removed from the means.
    Measured p-values (fixed seeds): crop area 0.10, aspect 0.50, IoU 0.69; flip 0.82; channel means 0.29-0.97
    (0.007-0.47 without the offset); spreads 0.79-0.97. The variants: flip p 0.25 -> 3e-31, windows of at least half
    the sides -> 2e-6 (area), brightness range doubled -> 1e-8 to 4e-6 (means)."""
    N, S, alpha = 1000, 48, 1e-3  # 10 tests at 1e-3: about 1% chance that a correct pipeline fails
    recs = [records[k % len(records)] for k in range(N)]
    cpu_seeds, device_seeds = [sample_seed(1, 0, k) for k in range(N)], [sample_seed(2, 0, k) for k in range(N)]
    cpu = TrainTransform(S, None)
    with recording_cpu_draws() as draws:
        cpu_images = torch.stack([cpu_sample(cpu, rec, seed)[0].image for rec, seed in zip(recs, cpu_seeds)])
    cpu_crop = crop_stats([rounded_window(d["window"], rec) for d, rec in zip(draws, recs)], recs)
    cpu_flips = sum(d["flip"] for d in draws)
    cpu_channels = channel_stats(cpu_images)

    paired = device_images([device_sample(CompressedTrainTransform(), rec, seed)[0]
                            for rec, seed in zip(recs[:200], cpu_seeds[:200])], S)
    offset = (channel_stats(paired) - cpu_channels[:200]).mean(0)
    offset[3:] = 0  # the spreads are compared as they are
    assert np.abs(offset[:3]).max() < 2.5  # measured 1.35-1.48

    def p_values(transform: CompressedTrainTransform, images: bool = True) -> dict[str, float]:
        samples = [device_sample(transform, rec, seed)[0] for rec, seed in zip(recs, device_seeds)]
        crop = crop_stats([s.window.tolist() for s in samples], recs)
        flips = sum(s.flip for s in samples)
        p = {name: stats.ks_2samp(cpu_crop[:, j], crop[:, j]).pvalue
             for j, name in enumerate(["area", "aspect", "iou"])}
        p["flip"] = stats.chi2_contingency([[cpu_flips, N - cpu_flips], [flips, N - flips]]).pvalue
        if images:
            channels = channel_stats(device_images(samples, S))
            p |= {f"channel {j}": stats.ks_2samp(cpu_channels[:, j] + offset[j], channels[:, j]).pvalue
                  for j in range(6)}
        return p

    p = p_values(CompressedTrainTransform())
    assert min(p.values()) > alpha, p
    with monkeypatch.context() as mp:
        mp.setattr(transforms, "FLIP_P", 0.25)
        assert p_values(CompressedTrainTransform(), images=False)["flip"] < alpha
    with monkeypatch.context() as mp:
        mp.setattr(transforms, "CROP_MIN_SIDE", 0.5)  # windows drawn at least half the image's sides
        assert p_values(CompressedTrainTransform(), images=False)["area"] < alpha
    with monkeypatch.context() as mp:
        mp.setattr(transforms, "COLOUR_JITTER", v2.ColorJitter(**dict(JITTER, brightness=0.25)))
        p = p_values(CompressedTrainTransform())
    assert min(p[f"channel {j}"] for j in range(3)) < alpha, p


def test_loader_batches(synthetic_dataset):
    """Through CocoDetection's per-sample seeding and a DataLoader: the Batch the device path makes has the CPU
    path's shapes, dtypes and boxes."""
    S, B = 64, 8
    cpu_set = CocoDetection(synthetic_dataset, "train", transform=TrainTransform(S, None))
    device_set = bytes_dataset(synthetic_dataset, CompressedTrainTransform())
    cpu_loader = build_train_loader(cpu_set, TrainSampler(len(cpu_set), seed=5), B, workers=0)
    device_loader = DataLoader(device_set, batch_size=B, sampler=TrainSampler(len(device_set), seed=5),
                               drop_last=True, collate_fn=collate_compressed)
    paths = {rec.image_id: rec.path for rec in device_set.records}
    for cpu_batch, compressed in zip(cpu_loader, device_loader):
        assert isinstance(compressed, CompressedBatch) and compressed.data.dim() == 1
        files = compressed.files()  # one tensor for the batch's bytes, each file a view of it
        assert len(files) == B and all(f.untyped_storage().data_ptr() == compressed.data.untyped_storage().data_ptr()
                                       for f in files)
        for f, image_id in zip(files, compressed.image_id.tolist()):
            assert bytes(f.numpy()) == paths[image_id].read_bytes()
        batch, failed = decode_and_augment(compressed, CPU, S)
        assert failed == 0 and batch.skipped == 0 and batch.loc_t is None and batch.labels_t is None
        G = batch.boxes.shape[1]
        assert G == box_slots(int(batch.num_boxes.max())) and G >= 8 and G & (G - 1) == 0
        assert batch.images.shape == (B, 3, S, S) and batch.images.dtype == torch.uint8
        assert batch.boxes.shape == (B, G, 4) and batch.boxes.dtype == torch.float32
        assert batch.labels.shape == (B, G) and batch.labels.dtype == torch.int64
        assert 0 <= batch.boxes.min() and batch.boxes.max() <= 1
        torch.testing.assert_close(batch.boxes, cpu_batch.boxes, atol=1e-5, rtol=0)
        assert torch.equal(batch.labels, cpu_batch.labels) and torch.equal(batch.num_boxes, cpu_batch.num_boxes)
        assert (batch.images.float() - cpu_batch.images.float()).abs().mean() < 8


@pytest.fixture
def awkward_files(tmp_path) -> dict[str, ImageRecord]:
    """One smooth, non-square picture (so a rotation or a one-pixel shift shows, but barely changes the pixels)
    saved in the ways real data sets go wrong."""
    y, x = np.mgrid[0:80, 0:120]
    picture = np.stack([x * 2, y * 3, 255 - x - y], axis=-1).clip(0, 255).astype(np.uint8)
    picture[20:50, 30:70] = (200, 40, 90)
    image = Image.fromarray(picture)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "rgb.jpg", quality=90)
    image.convert("L").save(tmp_path / "grey.jpg", quality=90)
    image.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)
    image.save(tmp_path / "png.jpg", format="PNG")
    image.save(tmp_path / "exif.jpg", quality=90, exif=exif)
    jpeg = (tmp_path / "rgb.jpg").read_bytes()
    body = jpeg.find(b"\xff\xda")  # start of scan: the header ends here
    (tmp_path / "truncated_header.jpg").write_bytes(jpeg[:100])
    (tmp_path / "garbage.jpg").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8)))
    (tmp_path / "truncated_body.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "garbage_body.jpg").write_bytes(jpeg[: body + 14] + bytes(2000))
    names = ["rgb", "grey", "cmyk", "png", "exif", "truncated_header", "garbage", "truncated_body", "garbage_body",
             "missing"]
    return {name: ImageRecord(image_id=i + 1, path=tmp_path / f"{name}.jpg", height=80, width=120,
                              boxes_ltrb=torch.tensor([[30.0, 20.0, 70.0, 50.0], [0.0, 0.0, 119.0, 79.0]]),
                              labels=torch.tensor([3, 1]))
            for i, name in enumerate(names)}


@pytest.mark.parametrize("name", ["rgb", "grey", "cmyk", "png", "exif"])
def test_awkward_files_decode_like_pil(awkward_files, name):
    rec = awkward_files[name]
    data, W, H = read_image_bytes(rec.path)
    assert (W, H) == (120, 80)
    (decoded,) = decode_images([data], CPU)
    diff = (decoded.float() - TF.pil_to_tensor(pil_image(rec.path)).float()).abs()
    assert decoded.shape == (3, 80, 120) and diff.max() <= 1  # measured: identical (both libjpeg-turbo)
    if name == "exif":  # the file does ask for a rotation, which neither path applies
        assert decode_image(data, mode=ImageReadMode.RGB, apply_exif_orientation=True).shape == (3, 120, 80)
    cpu, device = TrainTransform(64, None), CompressedTrainTransform()
    compared = 0
    for seed in range(16):
        with recording_cpu_draws() as draws:
            cpu_out = cpu_sample(cpu, rec, seed)[0]
        sample = device_sample(device, rec, seed)[0]
        (image,) = device_images([sample], 64)
        assert image.shape == cpu_out.image.shape
        if sample.window.tolist() == list(rounded_window(draws[0]["window"], rec)):  # the same cut: comparable
            compared += 1
            assert (image.float() - cpu_out.image.float()).abs().mean() < 3.5  # measured 0.97-2.41
    assert compared >= 2


@pytest.mark.parametrize("name", ["truncated_header", "garbage", "missing"])
def test_unreadable_header_is_skipped_with_a_warning(awkward_files, name, caplog):
    with caplog.at_level(logging.WARNING, logger="ssd_ds.data.device_input"):
        assert read_image_bytes(awkward_files[name].path) is None
    assert f"{name}.jpg" in caplog.text


@pytest.mark.parametrize("name", ["truncated_body", "garbage_body"])
def test_undecodable_image_is_black_without_boxes(awkward_files, name, caplog):
    transform = CompressedTrainTransform()
    good = [device_sample(transform, awkward_files[n], seed=1)[0] for n in ("rgb", "grey")]
    bad = device_sample(transform, awkward_files[name], seed=1)[0]
    alone, _ = decode_and_augment(collate_compressed(good), CPU, 64)
    compressed = collate_compressed([good[0], bad, good[1]])
    with caplog.at_level(logging.WARNING, logger="ssd_ds.data.device_input"):
        batch, failed = decode_and_augment(compressed, CPU, 64)
    assert failed == 1 and f"ids [{awkward_files[name].image_id}]" in caplog.text
    assert not batch.images[1].any() and not batch.labels[1].any() and not batch.boxes[1].any()
    assert batch.num_boxes[1] == 0 and bad.labels.any()
    assert torch.equal(batch.images[[0, 2]], alone.images)  # the rest of the batch is intact
    assert torch.equal(batch.labels[[0, 2]], alone.labels) and torch.equal(batch.boxes[[0, 2]], alone.boxes)
    assert compressed.labels[1].any()  # the caller's batch is left as it was


def test_progressive_jpegs_are_told_from_the_header(awkward_files, tmp_path):
    Image.open(awkward_files["rgb"].path).save(tmp_path / "progressive.jpg", quality=90, progressive=True)
    read = lambda name: read_image_bytes(tmp_path / f"{name}.jpg")[0]  # noqa: E731
    assert is_progressive_jpeg(read("progressive"))
    for name in ("rgb", "grey", "cmyk", "exif", "png"):  # baseline JPEGs (EXIF before the frame header), a PNG
        assert not is_progressive_jpeg(read_image_bytes(awkward_files[name].path)[0]), name
    for name in ("truncated_header", "garbage"):
        assert not is_progressive_jpeg(torch.frombuffer(bytearray(awkward_files[name].path.read_bytes()),
                                                        dtype=torch.uint8))
    sample = CompressedTrainTransform()((read("progressive"), 120, 80), awkward_files["rgb"])
    assert sample.progressive and collate_compressed([sample]).progressive.tolist() == [True]


def test_decoder_counts_each_path_on_the_cpu(awkward_files):
    decoder = BatchDecoder(CPU)
    recs = [awkward_files[n] for n in ("rgb", "png", "garbage_body", "cmyk")]
    files = [torch.frombuffer(bytearray(rec.path.read_bytes()), dtype=torch.uint8) for rec in recs]
    images = decoder(files, torch.tensor([False, False, False, True]))
    assert [image is None for image in images] == [False, False, True, False]
    assert decoder.counts.take() == {"nvjpeg_batched": 0, "nvjpeg_per_image": 0, "host": 3, "host_fallback": 0,
                                     "failed": 1, "progressive": 1}
    assert decoder.counts.take() == dict.fromkeys(("nvjpeg_batched", "nvjpeg_per_image", "host", "host_fallback",
                                                   "failed", "progressive"), 0)


class ScriptedNvjpeg:
    """decode_jpeg and the stream sync as BatchDecoder calls them on CUDA, without a GPU: records every call in
    order; `refuse` maps a file's first byte (or "batch") to the error nvJPEG raises for it."""

    def __init__(self, refuse: dict):
        self.calls, self.refuse = [], refuse

    def synchronize(self):
        self.calls.append("sync")

    def decode_jpeg(self, data, **kwargs):
        self.calls.append("decode")
        key = "batch" if isinstance(data, list) else int(data[0])
        if key in self.refuse:
            raise RuntimeError(self.refuse[key])
        return [torch.zeros(3, 2, 2, dtype=torch.uint8)] * len(data) if key == "batch" else torch.zeros(3, 2, 2)


@pytest.mark.parametrize("refuse, counts, warned", [
    ({}, dict(nvjpeg_batched=3), []),
    ({"batch": "bad batch", 2: "unsupported"}, dict(nvjpeg_per_image=2, host_fallback=1),
     ["batched nvJPEG decode failed", "nvJPEG refused an image"]),
    ({0: "nvjpeg missing"}, dict(host_fallback=3), ["nvJPEG cannot decode"]),  # the probe's JPEG starts with 0xff
], ids=["batched", "per_image_and_host", "no_nvjpeg"])
def test_cuda_decoder_syncs_before_every_decode_counts_paths_and_warns_once(monkeypatch, caplog, refuse, counts,
                                                                           warned):
    nvjpeg = ScriptedNvjpeg({(0xFF if k == 0 else k): v for k, v in refuse.items()})
    monkeypatch.setattr(device_input, "decode_jpeg", nvjpeg.decode_jpeg)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: nvjpeg)
    decoder = BatchDecoder(torch.device("cuda"))
    monkeypatch.setattr(decoder, "_host", lambda data: torch.zeros(3, 2, 2))  # the host decode has its own tests
    files = [torch.tensor([1, 0], dtype=torch.uint8), torch.tensor([2, 0], dtype=torch.uint8),
             torch.tensor([3, 0], dtype=torch.uint8)]
    with caplog.at_level(logging.WARNING, logger="ssd_ds.data.device_input"):
        for _ in range(2):  # a second batch: the same causes warn no more
            assert all(image is not None for image in decoder(files, torch.zeros(3, dtype=torch.bool)))
    want = dict.fromkeys(("nvjpeg_batched", "nvjpeg_per_image", "host", "host_fallback", "failed", "progressive"), 0)
    want.update({k: 2 * v for k, v in counts.items()})
    assert decoder.counts.take() == want
    assert "decode" in nvjpeg.calls
    assert nvjpeg.calls[0] == "sync"
    assert all(a == "sync" for a, b in zip(nvjpeg.calls, nvjpeg.calls[1:]) if b == "decode")
    assert [r.getMessage().split(" (")[0].split(" on ")[0] for r in caplog.records] == warned


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG needs a CUDA device")
def test_cuda_decode_falls_back_per_image(awkward_files):
    """Batched nvJPEG, with the files it refuses (PNG bytes at least) decoded on the CPU, and bytes that no decoder
    reads a counted black image."""
    cuda = torch.device("cuda")
    recs = [awkward_files[n] for n in ("rgb", "grey", "cmyk", "png", "exif", "garbage")]
    # Raw bytes, sizes from the records: no header reads in "garbage", which the workers would have skipped.
    data = [torch.frombuffer(bytearray(rec.path.read_bytes()), dtype=torch.uint8) for rec in recs]
    decoded = decode_images(data, cuda)
    assert decoded[-1] is None
    for rec, image in zip(recs[:-1], decoded[:-1]):
        assert image.device.type == "cuda" and image.shape == (3, 80, 120)
        pil = TF.pil_to_tensor(pil_image(rec.path)).float()
        assert (image.cpu().float() - pil).abs().mean() < 2, rec.path  # nvJPEG's IDCT differs from libjpeg's a little
    transform = CompressedTrainTransform()
    samples = [seeded(lambda: transform((d, rec.width, rec.height), rec), 2)[0] for d, rec in zip(data, recs)]
    batch, failed = decode_and_augment(collate_compressed(samples), cuda, 64)
    assert failed == 1 and batch.images.device.type == "cuda" and not batch.labels[-1].any()

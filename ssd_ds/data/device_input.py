"""The training input path with decode and augmentation on the device (SPEC sections 5 and 9: NVIDIA used DALI).

On a GPU the CPU path (PIL decode and augmentation in the loader workers, transforms.py) is the bottleneck. Here the
workers only read each file's bytes and its size from the header, and draw the augmentation parameters; the device
decodes the batch (nvJPEG on CUDA) and crops, resizes, flips and colour-jitters it with batched tensor ops. On CPU
tensors the same code runs with CPU decoding, which is how it is tested.

The parameters come from torch's global RNG (seeded per sample by CocoDetection) through `TrainTransform`'s own
draw, `transforms.draw_augmentation`: one seed gives one augmentation on either path, and resuming is exact; both cut
the crop at the same pixels (`transforms.window_pixels`). What differs, by design:
- the resize and the jitter run in float32 and round to uint8 once, where PIL rounds after the resize and truncates
  after each of its three blends (brightness, contrast, saturation), so the CPU path's images are about 1.4 grey
  levels darker on average; the jitter has torchvision's tensor semantics, whose hue shift is continuous where
  PIL's moves in steps of 1/255 of a turn;
- the flip comes after the resize: they commute, and a flip of the batch is one op;
- a file whose header reads but whose data does not decode becomes a black image without boxes, counted, since
  the workers never decode it and cannot fall back to the next image as the CPU path does.

EXIF orientation is not applied, as PIL's `Image.open(...).convert("RGB")` does not: COCO's boxes refer to the
stored pixels.

A batch leaves the workers as one uint8 tensor of all its files back to back, with offsets: one shared-memory block
and so one file descriptor a batch (torch passes each tensor of a worker's batch through its own), where a tensor
per file needed one per image and ran out of `ulimit -n 1024` at micro-batch 456. `BatchDecoder` counts which path
decoded each image (batched nvJPEG, nvJPEG image by image, the host, failed) and warns once per cause of a fallback;
the counts go to metrics.jsonl and TensorBoard with the training records.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, encode_jpeg

from ssd_ds.data.annotations import ImageRecord
from ssd_ds.data.batch import Batch, pad_boxes
from ssd_ds.data.transforms import (
    CONTRAST,
    CROP_MAX_SAMPLES,
    HUE,
    SATURATION,
    apply_crop,
    check_sample_box_count,
    draw_augmentation,
    window_pixels,
)

log = logging.getLogger(__name__)


class CompressedSample(NamedTuple):
    """One training sample as a worker ships it: the encoded file and the augmentation to apply to it."""

    data: torch.Tensor  # [N] uint8, the file's bytes
    window: torch.Tensor  # [4] int64, crop ltrb in pixels of the stored image (the whole image when not cropped)
    flip: bool
    colour: torch.Tensor  # [4] float32 factors: brightness, contrast, saturation, hue
    colour_order: torch.Tensor  # [4] int64, the order in which the four colour ops apply
    boxes: torch.Tensor  # [G,4] float32 relative ltrb in the output image
    labels: torch.Tensor  # [G] int64 in 1..K
    image_id: int  # names the image when its data does not decode
    skipped: int  # unreadable images the dataset passed over to reach this one
    progressive: bool = False  # a progressive JPEG: nvJPEG decodes these on the host (its hybrid backend)


class CompressedBatch(NamedTuple):
    """Collated CompressedSamples, boxes padded to `box_slots` as in a Batch."""

    data: torch.Tensor  # [N] uint8: the B files back to back (one shared-memory block: one file descriptor)
    offsets: torch.Tensor  # [B+1] int64: file i is data[offsets[i]:offsets[i+1]]
    window: torch.Tensor  # [B,4] int64
    flip: torch.Tensor  # [B] bool
    colour: torch.Tensor  # [B,4] float32
    colour_order: torch.Tensor  # [B,4] int64
    boxes: torch.Tensor  # [B,G,4] float32; rows past num_boxes are zero
    labels: torch.Tensor  # [B,G] int64; 0 past num_boxes
    num_boxes: torch.Tensor  # [B] int64
    image_id: torch.Tensor  # [B] int64
    skipped: int
    progressive: torch.Tensor  # [B] bool

    def pin_memory(self) -> CompressedBatch:
        """What the DataLoader's pin thread calls (before its namedtuple rule): every tensor the device copies is
        pinned, so those copies are asynchronous; the files are not, since nvJPEG reads them from host memory anyway
        and pinning would copy the whole batch's bytes once more; offsets, windows and ids are read on the host."""
        return self._replace(**{name: getattr(self, name).pin_memory()
                                for name in ("flip", "colour", "colour_order", "boxes", "labels", "num_boxes")})

    def files(self) -> list[torch.Tensor]:
        """B x [N_i] uint8: views of `data`, no copy (decoders read them from host memory)."""
        bounds = self.offsets.tolist()
        return [self.data[start:end] for start, end in zip(bounds[:-1], bounds[1:])]


def is_progressive_jpeg(data: torch.Tensor) -> bool:
    """Whether a file's first frame header is a progressive JPEG's (SOF2, SOF6, SOF10, SOF14), walking the marker
    segments from the start (a few header segments: cheap in a worker). False for anything that is not a JPEG."""
    raw = memoryview(data.numpy())
    if bytes(raw[:2]) != b"\xff\xd8":
        return False
    i = 2
    while i + 4 <= len(raw):
        if raw[i] != 0xFF:
            return False
        marker = raw[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame (not DHT, JPG, DAC)
            return marker in (0xC2, 0xC6, 0xCA, 0xCE)
        if marker == 0xDA:  # start of scan before any frame header: not a valid JPEG
            return False
        i += 2 + (raw[i + 2] << 8 | raw[i + 3])
    return False


class CompressedTrainTransform:
    """((bytes, width, height), ImageRecord, skipped) -> CompressedSample: TrainTransform's draw
    (`draw_augmentation`), no pixels.

    As TrainTransform without a coder, at most `max_boxes` boxes an image (the device encoder's limit)."""

    def __init__(self, max_crop_samples: int = CROP_MAX_SAMPLES, max_boxes: int = 128):
        self.max_crop_samples = max_crop_samples
        self.max_boxes = max_boxes

    def __call__(self, encoded: tuple[torch.Tensor, int, int], rec: ImageRecord, skipped: int = 0) -> CompressedSample:
        data, width, height = encoded
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes, labels = rec.boxes_ltrb / scale, rec.labels
        draw = draw_augmentation(boxes, self.max_crop_samples)
        if draw.window is None:
            window_px = (0, 0, width, height)
        else:
            window_px = window_pixels(draw.window, width, height)
            boxes, labels = apply_crop(boxes, labels, draw.window)
        if draw.flip:
            boxes = torch.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], dim=1)
        check_sample_box_count(rec, len(labels), self.max_boxes)
        colour = torch.tensor(draw.colour, dtype=torch.float32)
        # clamp, as TrainTransform does: the crop's float arithmetic can leave 1 + 1e-7 at an edge
        return CompressedSample(data, torch.tensor(window_px), draw.flip, colour, draw.colour_order, boxes.clamp(0, 1),
                                labels, rec.image_id, skipped, is_progressive_jpeg(data))


def collate_compressed(samples: list[CompressedSample]) -> CompressedBatch:
    """The files concatenated with their offsets (one tensor, not one a file: see the module docstring), the rest
    stacked, boxes padded to `box_slots` as `collate_train` pads them, `skipped` summed."""
    boxes, labels, num_boxes = pad_boxes([s.boxes for s in samples], [s.labels for s in samples])
    lengths = torch.tensor([0] + [len(s.data) for s in samples], dtype=torch.int64)
    return CompressedBatch(
        data=torch.cat([s.data for s in samples]),
        offsets=lengths.cumsum(0),
        window=torch.stack([s.window for s in samples]),
        flip=torch.tensor([s.flip for s in samples]),
        colour=torch.stack([s.colour for s in samples]),
        colour_order=torch.stack([s.colour_order for s in samples]),
        boxes=boxes,
        labels=labels,
        num_boxes=num_boxes,
        image_id=torch.tensor([s.image_id for s in samples], dtype=torch.int64),
        skipped=sum(s.skipped for s in samples),
        progressive=torch.tensor([s.progressive for s in samples]),
    )


@dataclass
class DecodeCounts:
    """Images by the path that decoded them (module docstring); logged as decode/<field>."""

    nvjpeg_batched: int = 0  # one batched nvJPEG call for the batch: the fast path on CUDA
    nvjpeg_per_image: int = 0  # nvJPEG image by image, after the batched call failed
    host: int = 0  # on the host (libjpeg-turbo, libpng, ...) because the device is the CPU: the path by design there
    host_fallback: int = 0  # on the host on CUDA: nvJPEG refused the file (PNG bytes, CMYK, ...) or cannot start
    failed: int = 0  # no decoder read the data: trained as a black image without boxes
    progressive: int = 0  # progressive JPEGs among all of them (nvJPEG decodes these on the host, image by image)

    def take(self) -> dict[str, int]:
        """The counts since the last call, as a dict (zeros included), and start again from zero."""
        counts = asdict(self)
        for name in counts:
            setattr(self, name, 0)
        return counts


class BatchDecoder:
    """Decodes a batch's files on the device, counting which path each image took and warning once per cause of a
    fallback. On CUDA: one batched nvJPEG call; if it fails, nvJPEG image by image; what nvJPEG refuses, on the host.
    If nvJPEG cannot decode a known-good JPEG at all (a torchvision built without it, a missing libnvjpeg), every
    image decodes on the host from then on, counted as a fallback, after one warning."""

    def __init__(self, device: torch.device):
        self.device = device
        self.counts = DecodeCounts()
        self.nvjpeg = device.type == "cuda"
        self._probed = False
        self._warned: set[str] = set()

    def _warn_once(self, cause: str, message: str, *args) -> None:
        if cause not in self._warned:
            self._warned.add(cause)
            log.warning(message + " (warned once; counted in the decode/* metrics)", *args)

    def _nvjpeg(self, data):
        """decode_jpeg on the device. It drains the current stream first: torchvision's CUDA decode allocates its
        outputs on the current stream, but nvJPEG's hardware engine writes them without waiting for the work queued
        there (pytorch/vision PR #9606: 134 of 200 iterations corrupted on an H100). The caching allocator can hand
        it blocks that this stream's queued kernels (the previous batch's crop, resize and jitter) still read; the
        host sync makes those kernels finish first. It waits only for this side stream's previous preparation,
        which ran beside the previous step: the step's own stream is not waited for."""
        torch.cuda.current_stream(self.device).synchronize()
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=False)

    def _probe(self) -> None:
        """Once: can nvJPEG decode at all? A tiny JPEG made here, so the answer is about nvJPEG, not about a file."""
        self._probed = True
        try:
            self._nvjpeg(encode_jpeg(torch.zeros(3, 16, 16, dtype=torch.uint8)))
        except RuntimeError as exc:
            self.nvjpeg = False
            self._warn_once("no_nvjpeg", "nvJPEG cannot decode on %s (%s): every image decodes on the host, in the "
                            "thread that launches the training steps", self.device, exc)

    def _host(self, data: torch.Tensor) -> torch.Tensor | None:
        """[3,H,W] uint8 on the device, or None: the host reads JPEG in any colour space, PNG, GIF and WebP."""
        try:
            return decode_image(data, mode=ImageReadMode.RGB, apply_exif_orientation=False).to(self.device,
                                                                                               non_blocking=True)
        except RuntimeError:
            return None

    def _one(self, data: torch.Tensor) -> torch.Tensor | None:
        if self.nvjpeg:
            try:
                image = self._nvjpeg(data)
                self.counts.nvjpeg_per_image += 1
                return image
            except RuntimeError as exc:
                self._warn_once("nvjpeg_refused", "nvJPEG refused an image (%s): such images decode on the host", exc)
        image = self._host(data)
        if image is None:
            self.counts.failed += 1
        elif self.device.type == "cuda":
            self.counts.host_fallback += 1
        else:
            self.counts.host += 1
        return image

    def __call__(self, files: list[torch.Tensor], progressive: torch.Tensor) -> list[torch.Tensor | None]:
        """B encoded images -> B x ([3,H,W] uint8 on the device, or None where they do not decode)."""
        self.counts.progressive += int(progressive.sum())
        if self.nvjpeg and not self._probed:
            self._probe()
        if self.nvjpeg:
            try:
                images = self._nvjpeg(files)
                self.counts.nvjpeg_batched += len(files)
                return images
            except RuntimeError as exc:
                self._warn_once("batched_failed", "batched nvJPEG decode failed (%s): that batch decodes image by "
                                "image, so one bad file costs only itself", exc)
        return [self._one(d) for d in files]


def decode_images(files: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """B encoded images -> B x ([3,H,W] uint8 on `device`, or None where they do not decode), as `BatchDecoder`
    decodes them (a decoder of its own: counts not kept)."""
    return BatchDecoder(device)(files, torch.zeros(len(files), dtype=torch.bool))


def _crop_resize(image: torch.Tensor | None, window: list[int], size: int, device: torch.device) -> torch.Tensor:
    """[3,H,W] uint8 -> the window resized to [3,S,S] float32 in [0,255]; black for an image that did not decode.

    The window is clamped to the decoded image, in case the header's size (which placed it) is not the data's.
    antialias: PIL's bilinear resize, which the CPU path uses, widens its filter when it shrinks."""
    if image is None:
        return torch.zeros(3, size, size, device=device)
    _, H, W = image.shape
    l, t = min(window[0], W - 1), min(window[1], H - 1)
    r, b = max(min(window[2], W), l + 1), max(min(window[3], H), t + 1)
    crop = image[None, :, t:b, l:r].float()
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def _grey(images: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] -> [B,1,H,W] luma, with torchvision's tensor weights and arithmetic."""
    r, g, b = images.unbind(dim=1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def _blend_step(images: torch.Tensor, factors: torch.Tensor, op: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Each active image [B] applies its op [B] (brightness, contrast or saturation; not hue) with its factor.

    All three are torchvision's blend, clamp(f * x + (1 - f) * target), with target black, the mean of the greyscale
    image, or the greyscale image; an inactive image blends with factor 1, which leaves it as it is."""
    shape = (-1, 1, 1, 1)
    factor = factors.gather(1, op.clamp(max=SATURATION)[:, None]).view(shape)
    factor = torch.where((active & (op != HUE)).view(shape), factor, 1.0)
    grey = _grey(images)
    op = op.view(shape)
    target = torch.where(op == SATURATION, grey, torch.where(op == CONTRAST, grey.mean((2, 3), keepdim=True), 0.0))
    return images.mul(factor).add_(target * (1 - factor)).clamp_(0, 1)


def _shift_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] in [0,1] -> hue turned by shift [B] (in turns): torchvision's adjust_hue, which goes through HSV.

    The hue is kept in sixths of a turn; back to RGB, channel c is v - chroma * clamp(min(k, 4 - k), 0, 1) with
    k = (n_c + hue) mod 6, n = (5, 3, 1) for R, G, B: HSV's sector table in closed form (chroma = v * s)."""
    r, g, b = images.unbind(dim=1)
    v = images.amax(dim=1)  # [B,H,W]
    chroma = v - images.amin(dim=1)
    c = chroma.clamp(min=1e-12)  # chroma 0: grey, whose hue does not matter
    hue = torch.where(v == r, (g - b) / c, torch.where(v == g, (b - r) / c + 2, (r - g) / c + 4))  # [-1, 5]
    hue = hue + 6 * shift.view(-1, 1, 1)
    sectors = torch.arange(5.0, 0.0, -2.0, device=images.device).view(1, 3, 1, 1)  # n, made there: no copy
    k = torch.remainder(hue.unsqueeze(1) + sectors, 6)  # [B,3,H,W]
    return v.unsqueeze(1) - chroma.unsqueeze(1) * torch.minimum(k, 4 - k).clamp_(0, 1)


def colour_jitter(images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """torchvision's ColorJitter on a batch, each image with its own factors and op order.

    images [B,3,H,W] float32 in [0,1]; factors [B,4] (brightness, contrast, saturation, hue); order [B,4] op ids.
    The hue shift, the costly op, runs once for the whole batch: first the blends each image does before its hue
    shift, then the shift, then the blends after it. No host syncs and fixed shapes, so torch.compile can fuse it.
    """
    hue_at = (order == HUE).int().argmax(dim=1)  # [B], position of the hue shift in each image's order
    for k in range(3):  # position 3 never comes before the hue shift
        images = _blend_step(images, factors, order[:, k], hue_at > k)
    images = _shift_hue(images, factors[:, HUE])
    for k in range(1, 4):  # nor position 0 after it
        images = _blend_step(images, factors, order[:, k], hue_at < k)
    return images


def decode_and_augment(batch: CompressedBatch, device: torch.device, input_size: int,
                       decoder: BatchDecoder | None = None) -> tuple[Batch, int]:
    """Decode a CompressedBatch on `device`, crop, resize to SxS, flip and colour-jitter it: (a Batch on `device`
    for the device to encode, the count of images that did not decode).

    `batch` stays on the host, as the loader made it: the decoders read bytes from host memory and the windows are
    read as ints. Only the crop and resize go image by image (sizes differ); the rest is batched. An image that
    does not decode is black and its boxes are dropped, so it adds no positives. `decoder` keeps the run's decode
    counts (a fresh one when not given)."""
    images = (decoder or BatchDecoder(device))(batch.files(), batch.progressive)
    failed = [i for i, image in enumerate(images) if image is None]
    windows = batch.window.tolist()
    # one division for the batch, not one a crop: a launch fewer per image on the thread that launches steps
    resized = torch.stack([_crop_resize(image, window, input_size, device)
                           for image, window in zip(images, windows)]).div_(255)
    flip = batch.flip.to(device, non_blocking=True).view(-1, 1, 1, 1)
    resized = torch.where(flip, resized.flip(-1), resized)
    jittered = colour_jitter(resized, batch.colour.to(device, non_blocking=True),
                             batch.colour_order.to(device, non_blocking=True))
    boxes, labels, num_boxes = (t.to(device, non_blocking=True) for t in (batch.boxes, batch.labels, batch.num_boxes))
    if failed:
        log.warning("%d image(s) did not decode, trained as black images without boxes: ids %s", len(failed),
                    [int(batch.image_id[i]) for i in failed])
        index = torch.tensor(failed, device=device)
        # out of place: on the CPU `to` returned the caller's tensors
        boxes, labels, num_boxes = (t.index_fill(0, index, 0) for t in (boxes, labels, num_boxes))
    images = jittered.mul_(255).round_().to(torch.uint8)
    augmented = Batch(images=images, boxes=boxes, labels=labels, num_boxes=num_boxes, loc_t=None, labels_t=None,
                      skipped=batch.skipped)
    return augmented, len(failed)


def should_decode_on_device(setting: str, device: torch.device) -> bool:
    """--input cpu|device|auto: auto decodes and augments on the GPU (as NVIDIA's DALI pipeline did) on CUDA."""
    return setting == "device" or (setting == "auto" and device.type == "cuda")


class DevicePreparation:
    """The DevicePrefetcher step for this path: CompressedBatch (host) -> Batch on `device`, the images that did not
    decode counted with the skipped ones; `decoder.counts` holds the run's decode paths."""

    def __init__(self, device: torch.device, input_size: int):
        self.device = device
        self.input_size = input_size
        self.decoder = BatchDecoder(device)

    def __call__(self, batch: CompressedBatch) -> Batch:
        augmented, failed = decode_and_augment(batch, self.device, self.input_size, self.decoder)
        return augmented._replace(skipped=augmented.skipped + failed)

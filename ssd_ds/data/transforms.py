"""Training and evaluation transforms (SPEC section 5), on PIL images with tv_tensors boxes.

Train, in the reference's order: SSD random crop -> horizontal flip (p 0.5) -> resize to SxS (bilinear, aspect not
kept) -> colour jitter (0.125, 0.5, 0.5, 0.05) -> to uint8 tensor -> encode boxes to fixed-shape targets (or leave
that to the device). Images leave the workers as uint8, a quarter of the bytes of fp32 through
shared memory, pinned memory and PCIe; `normalize_images` converts and normalises the whole batch on the device.
Flip, resize, jitter and normalise are torchvision.transforms.v2, whose semantics are the reference's. The crop is
written here: torchvision's RandomIoUCrop differs from SPEC (it accepts a candidate when ANY box reaches the minimum
IoU, tries up to 40 candidates per mode, and treats "keep the image" as one of its options), while the benchmark
needs EVERY box strictly above the minimum and one candidate per draw.

The policy is one function: `draw_augmentation` draws every random parameter of a sample (crop window, flip, colour
factors and order), and both input paths apply what it drew: `TrainTransform` here on PIL images,
`device_input.CompressedTrainTransform` on the device. So one seed gives one augmentation on either path, and the
draw order, on which exact resume depends, is written once. All randomness comes from torch's global RNG, which the
dataset seeds per sample (see CocoDetection).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ssd_ds.box_coder import BoxCoder
from ssd_ds.data.batch import TrainSample
from ssd_ds.errors import BadInput

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics (SPEC section 5)
STD = (0.229, 0.224, 0.225)
# SPEC section 5: keep the whole image, minimum IoU 0.1 ... 0.9, or no IoU constraint (-inf).
CROP_MODES: tuple[float | None, ...] = (None, 0.1, 0.3, 0.5, 0.7, 0.9, float("-inf"))
CROP_MIN_SIDE = 0.3  # w, h ~ U(0.3, 1) of the image
CROP_MAX_ASPECT = 2.0  # reject w/h outside [0.5, 2]
CROP_MAX_SAMPLES = 1  # candidates per drawn mode (the reference's 50 is also legal); MLPerf logs it as max_samples
FLIP_P = 0.5  # SPEC section 5: horizontal flip probability
# SPEC section 5's colour jitter, with torchvision's semantics: its make_params draws the op order and the factors
# (brightness U(0.875, 1.125), contrast and saturation U(0.5, 1.5), hue U(-0.05, 0.05)); nothing calls its forward.
COLOUR_JITTER = v2.ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # ColorJitter's op ids (its `fn_idx`), and the colour factors' order


def normalize_images(images: torch.Tensor,
                     memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 images [B,3,S,S] (on the device) -> fp32 scaled to [0, 1] and normalised with ImageNet's statistics.

    The same torchvision operations the workers used to apply per image, now on the batch: element for element the
    same values."""
    images = v2.functional.to_dtype(images, torch.float32, scale=True)
    return v2.functional.normalize(images, MEAN, STD).contiguous(memory_format=memory_format)


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def try_crop(boxes_rel: torch.Tensor, min_iou: float,
             max_samples: int = CROP_MAX_SAMPLES) -> tuple[float, float, float, float] | None:
    """Up to `max_samples` candidate windows (l, t, r, b) for one mode; the first acceptable one, or None.

    Acceptable: aspect w/h in [0.5, 2], every box's IoU with the window > min_iou, some box centre strictly inside.
    """
    for _ in range(max_samples):
        w, h = _uniform(CROP_MIN_SIDE, 1.0), _uniform(CROP_MIN_SIDE, 1.0)
        if not (1 / CROP_MAX_ASPECT <= w / h <= CROP_MAX_ASPECT):
            continue
        left, top = _uniform(0.0, 1.0 - w), _uniform(0.0, 1.0 - h)
        window = (left, top, left + w, top + h)
        if not bool((box_iou(boxes_rel, torch.tensor([window])) > min_iou).all()):
            continue
        if not bool(_centres_inside(boxes_rel, window).any()):
            continue
        return window
    return None


def ssd_crop_window(boxes_rel: torch.Tensor,
                    max_samples: int = CROP_MAX_SAMPLES) -> tuple[float, float, float, float] | None:
    """Draw a crop window relative to the image per SPEC section 5, or None for "keep the whole image".

    boxes_rel [G,4] relative ltrb. Draws a mode uniformly; on rejection of its candidates draws a new mode.
    """
    while True:
        min_iou = CROP_MODES[int(torch.randint(len(CROP_MODES), ()))]
        if min_iou is None:
            return None
        window = try_crop(boxes_rel, min_iou, max_samples)
        if window is not None:
            return window


class AugmentationDraw(NamedTuple):
    """One sample's random augmentation parameters (SPEC section 5), as `draw_augmentation` drew them."""

    window: tuple[float, float, float, float] | None  # crop window, relative ltrb; None keeps the whole image
    flip: bool  # mirror left to right
    colour: tuple[float, float, float, float]  # factors, indexed by op id: brightness, contrast, saturation, hue
    colour_order: torch.Tensor  # [4] int64 op ids, in the order the colour ops apply


def draw_augmentation(boxes_rel: torch.Tensor, max_crop_samples: int = CROP_MAX_SAMPLES) -> AugmentationDraw:
    """Every random parameter of one training sample (SPEC section 5), from torch's global RNG in the reference's
    order: the crop window, the flip, then the colour jitter's op order and factors. boxes_rel [G,4] relative ltrb:
    the crop's acceptance depends on them.

    The flip and the jitter draw what torchvision's RandomHorizontalFlip (one torch.rand(1), flipping below p) and
    ColorJitter (its make_params) draw, so applying them gives those transforms' samples, bit for bit
    (tests/unit/data/test_coco_pipeline.py). The order of these calls is the order of the stream: every sample, and so
    exact resume, depends on it."""
    window = ssd_crop_window(boxes_rel, max_crop_samples)
    flip = bool(torch.rand(1) < FLIP_P)
    params = COLOUR_JITTER.make_params([])
    colour = (params["brightness_factor"], params["contrast_factor"], params["saturation_factor"],
              params["hue_factor"])
    return AugmentationDraw(window, flip, colour, params["fn_idx"])


def _centres_inside(boxes_rel: torch.Tensor, window: tuple[float, float, float, float]) -> torch.Tensor:
    l, t, r, b = window
    centres = (boxes_rel[:, :2] + boxes_rel[:, 2:]) / 2
    return (centres[:, 0] > l) & (centres[:, 0] < r) & (centres[:, 1] > t) & (centres[:, 1] < b)


def apply_crop(
    boxes_rel: torch.Tensor, labels: torch.Tensor, window: tuple[float, float, float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the boxes whose centre lies inside the window, clip them to it and renormalise to it."""
    l, t, r, b = window
    keep = _centres_inside(boxes_rel, window)
    win = torch.tensor([l, t, l, t])
    size = torch.tensor([r - l, b - t, r - l, b - t])
    boxes = torch.max(torch.min(boxes_rel[keep], torch.tensor([r, b, r, b])), win)
    return (boxes - win) / size, labels[keep]


def window_pixels(window: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """The pixels a relative crop window cuts from a width x height image: truncated to whole pixels, as the MLPerf
    reference cuts (SPEC section 5). Both input paths cut with it; the boxes keep the exact window."""
    l, t, r, b = window
    return int(l * width), int(t * height), int(r * width), int(b * height)


def check_sample_box_count(rec, count: int, max_boxes: int) -> None:
    """The device encodes at most `max_boxes` boxes an image: an augmented sample with more is an error naming it."""
    if count > max_boxes:
        raise BadInput(f"{rec.path}: {count} boxes after augmentation, more than max_boxes {max_boxes}; "
                       f"raise --max_boxes")


def jitter_colour(image: Image.Image, colour: tuple[float, float, float, float], order: torch.Tensor) -> Image.Image:
    """v2.ColorJitter's transform with drawn parameters: each op of `order` with its factor, through torchvision's
    kernel for the image's type (PIL here), so the pixels are the ones the transform makes."""
    ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)  # indexed by op id
    for op in order.tolist():
        image = ops[op](image, colour[op])
    return image


class TrainTransform:
    """(PIL image, ImageRecord, skipped) -> TrainSample (ssd_ds.data.batch): the augmented uint8 image and its
    relative ltrb boxes, and with a coder also the encoded targets (loc_t [A,4], labels_t [A]). With `coder=None`
    the device encodes (NVIDIA's GPU box encoder; triton_kernels/encode.py), which takes at most `max_boxes` boxes
    an image."""

    def __init__(self, input_size: int, coder: BoxCoder | None, max_crop_samples: int = CROP_MAX_SAMPLES,
                 max_boxes: int = 128):
        self.input_size = input_size
        self.coder = coder
        self.max_crop_samples = max_crop_samples
        self.max_boxes = max_boxes
        self.resize = v2.Resize((input_size, input_size), interpolation=v2.InterpolationMode.BILINEAR)

    def augment(self, image: Image.Image, boxes_px: torch.Tensor, labels: torch.Tensor):
        """Everything but the encoding: (image [3,S,S], boxes [G,4] relative ltrb, labels [G])."""
        W, H = image.size
        boxes_rel = boxes_px / torch.tensor([W, H, W, H], dtype=torch.float32)
        draw = draw_augmentation(boxes_rel, self.max_crop_samples)
        if draw.window is not None:
            image = image.crop(window_pixels(draw.window, W, H))
            boxes_rel, labels = apply_crop(boxes_rel, labels, draw.window)
        W, H = image.size
        boxes = tv_tensors.BoundingBoxes(boxes_rel * torch.tensor([W, H, W, H]), format="XYXY", canvas_size=(H, W))
        if draw.flip:
            image, boxes = F.horizontal_flip(image), F.horizontal_flip(boxes)
        image, boxes = self.resize(image, boxes)
        image = F.pil_to_tensor(jitter_colour(image, draw.colour, draw.colour_order))
        # clamp: the flip's and resize's float arithmetic can leave -1e-7 at an edge
        return image, (boxes.as_subclass(torch.Tensor) / self.input_size).clamp_(0, 1), labels

    def __call__(self, image: Image.Image, rec, skipped: int = 0) -> TrainSample:
        image, boxes, labels = self.augment(image, rec.boxes_ltrb, rec.labels)
        if self.coder is not None:
            return TrainSample(image, boxes, labels, *self.coder.encode(boxes, labels), skipped)
        check_sample_box_count(rec, len(labels), self.max_boxes)
        return TrainSample(image, boxes, labels, None, None, skipped)


class EvalTransform:
    """(PIL image, ImageRecord, skipped) -> (image [3,S,S] uint8, image_id, (height, width))."""

    def __init__(self, input_size: int):
        self.pipeline = v2.Compose([
            v2.Resize((input_size, input_size), interpolation=v2.InterpolationMode.BILINEAR),
            v2.PILToTensor(),
        ])

    def __call__(self, image: Image.Image, rec, skipped: int = 0):
        return self.pipeline(image), rec.image_id, (rec.height, rec.width)

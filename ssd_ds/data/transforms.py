"""Training and evaluation transforms (SPEC section 5), on PIL images with tv_tensors boxes.

Train, in the reference's order: SSD random crop -> horizontal flip (p 0.5) -> resize to SxS (bilinear, aspect not
kept) -> colour jitter (0.125, 0.5, 0.5, 0.05) -> to uint8 tensor -> encode boxes to fixed-shape targets (or leave
that to the device). Images leave the workers as uint8, a quarter of the bytes of fp32 through
shared memory, pinned memory and PCIe; `normalize_images` converts and normalises the whole batch on the device.
Flip, resize, jitter and normalise are torchvision.transforms.v2, whose semantics are the reference's. The crop is
written here: torchvision's RandomIoUCrop differs from SPEC (it accepts a candidate when ANY box reaches the minimum
IoU, tries up to 40 candidates per mode, and treats "keep the image" as one of its options), while the benchmark
needs EVERY box strictly above the minimum and one candidate per draw.

All randomness comes from torch's global RNG, which the dataset seeds per sample (see CocoDetection).
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms import v2

from ssd_ds.box_coder import BoxCoder
from ssd_ds.data.batch import TrainSample
from ssd_ds.errors import BadInput

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics (SPEC section 5)
STD = (0.229, 0.224, 0.225)
# SPEC section 5: keep the whole image, minimum IoU 0.1 ... 0.9, or no IoU constraint (-inf).
CROP_MODES: tuple[float | None, ...] = (None, 0.1, 0.3, 0.5, 0.7, 0.9, float("-inf"))
CROP_MIN_SIDE = 0.3  # w, h ~ U(0.3, 1) of the image
CROP_MAX_ASPECT = 2.0  # reject w/h outside [0.5, 2]


def normalize_images(images: torch.Tensor,
                     memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 images [B,3,S,S] (on the device) -> fp32 scaled to [0, 1] and normalised with ImageNet's statistics.

    The same torchvision operations the workers used to apply per image, now on the batch: element for element the
    same values."""
    images = v2.functional.to_dtype(images, torch.float32, scale=True)
    return v2.functional.normalize(images, MEAN, STD).contiguous(memory_format=memory_format)


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def try_crop(boxes_rel: torch.Tensor, min_iou: float, max_samples: int = 1) -> tuple[float, float, float, float] | None:
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


def ssd_crop_window(boxes_rel: torch.Tensor, max_samples: int = 1) -> tuple[float, float, float, float] | None:
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


def check_box_count(rec, count: int, max_boxes: int) -> None:
    """The device encodes at most `max_boxes` boxes an image: an augmented sample with more is an error naming it."""
    if count > max_boxes:
        raise BadInput(f"{rec.path}: {count} boxes after augmentation, more than max_boxes {max_boxes}; "
                       f"raise --max_boxes")


def ssd_random_crop(
    image: Image.Image, boxes_rel: torch.Tensor, labels: torch.Tensor, max_samples: int = 1
) -> tuple[Image.Image, torch.Tensor, torch.Tensor]:
    """SPEC section 5's crop on a PIL image with relative ltrb boxes; returns the cropped image and its boxes."""
    window = ssd_crop_window(boxes_rel, max_samples)
    if window is None:
        return image, boxes_rel, labels
    image = image.crop(window_pixels(window, *image.size))
    boxes, labels = apply_crop(boxes_rel, labels, window)
    return image, boxes, labels


class TrainTransform:
    """(PIL image, ImageRecord, skipped) -> TrainSample (ssd_ds.data.batch): the augmented uint8 image and its
    relative ltrb boxes, and with a coder also the encoded targets (loc_t [A,4], labels_t [A]). With `coder=None`
    the device encodes (NVIDIA's GPU box encoder; triton_kernels/encode.py), which takes at most `max_boxes` boxes
    an image."""

    def __init__(self, input_size: int, coder: BoxCoder | None, max_crop_samples: int = 1, max_boxes: int = 128):
        self.input_size = input_size
        self.coder = coder
        self.max_crop_samples = max_crop_samples
        self.max_boxes = max_boxes
        self.after_crop = v2.Compose([
            v2.RandomHorizontalFlip(p=0.5),
            v2.Resize((input_size, input_size), interpolation=v2.InterpolationMode.BILINEAR),
            v2.ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05),
            v2.PILToTensor(),
        ])

    def augment(self, image: Image.Image, boxes_px: torch.Tensor, labels: torch.Tensor):
        """Everything but the encoding: (image [3,S,S], boxes [G,4] relative ltrb, labels [G])."""
        W, H = image.size
        scale = torch.tensor([W, H, W, H], dtype=torch.float32)
        image, boxes_rel, labels = ssd_random_crop(image, boxes_px / scale, labels, self.max_crop_samples)
        W, H = image.size
        boxes = tv_tensors.BoundingBoxes(boxes_rel * torch.tensor([W, H, W, H]), format="XYXY", canvas_size=(H, W))
        image, boxes = self.after_crop(image, boxes)
        # clamp: the flip's and resize's float arithmetic can leave -1e-7 at an edge
        return image, (boxes.as_subclass(torch.Tensor) / self.input_size).clamp_(0, 1), labels

    def __call__(self, image: Image.Image, rec, skipped: int = 0) -> TrainSample:
        image, boxes, labels = self.augment(image, rec.boxes_ltrb, rec.labels)
        if self.coder is not None:
            return TrainSample(image, boxes, labels, *self.coder.encode(boxes, labels), skipped)
        check_box_count(rec, len(labels), self.max_boxes)
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

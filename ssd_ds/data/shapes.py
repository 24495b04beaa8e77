"""Drawing one synthetic detection image: coloured shapes on a cluttered, noisy background.

Six classes, each one shape in one saturated colour, so that both cues separate them; the background is muted
(desaturated blobs, grey lines and ellipses, pixel noise), so an object is found by shape and colour and not by
"anything bright". Every object is drawn inside its box and touches all four sides of it, so the box recorded is
the object's full extent, also where a later object partly covers it.

Category ids are COCO-like and non-contiguous (SPEC section 5: ids 1..90 with gaps map to contiguous labels),
so the label map of a loader is exercised on this data as it is on COCO.

The hard variant (`shapes_hard.py`) draws with the helpers here: more classes, textured backgrounds, occlusion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from ssd_ds.errors import BadInput

Box = tuple[int, int, int, int]  # (x, y, w, h) in pixels, the COCO bbox order


def regular_polygon(vertices: int, radius: float = 0.5) -> np.ndarray:
    """[K,2] unit-square polygon of a circle of `radius` around (0.5, 0.5); vertex 0 at angle 0."""
    angles = np.arange(vertices) * (2 * np.pi / vertices)
    return 0.5 + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


# A plus sign whose arms are a third of the box wide.
CROSS = np.array(
    [(1, 0), (2, 0), (2, 1), (3, 1), (3, 2), (2, 2), (2, 3), (1, 3), (1, 2), (0, 2), (0, 1), (1, 1)], dtype=float
) / 3


@dataclass(frozen=True)
class ShapeClass:
    """One object class: a shape in the unit square, a colour and its COCO category."""

    category_id: int  # COCO-like, non-contiguous
    name: str  # category name in the annotation file
    colour: tuple[int, int, int]  # RGB before per-object jitter
    outline: np.ndarray  # [K,2] polygon in the unit square; its bounding box is the whole square
    hole: np.ndarray | None = None  # [K,2] polygon cut out of the outline (the ring), or None


CLASSES: tuple[ShapeClass, ...] = (
    ShapeClass(1, "red_circle", (220, 40, 40), regular_polygon(48)),
    ShapeClass(3, "green_square", (40, 200, 60), np.array([(0, 0), (1, 0), (1, 1), (0, 1)], dtype=float)),
    ShapeClass(7, "blue_triangle", (40, 70, 230), np.array([(0.5, 0), (1, 1), (0, 1)], dtype=float)),
    ShapeClass(18, "yellow_ring", (230, 220, 40), regular_polygon(48), regular_polygon(48, 0.28)),
    ShapeClass(44, "magenta_cross", (220, 50, 220), CROSS),
    ShapeClass(90, "cyan_diamond", (40, 210, 220), np.array([(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)], dtype=float)),
)


@dataclass(frozen=True)
class DrawParams:
    """How an image is drawn; every field is part of the dataset's identity (written to its manifest)."""

    min_size: int = 160  # shortest allowed image side, pixels
    max_size: int = 480  # longest allowed image side, pixels
    max_aspect: float = 1.8  # longest/shortest side; wider images squash objects too thin at 128x128
    min_object: float = 0.15  # object side as a fraction of the image's shorter side; >= 10 px at 128x128
    max_object: float = 0.6  # larger objects would leave little room for a second one
    max_objects: int = 6  # objects per non-empty image are uniform in 1..max_objects
    max_cover: float = 0.4  # a new object may cover at most this fraction of an earlier object's box
    noise_std: float = 8.0  # per-pixel Gaussian noise, in 8-bit levels
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if not 16 <= self.min_size <= self.max_size:
            raise BadInput(f"need 16 <= min_size <= max_size, got {self.min_size}, {self.max_size}")
        if not 0 < self.min_object <= self.max_object <= 1:
            raise BadInput(f"need 0 < min_object <= max_object <= 1, got {self.min_object}, {self.max_object}")
        if self.max_aspect < 1 or self.max_objects < 1:
            raise BadInput(f"need max_aspect >= 1 and max_objects >= 1, got {self.max_aspect}, {self.max_objects}")


@dataclass(frozen=True)
class DrawnObject:
    """One annotation as drawn: COCO bbox [x, y, w, h] in pixels (exact pixel extent), area in pixels."""

    category_id: int
    bbox_xywh: Box
    area: int
    iscrowd: int
    segmentation: list | dict  # polygon list for an object, compressed RLE for a crowd


def image_size(rng: np.random.Generator, p: DrawParams) -> tuple[int, int]:
    """(width, height) with both sides in [min_size, max_size] and aspect at most max_aspect."""
    w = int(rng.integers(p.min_size, p.max_size + 1))
    lo = max(p.min_size, int(np.ceil(w / p.max_aspect)))
    hi = min(p.max_size, int(w * p.max_aspect))
    return w, int(rng.integers(lo, hi + 1))


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Smooth desaturated colour blobs with muted clutter (lines, ellipses) that resembles no class."""
    cells = int(rng.integers(3, 9))
    grid = rng.uniform(60, 200, size=(cells, cells, 3))
    grey = grid.mean(axis=2, keepdims=True)
    grid = grey + 0.3 * (grid - grey)  # keep backgrounds far less saturated than any class colour
    image = Image.fromarray(grid.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 10))):
        tone = tuple(int(v) for v in rng.integers(40, 220) + rng.integers(-15, 16, size=3))
        x0, x1 = sorted(rng.integers(0, w, size=2).tolist())
        y0, y1 = sorted(rng.integers(0, h, size=2).tolist())
        if rng.random() < 0.6:
            draw.line([(x0, y0), (x1, y1)], fill=tone, width=int(rng.integers(1, 4)))
        else:
            draw.ellipse([x0, y0, x1, y1], outline=tone, width=int(rng.integers(1, 3)))
    return image


def shape_mask(shape: ShapeClass, w: int, h: int) -> Image.Image:
    """"L" mask [h, w] of the shape stretched over the whole patch (255 inside)."""
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    scale = np.array([w - 1, h - 1], dtype=float)  # PIL fills the last vertex's pixel too
    draw.polygon([tuple(v) for v in shape.outline * scale], fill=255)
    if shape.hole is not None:
        draw.polygon([tuple(v) for v in shape.hole * scale], fill=0)
    return mask


def _polygon_segmentation(shape: ShapeClass, x: int, y: int, w: int, h: int) -> list[list[float]]:
    """COCO polygon over the box; a hole becomes a keyhole (out along vertex 0, round the hole backwards)."""
    ring = shape.outline
    if shape.hole is not None:
        ring = np.concatenate([ring, ring[:1], shape.hole[:1], shape.hole[:0:-1], shape.hole[:1]])
    points = ring * np.array([w, h]) + np.array([x, y])
    return [np.round(points.reshape(-1), 2).tolist()]


def _place(
    rng: np.random.Generator, img_w: int, img_h: int, side: float, placed: list[Box], p: DrawParams
) -> Box | None:
    """An (x, y, w, h) box of about `side` pixels that covers at most max_cover of every earlier box, or None.

    The aspect varies within 3:4..4:3 so that shapes are not all square; 30 tries, then the object is skipped.
    """
    for _ in range(30):
        w, h = box_size(rng, img_w, img_h, side)
        x = int(rng.integers(0, img_w - w + 1))
        y = int(rng.integers(0, img_h - h + 1))
        if all(covered_fraction(x, y, w, h, other) <= p.max_cover for other in placed):
            return x, y, w, h
    return None


def box_size(rng: np.random.Generator, img_w: int, img_h: int, side: float) -> tuple[int, int]:
    """(w, h) of a box of about `side` pixels and aspect within 3:4..4:3, at least 4 px and at most the image."""
    aspect = np.exp(rng.uniform(np.log(0.75), np.log(4 / 3)))
    w = int(min(img_w, max(4, round(side * np.sqrt(aspect)))))
    h = int(min(img_h, max(4, round(side / np.sqrt(aspect)))))
    return w, h


def covered_fraction(x: int, y: int, w: int, h: int, other: Box) -> float:
    """Fraction of box `other` (x, y, w, h) that box (x, y, w, h) covers."""
    ox, oy, ow, oh = other
    iw = max(0, min(x + w, ox + ow) - max(x, ox))
    ih = max(0, min(y + h, oy + oh) - max(y, oy))
    return iw * ih / (ow * oh)


def jittered(rng: np.random.Generator, colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """The class colour moved by up to 20 levels per channel, so no class is one exact RGB value."""
    return tuple(int(c) for c in np.clip(np.array(colour) + rng.integers(-20, 21, size=3), 0, 255))


def draw_object(image: Image.Image, rng: np.random.Generator, shape: ShapeClass, box: Box) -> DrawnObject:
    """Paint one object filling box; its annotation has the mask's exact extent and pixel area."""
    x, y, w, h = box
    mask = shape_mask(shape, w, h)
    image.paste(jittered(rng, shape.colour), (x, y, x + w, y + h), mask)
    left, top, right, bottom = mask.getbbox()
    return DrawnObject(
        category_id=shape.category_id,
        bbox_xywh=(x + left, y + top, right - left, bottom - top),
        area=int(np.count_nonzero(np.asarray(mask))),
        iscrowd=0,
        segmentation=_polygon_segmentation(shape, x, y, w, h),
    )


def draw_crowd(image: Image.Image, rng: np.random.Generator, shape: ShapeClass, box: Box) -> DrawnObject:
    """A cluster of 4-7 small same-class shapes annotated as one iscrowd=1 region (as COCO marks a crowd)."""
    x, y, w, h = box
    cluster = Image.new("L", (w, h), 0)
    for _ in range(int(rng.integers(4, 8))):
        s = max(4, int(min(w, h) * rng.uniform(0.3, 0.5)))
        cx, cy = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        cluster.paste(255, (cx, cy, cx + s, cy + s), shape_mask(shape, s, s))
    image.paste(jittered(rng, shape.colour), (x, y, x + w, y + h), cluster)
    left, top, right, bottom = cluster.getbbox()
    full = np.zeros((image.height, image.width), dtype=np.uint8)
    full[y : y + h, x : x + w] = np.asarray(cluster) > 0
    rle = mask_utils.encode(np.asfortranarray(full))
    return DrawnObject(
        category_id=shape.category_id,
        bbox_xywh=(x + left, y + top, right - left, bottom - top),
        area=int(full.sum()),
        iscrowd=1,
        segmentation={"size": [image.height, image.width], "counts": rle["counts"].decode("ascii")},
    )


def draw_image(rng: np.random.Generator, p: DrawParams, kind: str) -> tuple[Image.Image, list[DrawnObject]]:
    """One RGB image and its objects, drawn back to front (a later object may partly cover an earlier one).

    kind: "objects"; "crowd" (one crowd region at the back, then ordinary objects); or "empty" (background only:
    an image that COCO lists without annotations). Noise is added last, over objects and background alike.
    """
    w, h = image_size(rng, p)
    image = _background(rng, w, h)
    objects: list[DrawnObject] = []
    if kind != "empty":
        placed: list[Box] = []
        short = min(w, h)
        for i in range(int(rng.integers(1, p.max_objects + 1))):
            shape = CLASSES[int(rng.integers(len(CLASSES)))]
            crowd = kind == "crowd" and i == 0
            low, high = (0.35, 0.6) if crowd else (p.min_object, p.max_object)
            box = _place(rng, w, h, short * rng.uniform(low, high), placed, p)
            if box is None:
                continue
            placed.append(box)
            objects.append((draw_crowd if crowd else draw_object)(image, rng, shape, box))
    return add_noise(rng, image, p.noise_std), objects


def add_noise(rng: np.random.Generator, image: Image.Image, std: float) -> Image.Image:
    """The image plus per-pixel Gaussian noise of `std` 8-bit levels, clipped to 0..255."""
    # float32: 3x faster than float64
    noise = rng.standard_normal((image.height, image.width, 3), dtype=np.float32) * np.float32(std)
    pixels = np.asarray(image, dtype=np.float32) + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

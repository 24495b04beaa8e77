"""Drawing one image of the hard synthetic variant: many confusable classes, small and occluded objects, textured
backgrounds with unannotated look-alikes.

What makes it hard, and how:

- Classes: K of a fixed chain of 24 (shape, colour) pairs in which each class shares its colour with one neighbour
  and its shape with the other (red_circle, blue_circle, blue_star, green_star, ...), so neither cue alone names a
  class. `hard_classes(K)` is the first K links; K = 16 uses 8 shapes and 8 colours.
- Sizes: an object's side is log-uniform in [min_object, max_object] of the image's shorter side (2% to 85% by
  default, a quarter of objects under 5%), 2-6 objects an image, drawn largest first.
- Occlusion: with probability `overlap` an object is placed over an earlier one so that it covers 30-60% of that
  object's box (no earlier box is covered by more than `max_cover`); the box recorded is still the full extent of
  the object, as in `shapes.py`.
- Backgrounds: stripes, checkers, gradients or smooth blobs in two tones of random saturation, soft blobs in the
  class colours, coloured lines, and unannotated distractors: class outlines in neutral colours and non-class
  outlines (pentagon, semicircle, chevron, parallelogram) in class colours.

Everything draws from the generator passed in, so an image is a function of (seed, split, index) as in the default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ssd_ds.data.shapes import (
    CROSS,
    Box,
    DrawnObject,
    DrawParams,
    ShapeClass,
    add_noise,
    box_size,
    covered_fraction,
    draw_crowd,
    draw_object,
    image_size,
    regular_polygon,
    shape_mask,
)
from ssd_ds.errors import BadInput

MIN_OCCLUSION = 0.3  # an overlapping placement covers at least this fraction of its target's box


def _unit(points) -> np.ndarray:
    """[K,2] polygon scaled so that its bounding box is exactly the unit square."""
    points = np.asarray(points, dtype=float)
    low = points.min(axis=0)
    return (points - low) / (points.max(axis=0) - low)


def _star(points: int = 5, inner: float = 0.4) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(2 * points) * (np.pi / points)
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return _unit(np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1))


def _heart(vertices: int = 64) -> np.ndarray:
    t = np.arange(vertices) * (2 * np.pi / vertices)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))  # image y points down
    return _unit(np.stack([x, y], axis=1))


def _crescent(vertices: int = 48) -> np.ndarray:
    """A unit disc less a disc of radius 0.8 shifted right by 0.45: the outer arc, then the inner arc back."""
    r, shift = 0.8, 0.45
    cut = np.arccos((1 + shift**2 - r**2) / (2 * shift))  # the outer circle meets the inner one at +-cut
    inner_cut = np.arccos((1 - shift**2 - r**2) / (2 * shift * r))  # ... and the inner one at +-inner_cut
    outer = np.linspace(cut, 2 * np.pi - cut, vertices)
    inner = np.linspace(2 * np.pi - inner_cut, inner_cut, vertices)
    points = np.concatenate([
        np.stack([np.cos(outer), np.sin(outer)], axis=1),
        np.stack([shift + r * np.cos(inner), r * np.sin(inner)], axis=1),
    ])
    return _unit(points)


_SQUARE = np.array([(0, 0), (1, 0), (1, 1), (0, 1)], dtype=float)

# The class shapes in chain order (hard_classes takes them two classes at a time); the ring's hole is its second item.
SHAPES: tuple[tuple[str, np.ndarray, np.ndarray | None], ...] = (
    ("circle", regular_polygon(48), None),
    ("star", _star(), None),
    ("heart", _heart(), None),
    ("arrow", _unit([(0, 0.3), (0.6, 0.3), (0.6, 0), (1, 0.5), (0.6, 1), (0.6, 0.7), (0, 0.7)]), None),
    ("crescent", _crescent(), None),
    ("cross", CROSS, None),
    ("ring", regular_polygon(48), regular_polygon(48, 0.28)),
    ("l_shape", _unit([(0, 0), (0.4, 0), (0.4, 0.6), (1, 0.6), (1, 1), (0, 1)]), None),
    ("trapezoid", _unit([(0.25, 0), (0.75, 0), (1, 1), (0, 1)]), None),
    ("triangle", _unit([(0.5, 0), (1, 1), (0, 1)]), None),
    ("hexagon", _unit(regular_polygon(6)), None),
    ("square", _SQUARE, None),
)

# Saturated class colours, in chain order; neighbours (red/orange, blue/purple/magenta) are close on purpose.
COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (220, 40, 40)),
    ("blue", (40, 70, 230)),
    ("green", (40, 200, 60)),
    ("yellow", (230, 220, 40)),
    ("orange", (240, 140, 30)),
    ("purple", (140, 50, 200)),
    ("cyan", (40, 210, 220)),
    ("magenta", (220, 50, 220)),
)

# Distractors, never annotated: outlines that are no class (each like one that is), painted in any class colour, and
# any class outline painted in a neutral colour that no class has.
DISTRACTOR_OUTLINES: tuple[np.ndarray, ...] = (
    _star(5, inner=np.cos(np.pi / 5)),  # a pentagon: the star's inner vertices on its edges
    _unit([(np.cos(a), -np.sin(a)) for a in np.linspace(0, np.pi, 25)]),  # semicircle
    _unit([(0, 0), (0.5, 0.5), (1, 0), (1, 0.5), (0.5, 1), (0, 0.5)]),  # chevron
    _unit([(0.3, 0), (1, 0), (0.7, 1), (0, 1)]),  # parallelogram
)
NEUTRAL_COLOURS: tuple[tuple[int, int, int], ...] = ((235, 235, 235), (25, 25, 25), (128, 128, 128), (120, 80, 40))


def _chain() -> tuple[ShapeClass, ...]:
    """Class i: shape i // 2 and colour (i + 1) // 2, so class 2j+1 shares its shape with 2j and its colour with
    2j+2. Category ids are odd (1, 3, 5, ...): non-contiguous, as on COCO."""
    classes = []
    for i in range(2 * len(SHAPES)):
        shape_name, outline, hole = SHAPES[i // 2]
        colour_name, colour = COLOURS[(i + 1) // 2 % len(COLOURS)]
        classes.append(ShapeClass(2 * i + 1, f"{colour_name}_{shape_name}", colour, outline, hole))
    return tuple(classes)


CHAIN = _chain()
MIN_CLASSES, MAX_CLASSES = 2, len(CHAIN)


def hard_classes(k: int) -> tuple[ShapeClass, ...]:
    """The first k classes of the chain."""
    if not MIN_CLASSES <= k <= MAX_CLASSES:
        raise BadInput(f"the hard variant has {MIN_CLASSES}..{MAX_CLASSES} classes, got {k}")
    return CHAIN[:k]


@dataclass(frozen=True)
class HardParams(DrawParams):
    """How a hard-variant image is drawn: DrawParams (image size, noise, JPEG) with the hard defaults, plus these."""

    min_object: float = 0.02  # object side as a fraction of the image's shorter side, log-uniform ...
    max_object: float = 0.85  # ... up to this
    max_objects: int = 6  # objects per non-empty image are uniform in min_objects..max_objects
    max_cover: float = 0.6  # a new object may cover at most this fraction of an earlier object's box
    classes: int = 16  # K: the first K classes of the chain
    min_objects: int = 2  # fewest objects in a non-empty image (before any that find no place)
    overlap: float = 0.35  # probability that an object is placed to cover 30-60% of an earlier one
    max_distractors: int = 2  # unannotated shapes on the background, uniform in 0..max_distractors

    def __post_init__(self) -> None:
        super().__post_init__()
        hard_classes(self.classes)  # validates the count
        if not 1 <= self.min_objects <= self.max_objects:
            raise BadInput(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 0 <= self.overlap <= 1 or not MIN_OCCLUSION < self.max_cover <= 1:
            raise BadInput(f"need 0 <= overlap <= 1 and {MIN_OCCLUSION} < max_cover <= 1, got {self.overlap}, "
                           f"{self.max_cover}")


def _tone(rng: np.random.Generator, saturation: float) -> np.ndarray:
    """[3] float RGB: a random colour pulled towards its grey by 1 - saturation."""
    rgb = rng.uniform(30, 230, size=3)
    return rgb.mean() + saturation * (rgb - rgb.mean())


def _texture(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """[h,w,3] float32 background: one of stripes, checkers, a gradient or smooth blobs, between two tones."""
    saturation = rng.uniform(0.2, 0.8)
    a, b = _tone(rng, saturation), _tone(rng, saturation)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    along = xx * np.float32(np.cos(angle)) + yy * np.float32(np.sin(angle))
    kind = int(rng.integers(4))
    if kind == 0:  # stripes, hard-edged or sinusoidal
        phase = (along / np.float32(rng.uniform(6, 48)) + np.float32(rng.random())) % 1
        mix = (phase < 0.5).astype(np.float32) if rng.random() < 0.5 else 0.5 + 0.5 * np.sin(2 * np.pi * phase)
    elif kind == 1:  # checkers
        cell = int(rng.integers(6, 49))
        mix = ((xx // cell + yy // cell) % 2).astype(np.float32)
    elif kind == 2:  # linear gradient
        mix = (along - along.min()) / max(float(along.max() - along.min()), 1.0)
    else:  # smooth blobs, as the default background
        cells = int(rng.integers(3, 9))
        grid = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
        mix = np.asarray(grid.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    mix = mix[..., None]
    return (a * (1 - mix) + b * mix).astype(np.float32)


def _background(rng: np.random.Generator, w: int, h: int, p: HardParams) -> Image.Image:
    """The texture, then 0-4 soft blobs in class colours, 2-8 coloured lines and the unannotated distractors."""
    pixels = _texture(rng, w, h)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(int(rng.integers(0, 5))):
        colour = np.array(COLOURS[int(rng.integers(len(COLOURS)))][1], dtype=np.float32)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        sx, sy = rng.uniform(0.03, 0.25, size=2) * min(w, h)
        alpha = np.float32(rng.uniform(0.3, 0.8)) * np.exp(-((xx - cx) / sx) ** 2 - ((yy - cy) / sy) ** 2)
        pixels += alpha[..., None] * (colour - pixels)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 9))):
        x0, x1 = rng.integers(0, w, size=2).tolist()
        y0, y1 = rng.integers(0, h, size=2).tolist()
        colour = tuple(rng.integers(0, 256, size=3).tolist())
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(0, p.max_distractors + 1))):
        _draw_distractor(image, rng, p)
    return image


def _draw_distractor(image: Image.Image, rng: np.random.Generator, p: HardParams) -> None:
    """An unannotated shape: a non-class outline in a class colour, or a class outline in a neutral colour."""
    if rng.random() < 0.5:
        outline, hole = DISTRACTOR_OUTLINES[int(rng.integers(len(DISTRACTOR_OUTLINES)))], None
        colour = COLOURS[int(rng.integers(len(COLOURS)))][1]
    else:
        _, outline, hole = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = NEUTRAL_COLOURS[int(rng.integers(len(NEUTRAL_COLOURS)))]
    short = min(image.size)
    side = short * np.exp(rng.uniform(np.log(p.min_object), np.log(0.5)))
    w, h = box_size(rng, *image.size, side)
    x, y = int(rng.integers(0, image.width - w + 1)), int(rng.integers(0, image.height - h + 1))
    mask = shape_mask(ShapeClass(0, "distractor", colour, outline, hole), w, h)
    image.paste(colour, (x, y, x + w, y + h), mask)


def _place(
    rng: np.random.Generator, img_w: int, img_h: int, side: float, placed: list[Box], p: HardParams
) -> Box | None:
    """An (x, y, w, h) box of about `side` pixels covering at most max_cover of every earlier box, or None.

    With probability `overlap`, and an earlier box small enough to be covered 30% by this one, the box is first
    sought over that target (covering >= MIN_OCCLUSION of it); 30 tries there, then 30 anywhere, then None.
    """
    targets = [b for b in placed if b[2] * b[3] * MIN_OCCLUSION <= side * side]
    target = None
    if targets and rng.random() < p.overlap:
        target = targets[int(rng.integers(len(targets)))]
    for aim in ([target] if target is not None else []) + [None]:
        for _ in range(30):
            w, h = box_size(rng, img_w, img_h, side)
            if aim is None:
                x, y = int(rng.integers(0, img_w - w + 1)), int(rng.integers(0, img_h - h + 1))
            else:  # anywhere the box overlaps the target's and stays in the image
                tx, ty, tw, th = aim
                x = int(rng.integers(max(0, tx - w + 1), min(img_w - w, tx + tw - 1) + 1))
                y = int(rng.integers(max(0, ty - h + 1), min(img_h - h, ty + th - 1) + 1))
                if covered_fraction(x, y, w, h, aim) < MIN_OCCLUSION:
                    continue
            if all(covered_fraction(x, y, w, h, other) <= p.max_cover for other in placed):
                return x, y, w, h
    return None


def _visible_class(rng: np.random.Generator, classes: tuple[ShapeClass, ...], box: Box, placed: list[Box],
                   colours: list[tuple[int, int, int]]) -> ShapeClass:
    """A class for an object at `box` whose colour differs from every earlier object's that its box overlaps: an
    object painted over one of its own colour would be invisible (a red L on a red circle), an annotation no model
    could learn. Occlusion stays: the earlier objects may be partly covered, only not by their own colour."""
    x, y, bw, bh = box
    hidden = {colour for (ox, oy, ow, oh), colour in zip(placed, colours)
              if x < ox + ow and ox < x + bw and y < oy + oh and oy < y + bh}
    candidates = [c for c in classes if c.colour not in hidden] or list(classes)
    return candidates[int(rng.integers(len(candidates)))]


def draw_hard_image(rng: np.random.Generator, p: HardParams, kind: str) -> tuple[Image.Image, list[DrawnObject]]:
    """One RGB image of the hard variant and its objects; `kind` as for `shapes.draw_image` (a crowd region goes at
    the back, then the objects largest first, so a smaller one may partly cover a larger one)."""
    w, h = image_size(rng, p)
    image = _background(rng, w, h, p)
    classes = hard_classes(p.classes)
    objects: list[DrawnObject] = []
    if kind != "empty":
        short = min(w, h)
        placed: list[Box] = []
        colours: list[tuple[int, int, int]] = []  # of the placed boxes, in order
        if kind == "crowd":
            box = _place(rng, w, h, short * rng.uniform(0.35, 0.6), placed, p)
            if box is not None:
                shape = classes[int(rng.integers(len(classes)))]
                placed.append(box)
                colours.append(shape.colour)
                objects.append(draw_crowd(image, rng, shape, box))
        n = int(rng.integers(p.min_objects, p.max_objects + 1))
        sides = short * np.exp(rng.uniform(np.log(p.min_object), np.log(p.max_object), size=n))
        for side in np.sort(sides)[::-1]:
            box = _place(rng, w, h, float(side), placed, p)
            if box is None:
                continue
            shape = _visible_class(rng, classes, box, placed, colours)
            placed.append(box)
            colours.append(shape.colour)
            objects.append(draw_object(image, rng, shape, box))
    return add_noise(rng, image, p.noise_std), objects

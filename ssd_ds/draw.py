"""A validation image with its ground truth and its detections, for TensorBoard.

The model sees small images (128 px for the demo's model), on which a label in PIL's bitmap font covers the object
and its neighbours' labels. So the image is first enlarged to at least `min_side` pixels, and the text is a TrueType
font (matplotlib's DejaVu Sans, matplotlib being a dependency) sized to that side. The two kinds of box are told apart
by style as well as colour: ground truth dashed white with its class name below the box, detections solid in their
class's colour with "name score" above it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

# distinct hues for detections (tab10 without its grey); ground truth is white
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (188, 189, 34), (23, 190, 207))
GT_COLOUR = (255, 255, 255)


def label_font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans at `size` px (shipped with matplotlib); Pillow's own scalable default where that is missing."""
    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default(size)


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box, colour, width: int, dash: int) -> None:
    left, top, right, bottom = box
    for (x0, y0, x1, y1) in ((left, top, right, top), (left, bottom, right, bottom), (left, top, left, bottom),
                             (right, top, right, bottom)):
        length = max(abs(x1 - x0), abs(y1 - y0))
        for start in range(0, int(length) + 1, 2 * dash):
            end = min(start + dash, length)
            if x0 == x1:
                draw.line((x0, y0 + start, x0, y0 + end), fill=colour, width=width)
            else:
                draw.line((x0 + start, y0, x0 + end, y0), fill=colour, width=width)


def _caption(draw: ImageDraw.ImageDraw, xy, text: str, font, text_colour, background, above: bool, side: int) -> None:
    """`text` on a filled background, its top-left at `xy` (above: its bottom-left), kept inside the image."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 2, bottom - top + 2
    x = min(max(xy[0], 0), side - w)
    y = xy[1] - h if above else xy[1]
    y = min(max(y, 0), side - h)
    draw.rectangle((x, y, x + w, y + h), fill=background)
    draw.text((x + 1 - left, y + 1 - top), text, fill=text_colour, font=font)


def draw_validation_image(image: torch.Tensor, boxes_ltrb: torch.Tensor, captions: list[str], labels: list[int],
                          gt_boxes_ltrb: torch.Tensor, gt_captions: list[str], min_side: int = 384) -> torch.Tensor:
    """`image` [3,S,S] uint8 with ground truth (dashed white, name below) and detections (solid, the class's colour,
    "name score" above); boxes relative ltrb in [0, 1]; `labels` pick the detections' colours. Returns [3,N,N] uint8,
    N = S enlarged to at least `min_side`."""
    side = image.shape[-1]
    scale = max(1, -(-min_side // side))
    side *= scale
    pil = to_pil_image(image.cpu()).resize((side, side), Image.BILINEAR)
    draw = ImageDraw.Draw(pil)
    font = label_font(max(9, round(side / 32)))
    line = max(1, round(side / 192))
    for box, caption in zip((gt_boxes_ltrb * side).tolist(), gt_captions):
        _dashed_rectangle(draw, box, GT_COLOUR, line, dash=max(3, side // 64))
        _caption(draw, (box[0], box[3]), caption, font, (0, 0, 0), GT_COLOUR, above=False, side=side)
    for box, caption, label in zip((boxes_ltrb * side).tolist(), captions, labels):
        colour = PALETTE[label % len(PALETTE)]
        draw.rectangle(box, outline=colour, width=line + 1)
        _caption(draw, (box[0], box[1]), caption, font, (255, 255, 255), colour, above=True, side=side)
    return pil_to_tensor(pil)

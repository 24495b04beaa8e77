"""Your own data in the COCO layout the trainer reads: `python -m ssd_ds.data.convert voc|yolo SRC OUT [--copy]`.

A reader turns a source tree into a `Source` (its images per split, each with its boxes in COCO's pixel xywh, and
the categories), saying what it mapped and what it skipped; `coco_layout` writes that as `OUT/train2017/`,
`OUT/val2017/` and `OUT/annotations/instances_{train,val}2017.json`, with images symlinked or copied:

- `voc.py`: Pascal VOC (`Annotations/*.xml`, `JPEGImages/`, `ImageSets/Main/*.txt`); difficult objects become
  `iscrowd: 1`, trained on and ignored by COCOeval.
- `yolo.py`: YOLO (`images/<split>/` and `labels/<split>/`, or `<split>/images/` and `<split>/labels/`), class
  names from `data.yaml` or `classes.txt`.

Readers raise `ssd_ds.errors.BadInput` naming the file and line of anything malformed; the command prints it as one
`error:` line (`ssd_ds.cli.run_cli`). docs/data.md, "Your own data", has the rules and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from PIL import Image

EXIF_ORIENTATION = 0x0112  # the EXIF tag; 1 is upright, 2-8 a flip and/or rotation the viewer applies


@dataclass(frozen=True)
class SourceBox:
    """One object: its category and its box in COCO's convention (pixels, from the image's top-left corner)."""

    category_id: int
    bbox_xywh: tuple[float, float, float, float]
    iscrowd: int = 0  # 1: trained on as any box, ignored when COCOeval matches (VOC's difficult)


@dataclass(frozen=True)
class SourceImage:
    """One image of a split: where it is in the source, the name it gets in the output, its size and boxes."""

    path: Path  # the file in the source tree
    file_name: str  # relative POSIX path under OUT/<split>2017/, inside it (annotations.points_outside is False)
    width: int
    height: int
    boxes: tuple[SourceBox, ...]


@dataclass
class Source:
    """What a reader found, ready to write."""

    kind: str  # "voc" or "yolo"
    root: Path  # SRC
    splits: dict[str, list[SourceImage]]  # "train" and "val", each non-empty
    categories: dict[int, str]  # category id (from 1) -> name
    notes: list[str] = field(default_factory=list)  # what was mapped where, printed with the summary
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> what it skipped, printed as counts


def numbered_fields(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number from 1, its whitespace-separated fields) for each non-blank line of a UTF-8 text file (a leading
    byte order mark skipped)."""
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        fields = line.split()
        if fields:
            yield n, fields


def read_image_size(path: Path) -> tuple[int, int, int] | None:
    """(width, height, EXIF orientation) from the image file's header (PIL decodes no pixels for this), or None when
    it does not read as an image."""
    try:
        with Image.open(path) as img:
            return img.width, img.height, img.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):  # PIL raises SyntaxError on some broken headers
        return None

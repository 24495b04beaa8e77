"""YOLO -> `Source`: one `.txt` per image, a line `class cx cy w h` per box, normalised to the image's size.

- Layouts: `SRC/images/<split>/` with `SRC/labels/<split>/` (Ultralytics), or `SRC/<split>/images/` with
  `SRC/<split>/labels/` (Roboflow's export); `<split>` is `train`, and `val` (else `valid`). An image's labels are
  the file at the same relative path under the labels directory with the suffix `.txt`; an image without one is
  written without boxes (a background image), a label file without an image is skipped and counted.
- Categories: `SRC/data.yaml`'s `names:` (a list, or a dict index -> name), else `SRC/classes.txt` (one name a
  line); class index i is category id i + 1.
- Sizes come from each image's header. Boxes are `[(cx - w/2) W, (cy - h/2) H, w W, h H]` in pixels. An image with
  an EXIF orientation other than upright is skipped and counted: YOLO tools normalise its boxes to the rotated
  view, while the trainer reads the stored pixels (as COCO's boxes are given), so its boxes would be wrong.

A line that is not 5 values, a class index outside the names, coordinates outside [0, 1] or a zero size is one
BadInput naming the file and line.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ssd_ds.data.convert import Source, SourceBox, SourceImage, numbered_fields, read_image_size
from ssd_ds.errors import BadInput, NotFound

SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid")}  # the first present
IMAGE_SUFFIXES = {".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}
ROTATED = "images with an EXIF rotation (their YOLO boxes follow the rotated view; the trainer reads stored pixels)"


def _read_yaml_names(path: Path) -> dict[int, str]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise BadInput(f"{where}: malformed YAML ({getattr(exc, 'problem', None) or exc})") from None
    names = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not (isinstance(names, dict) and names
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in names)):
        raise BadInput(f"{path}: 'names' is {names!r}, not a list of class names or a dict of index: name")
    if "nc" in doc and doc["nc"] != len(names):
        raise BadInput(f"{path}: nc is {doc['nc']!r}, but names has {len(names)}")
    return {i: str(name) for i, name in sorted(names.items())}


def _read_text_names(path: Path) -> dict[int, str]:
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            raise BadInput(f"{path}:{n}: an empty class name (class {n - 1})")
    if not lines:
        raise BadInput(f"{path}: no class names")
    return {i: line.strip() for i, line in enumerate(lines)}


def read_class_names(src: Path) -> tuple[dict[int, str], Path]:
    """(class index -> name, the file they came from): data.yaml's names, else classes.txt."""
    if (src / "data.yaml").is_file():
        return _read_yaml_names(src / "data.yaml"), src / "data.yaml"
    if (src / "classes.txt").is_file():
        return _read_text_names(src / "classes.txt"), src / "classes.txt"
    raise NotFound(f"{src / 'data.yaml'}: not found, nor {src / 'classes.txt'} (the class names: data.yaml's names, "
                   f"or classes.txt with one a line)")


def _split_dirs(src: Path, split: str) -> tuple[Path, Path]:
    """(images directory, labels directory) of a split, in either layout."""
    for name in SPLIT_NAMES[split]:
        layouts = ((src / "images" / name, src / "labels" / name), (src / name / "images", src / name / "labels"))
        for images, labels in layouts:
            if images.is_dir():
                if not labels.is_dir():
                    raise NotFound(f"{labels}: not found (the labels of {images})")
                return images, labels
    looked = ", ".join(f"images/{n}/, {n}/images/" for n in SPLIT_NAMES[split])
    raise NotFound(f"{src}: no {split} images (looked for {looked})")


def read_labels(path: Path, width: int, height: int, classes: dict[int, str], names_file: Path
                ) -> tuple[SourceBox, ...]:
    """The boxes of one label file in pixel xywh, category id = class index + 1; blank lines skipped."""
    boxes = []
    for n, fields in numbered_fields(path):
        line = " ".join(fields)
        if len(fields) != 5:
            raise BadInput(f"{path}:{n}: expected 5 values (class cx cy w h), got {len(fields)}: {line!r}")
        try:
            index, (cx, cy, w, h) = int(fields[0]), map(float, fields[1:])
        except ValueError:
            raise BadInput(f"{path}:{n}: expected a class index and 4 numbers, got {line!r}") from None
        if index not in classes:
            raise BadInput(f"{path}:{n}: class {index} is not among the {len(classes)} names of {names_file}")
        if not (all(0 <= v <= 1 for v in (cx, cy, w, h)) and w > 0 and h > 0):  # NaN fails every comparison
            raise BadInput(f"{path}:{n}: cx cy w h must be normalised to [0, 1], w and h > 0: {line!r}")
        boxes.append(SourceBox(index + 1, ((cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height)))
    return tuple(boxes)


def _read_split(src: Path, split: str, classes: dict[int, str], names_file: Path, source: Source) -> None:
    images_dir, labels_dir = _split_dirs(src, split)
    paths = sorted((p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=lambda p: p.relative_to(images_dir).as_posix())
    images, used, unlabelled = [], set(), 0
    for path in paths:
        name = path.relative_to(images_dir)
        label = labels_dir / name.with_suffix(".txt")
        used.add(label)
        header = read_image_size(path)
        if header is None:
            source.skipped.setdefault("unreadable images", []).append(str(path))
            continue
        width, height, orientation = header
        if orientation in range(2, 9):  # 1 is upright; 0 and other values are no rotation either
            source.skipped.setdefault(ROTATED, []).append(str(path))
            continue
        unlabelled += not label.is_file()
        boxes = read_labels(label, width, height, classes, names_file) if label.is_file() else ()
        images.append(SourceImage(path, name.as_posix(), width, height, boxes))
    orphans = sorted(str(p) for p in labels_dir.rglob("*.txt") if p not in used and p.name != "classes.txt")
    if orphans:
        source.skipped.setdefault("label files without an image", []).extend(orphans)
    source.splits[split] = images
    source.notes.append(f"{split} <- {images_dir.relative_to(src)}/ with {labels_dir.relative_to(src)}/"
                        + (f"; {unlabelled} images without a label file, written without boxes" if unlabelled else ""))


def read_yolo(src: str | Path) -> Source:
    """The YOLO tree at src as a Source (see the module docstring)."""
    src = Path(src)
    if not src.is_dir():
        raise NotFound(f"{src}: not found")
    classes, names_file = read_class_names(src)
    source = Source("yolo", src, {}, {i + 1: name for i, name in classes.items()})
    source.notes.append(f"classes from {names_file.relative_to(src)}: class index i -> category id i + 1")
    for split in ("train", "val"):
        _read_split(src, split, classes, names_file, source)
    return source

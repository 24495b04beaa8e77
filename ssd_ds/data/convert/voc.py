"""Pascal VOC -> `Source`: `SRC/Annotations/<id>.xml`, `SRC/JPEGImages/`, splits from `SRC/ImageSets/Main/*.txt`.

- Splits: train is `train.txt` (else `trainval.txt`), val is `val.txt` (else `test.txt`); `--train-list` and
  `--val-list` choose others (VOC 2007's usual protocol: `trainval` and `test`). The two may not share an image.
- Categories: every object name in the chosen XML files, sorted, with ids from 1.
- Boxes: VOC's pixel coordinates are 1-based and inclusive (`xmin=1, xmax=500` covers all 500 columns), COCO's are
  continuous from 0, so `bbox = [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]`.
- `difficult` objects keep their boxes as `iscrowd: 1`: the trainer trains on them as on any box (as the original
  SSD did, `use_difficult_gt`), COCOeval ignores what matches them, as VOC's evaluation ignores difficult objects.
- The image is `<filename>` from the XML when that file is in JPEGImages, else `<id>.jpg` (or .jpeg, .png); the
  size is the XML's `<size>`, or the image header's where that is missing or 0.

Anything malformed (XML, a missing element, a non-number, xmax < xmin, a list line with more than an id) is one
BadInput naming the file and line.
"""

from __future__ import annotations

import math
import posixpath
import xml.etree.ElementTree as ET
from pathlib import Path
from xml.parsers import expat

from ssd_ds.data.annotations import points_outside
from ssd_ds.data.convert import Source, SourceBox, SourceImage, numbered_fields, read_image_size
from ssd_ds.errors import BadInput, NotFound

DEFAULT_LISTS = {"train": ("train", "trainval"), "val": ("val", "test")}  # the first that exists
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class _Xml:
    """One parsed XML file, with each element's line for error messages."""

    def __init__(self, path: Path):
        self.path = path
        builder, self.lines = ET.TreeBuilder(), {}
        parser = expat.ParserCreate()
        parser.StartElementHandler = lambda tag, attrs: self.lines.setdefault(
            builder.start(tag, attrs), parser.CurrentLineNumber)
        parser.EndElementHandler = builder.end
        parser.CharacterDataHandler = builder.data
        try:
            parser.Parse(path.read_bytes(), True)
        except expat.ExpatError as exc:
            raise BadInput(f"{path}:{exc.lineno}: malformed XML ({expat.ErrorString(exc.code)})") from None
        self.root = builder.close()

    def where(self, element: ET.Element) -> str:
        return f"{self.path}:{self.lines[element]}"

    def text(self, parent: ET.Element, tag: str) -> str | None:
        """The stripped text of parent's child <tag>, None when there is none or it is empty."""
        child = parent.find(tag)
        text = (child.text or "").strip() if child is not None else ""
        return text or None

    def number(self, parent: ET.Element, tag: str) -> float:
        """The finite number in parent's child <tag>; a missing or odd one names the file and line."""
        child = parent.find(tag)
        if child is None:
            raise BadInput(f"{self.where(parent)}: <{parent.tag}> has no <{tag}>")
        try:
            value = float((child.text or "").strip())
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise BadInput(f"{self.where(child)}: <{tag}> is {child.text!r}, not a number")
        return value


def _read_list(path: Path) -> list[str]:
    """Image ids, one a line (blank lines skipped); a line with more, or a repeated id, names the line."""
    ids: dict[str, int] = {}
    for n, fields in numbered_fields(path):
        if len(fields) != 1:
            raise BadInput(f"{path}:{n}: expected one image id, got {' '.join(fields)!r}")
        if fields[0] in ids:
            raise BadInput(f"{path}:{n}: repeats image id {fields[0]!r} of line {ids[fields[0]]}")
        if points_outside(fields[0]):  # the id names Annotations/<id>.xml
            raise BadInput(f"{path}:{n}: image id {fields[0]!r} points outside Annotations/")
        ids[fields[0]] = n
    if not ids:
        raise BadInput(f"{path}: no image ids")
    return list(ids)


def _choose_lists(lists_dir: Path, train_list: str | None, val_list: str | None) -> dict[str, Path]:
    chosen = {}
    for split, wanted in (("train", train_list), ("val", val_list)):
        names = (wanted,) if wanted else DEFAULT_LISTS[split]
        found = [lists_dir / f"{name}.txt" for name in names if (lists_dir / f"{name}.txt").is_file()]
        if not found:
            raise NotFound(f"{lists_dir / f'{names[0]}.txt'}: image list not found (the {split} split is "
                           f"{' or '.join(n + '.txt' for n in names)}; --{split}-list names another)")
        chosen[split] = found[0]
    return chosen


def _image_file(image_dir: Path, image_id: str, xml: _Xml) -> Path:
    """The image of an annotation: its <filename> when that is a file inside JPEGImages, else <id>.jpg/.jpeg/.png."""
    named = xml.text(xml.root, "filename")
    candidates = [named] if named and not points_outside(named) else []
    candidates += [image_id + suffix for suffix in IMAGE_SUFFIXES]
    for name in candidates:
        if (image_dir / name).is_file():
            return image_dir / posixpath.normpath(name)  # sub/../a.jpg -> a.jpg, its name in the output
    raise NotFound(f"{image_dir / candidates[0]}: image not found (annotated in {xml.path})")


def _objects(xml: _Xml) -> list[tuple[str, tuple[float, float, float, float], int]]:
    """(name, COCO bbox_xywh, difficult) of each <object>, in file order."""
    objects = []
    for obj in xml.root.findall("object"):
        name = xml.text(obj, "name")
        if name is None:
            raise BadInput(f"{xml.where(obj)}: <object> has no <name>")
        difficult = xml.text(obj, "difficult") or "0"
        if difficult not in ("0", "1"):
            raise BadInput(f"{xml.where(obj.find('difficult'))}: <difficult> is {difficult!r}, not 0 or 1")
        box = obj.find("bndbox")
        if box is None:
            raise BadInput(f"{xml.where(obj)}: <object> {name!r} has no <bndbox>")
        xmin, ymin, xmax, ymax = (xml.number(box, tag) for tag in ("xmin", "ymin", "xmax", "ymax"))
        if xmax < xmin or ymax < ymin:
            raise BadInput(f"{xml.where(box)}: <bndbox> has xmax < xmin or ymax < ymin ({xmin}, {ymin}, {xmax}, "
                           f"{ymax})")
        # 1-based inclusive pixel indices -> continuous coordinates from 0 (see the module docstring)
        objects.append((name, (xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1), int(difficult)))
    return objects


def _size(xml: _Xml, image: Path) -> tuple[int, int] | None:
    """(width, height): the XML's <size> when it gives both, else the image header's; None when neither does."""
    size = xml.root.find("size")
    if size is not None and size.find("width") is not None and size.find("height") is not None:
        width, height = xml.number(size, "width"), xml.number(size, "height")
        if width > 0 and height > 0:
            if width != int(width) or height != int(height):
                raise BadInput(f"{xml.where(size)}: <size> is {width} x {height}, not whole pixels")
            return int(width), int(height)
    header = read_image_size(image)
    return None if header is None else header[:2]


def read_voc(src: str | Path, train_list: str | None = None, val_list: str | None = None) -> Source:
    """The VOC tree at src as a Source (see the module docstring)."""
    src = Path(src)
    ann_dir, image_dir, lists_dir = src / "Annotations", src / "JPEGImages", src / "ImageSets" / "Main"
    for folder in (ann_dir, image_dir, lists_dir):
        if not folder.is_dir():
            raise NotFound(f"{folder}: not found (a VOC tree has Annotations/, JPEGImages/ and ImageSets/Main/)")
    lists = _choose_lists(lists_dir, train_list, val_list)
    ids = {split: _read_list(path) for split, path in lists.items()}
    shared = sorted(set(ids["train"]) & set(ids["val"]))
    if shared:
        raise BadInput(f"{lists['train']} and {lists['val']} share {len(shared)} image(s) (first: {shared[0]}): "
                       f"evaluation would measure images trained on")
    source = Source("voc", src, {}, {})
    read: dict[str, list[tuple[Path, tuple[int, int], list]]] = {}
    for split, split_ids in ids.items():
        read[split] = []
        for image_id in split_ids:
            xml_path = ann_dir / f"{image_id}.xml"
            if not xml_path.is_file():
                raise NotFound(f"{xml_path}: annotation not found (listed in {lists[split]})")
            xml = _Xml(xml_path)
            if xml.root.tag != "annotation":
                raise BadInput(f"{xml.where(xml.root)}: not a VOC annotation (root <{xml.root.tag}>)")
            image = _image_file(image_dir, image_id, xml)
            size = _size(xml, image)
            if size is None:
                source.skipped.setdefault("images without a <size> and unreadable", []).append(str(image))
                continue
            read[split].append((image, size, _objects(xml)))
    names = sorted({name for split_read in read.values() for _, _, objects in split_read for name, _, _ in objects})
    category_id = {name: i for i, name in enumerate(names, start=1)}
    source.categories = {i: name for name, i in category_id.items()}
    for split, split_read in read.items():
        source.splits[split] = [
            SourceImage(image, image.relative_to(image_dir).as_posix(), *size,
                        tuple(SourceBox(category_id[name], bbox, difficult) for name, bbox, difficult in objects))
            for image, size, objects in split_read
        ]
    listed = {image_id for split_ids in ids.values() for image_id in split_ids}
    unlisted = sorted(p.name for p in ann_dir.glob("*.xml") if p.stem not in listed)
    others = sorted(f"{name}.txt" for names in DEFAULT_LISTS.values() for name in names
                    if (lists_dir / f"{name}.txt").is_file() and lists_dir / f"{name}.txt" not in lists.values())
    source.notes.append(f"splits: train <- {lists['train'].relative_to(src)}, val <- {lists['val'].relative_to(src)}"
                        + (f" (not converted: {', '.join(others)})" if others else "")
                        + "; difficult objects -> iscrowd 1")
    if unlisted:
        source.skipped["annotation files in neither list"] = unlisted
    return source

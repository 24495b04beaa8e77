"""COCO instances JSON -> validated records, one per kept image, and counts of what was clipped and dropped (SPEC
section 5).

- Category ids map to contiguous labels 1..K in the JSON's category order (0 is background); `label_to_category`
  maps back when writing detections.
- Crowd annotations are trained as ordinary boxes, as the reference does.
- Boxes partly outside the image are clipped to it and counted. Degenerate boxes (zero or negative width/height,
  or nothing left after clipping) are dropped and counted; images left without a box are dropped and counted
  (117,266 train / 4,952 val remain on COCO 2017).
- An image whose `file_name` points outside the image directory (absolute, or climbing out with `..`) is dropped
  with its boxes and counted, and never opened: annotation files come from other tools and other people
  (`points_outside`).
- A malformed file never ends in a KeyError from deep inside: one bad annotation (unknown category or image id, a
  missing key, a bbox that is not 4 finite numbers, a bool or string for an id, a strange iscrowd) is dropped and
  counted under its reason; a broken `images` or `categories` entry, a repeated id, or a top-level value that is
  not a list is one ValueError naming the file and the entry. `DatasetStats.summary()`, the start-up log line,
  gives every non-zero count.
"""

from __future__ import annotations

import array
import logging
import math
import numbers
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ssd_ds.errors import BadInput
from ssd_ds.fileio import read_json

log = logging.getLogger(__name__)

MAX_IMAGE_SIDE = 2**24  # float32, which holds the boxes, is exact on every integer pixel coordinate up to here
ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox")  # iscrowd may be absent (0)


@dataclass
class DatasetStats:
    """What loading the annotations kept, clipped and dropped (and why), reported at start-up."""

    images_in_json: int = 0
    annotations_in_json: int = 0
    images_without_boxes: int = 0  # dropped: no annotation, or only dropped ones
    images_outside: int = 0  # dropped, never opened: file_name points outside the image directory
    degenerate_boxes: int = 0  # dropped: empty after clipping to the image (in float32, as boxes are stored)
    unknown_category: dict[int, int] = field(default_factory=dict)  # dropped: category id -> annotations citing it
    unknown_image: int = 0  # dropped: image_id not among the images
    on_images_outside: int = 0  # dropped: their image's file_name points outside the image directory
    malformed: dict[str, int] = field(default_factory=dict)  # dropped: reason ("bad bbox", "no id", ...) -> count
    clipped_boxes: int = 0  # kept: partly outside the image, clipped to it
    crowd_boxes: int = 0  # kept as ordinary boxes
    kept_images: int = 0
    kept_boxes: int = 0
    per_category: dict[int, int] = field(default_factory=dict)  # kept boxes per category id

    @property
    def dropped_boxes(self) -> int:
        """Annotations not kept, whatever the reason: with kept_boxes they add up to annotations_in_json."""
        return (
            self.degenerate_boxes + sum(self.unknown_category.values()) + self.unknown_image
            + self.on_images_outside + sum(self.malformed.values())
        )

    def summary(self) -> str:
        """One readable line; only the drop reasons that occurred are named."""
        dropped = [f"{self.degenerate_boxes} degenerate"] if self.degenerate_boxes else []
        if self.unknown_category:
            dropped.append(f"{sum(self.unknown_category.values())} unknown category {self.unknown_category}")
        if self.unknown_image:
            dropped.append(f"{self.unknown_image} unknown image")
        if self.on_images_outside:
            dropped.append(f"{self.on_images_outside} on images outside the image directory")
        dropped += [f"{n} {reason}" for reason, n in self.malformed.items()]
        boxes = [f"{self.clipped_boxes} clipped to the image"]
        boxes += [f"dropped: {', '.join(dropped)}"] if dropped else []
        boxes.append(f"{self.crowd_boxes} crowd kept")
        images = [f"{self.images_without_boxes} without boxes"]
        images += [f"{self.images_outside} outside the image directory"] if self.images_outside else []
        return (
            f"{self.kept_images} images kept of {self.images_in_json} ({', '.join(images)} dropped), "
            f"{self.kept_boxes} boxes of {self.annotations_in_json} ({'; '.join(boxes)})"
        )


@dataclass(frozen=True)
class ImageRecord:
    """One kept image: its id, file, original size and its boxes in pixel ltrb with contiguous labels."""

    image_id: int
    path: Path
    height: int
    width: int
    boxes_ltrb: torch.Tensor  # [G,4] float32, pixels, clipped to the image
    labels: torch.Tensor  # [G] int64 in 1..K


def load_json(path: Path) -> dict:
    """Parse a COCO JSON, naming the file on any problem."""
    data = read_json(path, "annotation file")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or key not in data:
            raise BadInput(f"{path}: not a COCO instances file (no '{key}' list)")
    return data


def _is_id(value) -> bool:
    """A COCO id: an int, and not a bool (which Python counts as one but JSON does not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value) -> bool:
    """A finite real number, not a bool; an int too large for a float is not finite."""
    if type(value) not in (int, float):  # JSON's number types; the slower ABC check only for the rare others
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _entries(data: dict, key: str, source: str | Path) -> list:
    """data[key], which must be a list; anything else is not a COCO instances file."""
    entries = data.get(key)
    if not isinstance(entries, list):
        raise BadInput(f"{source}: not a COCO instances file ('{key}' is {type(entries).__name__}, not a list)")
    return entries


def _index_by_id(entries: list, what: str, source: str | Path) -> dict[int, dict]:
    """id -> entry for `images` or `categories`. A broken entry or a repeated id stops the load with one ValueError:
    every annotation citing that id would be in doubt, so no count could say what was lost."""
    by_id: dict[int, dict] = {}
    index_of: dict[int, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise BadInput(f"{source}: {what}[{i}] is {type(entry).__name__}, not an object")
        if not _is_id(entry.get("id")):
            raise BadInput(f"{source}: {what}[{i}] has no integer id (id={entry.get('id')!r})")
        if entry["id"] in by_id:
            raise BadInput(f"{source}: {what}[{i}] repeats id {entry['id']} of {what}[{index_of[entry['id']]}]")
        by_id[entry["id"]], index_of[entry["id"]] = entry, i
    return by_id


def points_outside(file_name: str) -> bool:
    """Whether `file_name`, relative to an image directory, names something outside it: an absolute path, or one
    that climbs out with `..` once normalised (`../x.jpg`, `a/../../x.jpg`; `sub/a.jpg` and `sub/../a.jpg` stay
    inside). Judged on the name alone, without touching the filesystem: a name cannot reach a file that the
    directory's owner did not place there, while a symlink the owner placed inside it (the converters make them,
    `ssd_ds.data.convert`) is followed."""
    name = posixpath.normpath(file_name)
    return posixpath.isabs(name) or name == ".." or name.startswith("../")


def _check_image(img: dict, source: str | Path) -> None:
    """An image entry needs a file name and a positive size that float32 boxes can address."""
    name = img.get("file_name")
    if not isinstance(name, str) or not name:
        raise BadInput(f"{source}: image {img['id']} has no file_name (file_name={name!r})")
    for key in ("width", "height"):
        size = img.get(key)
        if not (_is_finite_number(size) and 0 < size <= MAX_IMAGE_SIDE):
            raise BadInput(f"{source}: image {img['id']} has {key}={size!r}, not a number in (0, {MAX_IMAGE_SIDE}]")


def _malformation(ann) -> str | None:
    """Why one annotation cannot be read (its drop reason), or None when its fields have the right types."""
    if not isinstance(ann, dict):
        return "not an object"
    for key in ANNOTATION_KEYS:
        if key not in ann:
            return f"no {key}"
    for key in ("id", "image_id", "category_id"):
        if not _is_id(ann[key]):
            return f"bad {key}"
    bbox = ann["bbox"]
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
        return "bad bbox"
    x, y, w, h = bbox  # unrolled: this runs once per annotation, 860k times on COCO
    if not (_is_finite_number(x) and _is_finite_number(y) and _is_finite_number(w) and _is_finite_number(h)):
        return "bad bbox"
    iscrowd = ann.get("iscrowd", 0)
    if not (_is_finite_number(iscrowd) and iscrowd in (0, 1)):  # 0.0 and 1.0 too: COCOeval reads them alike
        return "bad iscrowd"
    return None


def parse_coco(
    data: dict, image_dir: Path, source: str | Path = "annotations"
) -> tuple[list[ImageRecord], dict[int, int], DatasetStats]:
    """Kept images, the contiguous-label -> category-id map, and what was clipped and dropped.

    `source` (the file) starts every error message. A problem in `images` or `categories` (not a list, an entry
    that is not an object or lacks an integer id, a repeated id, an image without file_name or a positive size) is
    one ValueError naming the entry: it puts every box citing that id in doubt. One bad annotation is dropped and
    counted under its reason, as degenerate boxes always were, since merged and edited sets carry such rows.
    """
    if not isinstance(data, dict):
        raise BadInput(f"{source}: not a COCO instances file (a {type(data).__name__}, not an object)")
    annotations = _entries(data, "annotations", source)
    category_ids = list(_index_by_id(_entries(data, "categories", source), "categories", source))
    category_to_label = {cid: i + 1 for i, cid in enumerate(category_ids)}
    images = _index_by_id(_entries(data, "images", source), "images", source)
    for img in images.values():
        _check_image(img, source)
    outside = {img["id"] for img in images.values() if points_outside(img["file_name"])}
    stats = DatasetStats(images_in_json=len(images), annotations_in_json=len(annotations), images_outside=len(outside))
    first_malformed: dict[str, int] = {}  # reason -> index of its first annotation, for the warning
    per_image: dict[int, list[tuple[list[float], int]]] = {}
    for i, ann in enumerate(annotations):
        reason = _malformation(ann)
        if reason is not None:
            stats.malformed[reason] = stats.malformed.get(reason, 0) + 1
            first_malformed.setdefault(reason, i)
            continue
        img = images.get(ann["image_id"])
        if img is None:
            stats.unknown_image += 1
            continue
        if img["id"] in outside:
            stats.on_images_outside += 1
            continue
        cid = ann["category_id"]
        if cid not in category_to_label:
            stats.unknown_category[cid] = stats.unknown_category.get(cid, 0) + 1
            continue
        x, y, w, h = ann["bbox"]
        l, t = max(x, 0.0), max(y, 0.0)
        r, b = min(x + w, img["width"]), min(y + h, img["height"])
        # Judged as the float32 tensor will hold it, where a sliver can round to nothing; w <= 0 gives r <= l.
        ltrb32 = array.array("f", (l, t, r, b))
        if ltrb32[2] <= ltrb32[0] or ltrb32[3] <= ltrb32[1]:
            stats.degenerate_boxes += 1
            continue
        stats.clipped_boxes += x < 0 or y < 0 or x + w > img["width"] or y + h > img["height"]
        stats.crowd_boxes += int(ann.get("iscrowd", 0))
        stats.per_category[cid] = stats.per_category.get(cid, 0) + 1
        per_image.setdefault(img["id"], []).append(([l, t, r, b], category_to_label[cid]))
    for reason, i in first_malformed.items():
        ann_id = annotations[i].get("id") if isinstance(annotations[i], dict) else None
        log.warning(
            "%s: %d annotation(s) dropped: %s (first: annotations[%d], id %r)",
            source, stats.malformed[reason], reason, i, ann_id,
        )
    if outside:
        i, img = next((i, img) for i, img in enumerate(data["images"]) if img["id"] in outside)
        log.warning(
            "%s: %d image(s) dropped, never opened: file_name points outside the image directory %s (first: "
            "images[%d], id %d, file_name %r)", source, len(outside), image_dir, i, img["id"], img["file_name"],
        )
    records = []
    for img in data["images"]:  # JSON order, so indices are stable across runs
        if img["id"] in outside:
            continue
        anns = per_image.get(img["id"])
        if not anns:
            stats.images_without_boxes += 1
            continue
        records.append(
            ImageRecord(
                image_id=img["id"],
                path=image_dir / img["file_name"],
                height=img["height"],
                width=img["width"],
                boxes_ltrb=torch.tensor([a[0] for a in anns], dtype=torch.float32),
                labels=torch.tensor([a[1] for a in anns], dtype=torch.int64),
            )
        )
        stats.kept_boxes += len(anns)
    stats.kept_images = len(records)
    return records, {v: k for k, v in category_to_label.items()}, stats

"""A `Source` written as the COCO layout the trainer reads (`ssd_ds.data.coco`): `OUT/<split>2017/` with the images
(relative symlinks by default, copies with `copy=True`), `OUT/annotations/instances_<split>2017.json`, and
`OUT/converted.json`, the manifest that marks OUT as this tool's.

- Ids are stable across reruns: images are numbered from 1 per split in the order of their sorted file names,
  annotations from 1 in that image order and each image's source order.
- OUT must be absent, empty, or an earlier output (its manifest, and nothing at the top it did not write); an
  earlier output is replaced whole. The new one is written in a hidden sibling directory and renamed into place,
  so OUT is never half written.
- Symlinks are relative, so SRC and OUT can move or be mounted elsewhere together; `--copy` for a tree that stands
  alone. The trainer's loader follows them (a file name is judged by `annotations.points_outside` on the name, not
  on where a link leads).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ssd_ds.data.annotations import points_outside
from ssd_ds.data.coco import SPLITS, image_dir, instances_file
from ssd_ds.data.convert import Source, SourceImage
from ssd_ds.errors import AlreadyExists, BadInput

MANIFEST = "converted.json"
OWN_ENTRIES = {MANIFEST, instances_file(".", "train").parent.name, *(image_dir(".", s).name for s in SPLITS)}


def check_out(out: Path, src: Path) -> None:
    """OUT may be written: it is absent, empty, or an earlier output of this tool, and it does not hold SRC."""
    if out.resolve() == src.resolve() or out.resolve() in src.resolve().parents:
        raise BadInput(f"{out}: it holds the source {src}; choose another output directory")
    if not out.exists():
        return
    if not out.is_dir():
        raise AlreadyExists(f"{out}: exists and is not a directory")
    entries = sorted(p.name for p in out.iterdir())
    if entries and MANIFEST not in entries:
        raise AlreadyExists(f"{out}: not empty and not an output of ssd_ds.data.convert (no {MANIFEST}); remove it or "
                            f"choose another directory")
    foreign = [name for name in entries if name not in OWN_ENTRIES]
    if foreign:
        raise AlreadyExists(f"{out}: an earlier output of ssd_ds.data.convert, but it also holds {foreign[0]!r}, which "
                            f"would be lost; move it out or choose another directory")


def coco_json(images: list[SourceImage], categories: dict[int, str]) -> dict:
    """The instances document of one split: images in sorted file-name order with ids from 1, their boxes after
    them with ids from 1, `area` as w*h (COCOeval's area ranges read it; there are no masks)."""
    doc_images, annotations = [], []
    for image_id, image in enumerate(sorted(images, key=lambda im: im.file_name), start=1):
        doc_images.append({"id": image_id, "file_name": image.file_name, "width": image.width,
                           "height": image.height})
        for box in image.boxes:
            x, y, w, h = box.bbox_xywh
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": box.category_id,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": box.iscrowd})
    return {
        "info": {"description": "written by python -m ssd_ds.data.convert"},
        "licenses": [],
        "images": doc_images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": "none"} for cid, name in sorted(categories.items())],
    }


def _place_images(images: list[SourceImage], split_dir: Path, final_dir: Path, copy: bool) -> None:
    """Each image at split_dir/file_name: a copy, or a symlink relative to where it will be once renamed
    (final_dir, a sibling of split_dir's root at the same depth, so the same relative path serves both)."""
    for image in images:
        if points_outside(image.file_name):  # readers never produce one: a bug, not the user's input
            raise ValueError(f"{image.path}: output name {image.file_name!r} leaves the image directory")
        dst = split_dir / image.file_name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if copy:
            shutil.copyfile(image.path, dst)
        else:
            os.symlink(os.path.relpath(image.path.resolve(), (final_dir / image.file_name).parent), dst)


def _check_unique_names(source: Source) -> None:
    for split, images in source.splits.items():
        first: dict[str, Path] = {}
        for image in images:
            if image.file_name in first:
                raise BadInput(f"{image.path}: named {image.file_name!r} in {split}, as {first[image.file_name]} is")
            first[image.file_name] = image.path


def _split_line(split: str, doc: dict, num_classes: int) -> str:
    boxes = doc["annotations"]
    with_boxes = {a["image_id"] for a in boxes}
    return (f"{split}: {len(doc['images'])} images ({len(doc['images']) - len(with_boxes)} without boxes), "
            f"{len(boxes)} boxes ({sum(a['iscrowd'] for a in boxes)} iscrowd), "
            f"{len({a['category_id'] for a in boxes})} of {num_classes} classes")


def write_coco_layout(source: Source, out: str | Path, copy: bool = False) -> list[str]:
    """Write `source` at OUT (see the module docstring); -> the summary lines to print."""
    out = Path(out)
    check_out(out, source.root)
    _check_unique_names(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    final = out.parent.resolve() / out.name
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the data set should read like any other directory
        split_lines = []
        for split in SPLITS:
            images = source.splits[split]
            if not images:
                raise BadInput(f"{source.root}: no {split} images to write")
            _place_images(images, image_dir(tmp, split), image_dir(final, split), copy)
            doc = coco_json(images, source.categories)
            instances_file(tmp, split).parent.mkdir(exist_ok=True)
            instances_file(tmp, split).write_text(json.dumps(doc), encoding="utf-8")
            split_lines.append(_split_line(split, doc, len(source.categories)))
        manifest = {"tool": "ssd_ds.data.convert", "format": source.kind, "source": str(source.root.resolve()),
                    "images": "copied" if copy else "symlinked", "splits": split_lines, "notes": source.notes,
                    "skipped": {reason: len(items) for reason, items in source.skipped.items()}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [
        f"{source.kind} {source.root} -> {out} (images {'copied' if copy else 'symlinked, relative links'})",
        *source.notes,
        *split_lines,
        "classes: " + ", ".join(f"{cid} {name}" for cid, name in sorted(source.categories.items())),
        *(f"skipped {len(items)} {reason} (first: {items[0]})" for reason, items in source.skipped.items()),
    ]


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename tmp to out; an earlier output there (check_out allowed it) is moved aside first and removed after."""
    if not (out.exists() and any(out.iterdir())):
        os.rename(tmp, out)  # replaces an empty directory
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / out.name)
    os.rename(tmp, out)
    shutil.rmtree(old)

"""Bbox-only copies of the COCO instances files, as NVIDIA's v0.7 submission loads them (SPEC section 5).

`python -m ssd_ds.data.bbox_only ANNOTATIONS_DIR` reads `instances_{train,val}2017.json` there and writes
`bbox_only_instances_{train,val}2017.json` beside them. Segmentation polygons are most of COCO's annotation bytes
and detection never reads them, so dropping them makes the files far faster to load:

- train: images keep id, file_name, height, width; annotations keep id, image_id, bbox, category_id and iscrowd
  (NVIDIA dropped iscrowd too; it is kept so a loader can still choose how to treat crowd boxes).
- val: every key is kept, with `segmentation=[]`, because COCOeval reads iscrowd, area and the rest.

Top-level keys (info, licenses, categories) are copied unchanged. Files are written atomically (temporary file
in the same directory, then os.replace), so a reader never sees half a file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ssd_ds.errors import BadInput, NotFound
from ssd_ds.fileio import atomic_open, read_json

TRAIN_IMAGE_KEYS = ("id", "file_name", "height", "width")
TRAIN_ANNOTATION_KEYS = ("id", "image_id", "bbox", "category_id", "iscrowd")
SPLITS = ("train2017", "val2017")


def bbox_only_path(annotations_dir: str | Path, split: str) -> Path:
    """Where the bbox-only copy of `instances_{split}.json` lives."""
    return Path(annotations_dir) / f"bbox_only_instances_{split}.json"


def load_json(path: str | Path) -> dict:
    """A JSON object from path; malformed or non-object JSON raises ValueError naming the file."""
    doc = read_json(path, "annotation file")
    if not (isinstance(doc, dict) and all(isinstance(doc.get(k), list) for k in ("images", "annotations"))):
        raise BadInput(f"{path}: not a COCO instances file (need an object with 'images' and 'annotations' lists)")
    return doc


def _project(records: list[dict], keys: tuple[str, ...], what: str, source: str | Path) -> list[dict]:
    """Each record cut down to keys, in that order; a missing key raises ValueError naming the file."""
    out = []
    for record in records:
        missing = [k for k in keys if k not in record]
        if missing:
            raise BadInput(f"{source}: {what} {record.get('id', '?')} lacks {missing}")
        out.append({k: record[k] for k in keys})
    return out


def bbox_only_train(doc: dict, source: str | Path = "document") -> dict:
    """The training copy: images and annotations cut to the documented keys; other top-level keys unchanged.

    source names the document in the error raised when a record lacks a key.
    """
    return {
        **doc,
        "images": _project(doc["images"], TRAIN_IMAGE_KEYS, "image", source),
        "annotations": _project(doc["annotations"], TRAIN_ANNOTATION_KEYS, "annotation", source),
    }


def bbox_only_val(doc: dict) -> dict:
    """The evaluation copy: everything kept, each annotation's segmentation replaced by []."""
    return {**doc, "annotations": [{**ann, "segmentation": []} for ann in doc["annotations"]]}


def write_json_atomic(doc: dict, dst: str | Path) -> None:
    """Write doc to dst atomically (ssd_ds.fileio), compactly."""
    with atomic_open(dst) as f:
        json.dump(doc, f, separators=(",", ":"))


def write_bbox_only(annotations_dir: str | Path) -> list[Path]:
    """Write the bbox-only copies of the train and val instances files in annotations_dir; -> their paths."""
    written = []
    for split in SPLITS:
        src = Path(annotations_dir) / f"instances_{split}.json"
        if not src.is_file():
            raise NotFound(f"{src}: no such annotation file")
        doc = load_json(src)
        out = bbox_only_train(doc, src) if split.startswith("train") else bbox_only_val(doc)
        dst = bbox_only_path(annotations_dir, split)
        write_json_atomic(out, dst)
        written.append(dst)
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("annotations_dir", type=Path, help="directory holding instances_{train,val}2017.json")
    args = parser.parse_args(argv)
    try:
        written = write_bbox_only(args.annotations_dir)
    except (OSError, ValueError) as exc:
        parser.exit(1, f"error: {exc}\n")
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    from ssd_ds.cli import run_cli

    run_cli(main)

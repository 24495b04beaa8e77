"""`python -m ssd_ds.data.convert voc|yolo SRC OUT [--copy]`: a VOC or YOLO tree as a COCO-laid-out directory the
trainer reads (`--data OUT`); prints what it wrote per split and what it skipped. See ssd_ds/data/convert/."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssd_ds.data.convert.coco_layout import write_coco_layout
from ssd_ds.data.convert.voc import read_voc
from ssd_ds.data.convert.yolo import read_yolo


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m ssd_ds.data.convert", description=__doc__)
    formats = parser.add_subparsers(dest="format", required=True)
    voc = formats.add_parser("voc", help="Pascal VOC: Annotations/, JPEGImages/, ImageSets/Main/")
    yolo = formats.add_parser("yolo", help="YOLO: images/<split>/ and labels/<split>/, data.yaml or classes.txt")
    for sub in (voc, yolo):
        sub.add_argument("src", type=Path, help="the source tree")
        sub.add_argument("out", type=Path, help="the COCO-laid-out directory to write (absent, empty, or an earlier "
                                                "output of this command, which is replaced)")
        sub.add_argument("--copy", action="store_true", help="copy the images (default: relative symlinks)")
    voc.add_argument("--train-list", help="ImageSets/Main/NAME.txt as the train split (default: train, else trainval)")
    voc.add_argument("--val-list", help="ImageSets/Main/NAME.txt as the val split (default: val, else test)")
    args = parser.parse_args(argv)
    if args.format == "voc":
        source = read_voc(args.src, args.train_list, args.val_list)
    else:
        source = read_yolo(args.src)
    print("\n".join(write_coco_layout(source, args.out, args.copy)))
    return args.out


if __name__ == "__main__":
    from ssd_ds.cli import run_cli

    run_cli(main)

"""Run a trained model on pictures: `python -m ssd_ds.predict --checkpoint C --input IMAGE_OR_DIR --output DIR
[--score 0.3] [--batch N] [--device auto|cpu|cuda]`.

JPEG and PNG in; out, for each image, a copy with its boxes drawn (class name and score), and one COCO-format
results file `detections.json` (`image_id, bbox [x, y, w, h] in pixels, score, category_id`, plus `file_name`) for
every detection above --score. A file named like COCO's (`000000139.jpg`) keeps its number as image_id, so the
results load against COCO's annotations (`COCO.loadRes`); other files are numbered on from the largest such
number. Unreadable images are reported and skipped. The checkpoint is `model.pt` (written beside every training
checkpoint), its directory, or a run directory (its latest checkpoint).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_bounding_boxes
from tqdm import tqdm

from ssd_ds.data.transforms import EvalTransform
from ssd_ds.errors import BadInput, NotFound
from ssd_ds.fileio import atomic_write
from ssd_ds.inference import detect_batch, inference_ops, load_inference
from ssd_ds.postprocess import to_coco_results

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def find_images(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise NotFound(f"{path}: no such image or directory")
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise BadInput(f"{path}: no .jpg, .jpeg or .png file in it")
    return images


def image_ids(paths: list[Path]) -> list[int]:
    """COCO's number for a COCO-named file (its stem); the others numbered on from the largest of those."""
    numbered = {p: int(p.stem) for p in paths if p.stem.isdigit()}
    if len(set(numbered.values())) != len(numbered):  # 1.jpg and 001.jpg: number them all instead
        numbered = {}
    rest = iter(range(max(numbered.values(), default=0) + 1, 2**62))
    return [numbered[p] if p in numbered else next(rest) for p in paths]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="model.pt, a checkpoint directory, or a run directory")
    parser.add_argument("--input", required=True, help="an image, or a directory of .jpg/.png images")
    parser.add_argument("--output", required=True, help="directory for the drawn images and detections.json")
    parser.add_argument("--score", type=float, default=0.3, help="draw and report detections scoring above this")
    parser.add_argument("--batch", type=int, default=16, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto (CUDA if any), cpu or cuda")
    args = parser.parse_args(argv)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model, meta = load_inference(args.checkpoint, device)
    names, size = meta["class_names"], meta["input_size"]
    ops, autocast = inference_ops(meta, device)
    paths = find_images(Path(args.input))
    ids = dict(zip(paths, image_ids(paths)))
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    resize = EvalTransform(size).pipeline
    results, unreadable = [], []
    for start in tqdm(range(0, len(paths), args.batch), unit="batch", disable=len(paths) <= args.batch):
        batch = []
        for path in paths[start : start + args.batch]:
            try:
                with Image.open(path) as img:
                    batch.append((path, img.convert("RGB")))
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                unreadable.append(f"{path}: {exc}")
        if not batch:
            continue
        images = torch.stack([resize(image) for _, image in batch])
        detections = detect_batch(model, images, ops.coder, device, autocast, ops.decode_scores).per_image()
        for (path, image), (boxes, scores, labels) in zip(batch, detections):
            keep = scores > args.score
            boxes, scores, labels = boxes[keep].cpu(), scores[keep].cpu(), labels[keep].cpu()
            W, H = image.size
            records = to_coco_results([(boxes, scores, labels)], [ids[path]], [(H, W)], meta["label_to_category"])
            results += [{**r, "file_name": path.name} for r in records]
            pixels = (boxes.clamp(0, 1) * torch.tensor([W, H, W, H])).round()
            drawn = draw_bounding_boxes(pil_to_tensor(image), pixels, width=2,
                                        labels=[f"{names[int(c)]} {s:.2f}" for c, s in zip(labels, scores)])
            to_pil_image(drawn).save(out_dir / f"{path.stem}.png")
    atomic_write(out_dir / "detections.json", json.dumps(results))
    for line in unreadable:
        print(f"skipped unreadable image {line}")
    print(f"{len(paths) - len(unreadable)} images, {len(results)} detections above {args.score}: {out_dir}")
    return results


if __name__ == "__main__":
    from ssd_ds.cli import run_cli

    run_cli(main)

"""Export a trained model: `python -m ssd_ds.export --checkpoint C --format onnx|exported_program --output F`.

The exported model takes a normalised image batch (float32 [B,3,S,S], B free: `ssd_ds.data.transforms.normalize_images`
of the resized uint8 image) and returns the evaluation's detections (SPEC section 6), post-processing included:

    boxes  [B,200,4] float32  relative (l, t, r, b), not clamped to [0, 1]
    scores [B,200]   float32  by decreasing score; image i's first counts[i] rows are its detections
    labels [B,200]   int64    1..C-1 (index into class_names; 0 in the padding)
    counts [B]       int64

Decode, softmax, per-class top-200 over 0.05, NMS at IoU 0.5 and the per-image top-200 are all in the graph. The
ONNX model runs NMS as ONNX's `NonMaxSuppression` (float32 IoUs: the trainer's NMS computes them in float64, so a
box pair at IoU 0.5 to within 1e-7 may go the other way, and detections of equal score may come in another order);
the ExportedProgram runs torchvision's NMS, as the trainer does (load it with `import torchvision` first). Both are
exported on the CPU in float32, whatever precision the run evaluated in; the ExportedProgram runs on the CPU
(torch.export bakes the device of the tensors the graph creates), the ONNX file on any onnxruntime provider. What
predict needs beyond the tensors (class names, the label -> COCO category id map, the input size) is stored in the
file: ONNX metadata `ssd_ds` and the ExportedProgram's extra file `ssd_ds.json`, as JSON.

After writing, the export runs the file (onnxruntime, or the loaded ExportedProgram) on a seeded batch and compares
its detections with the PyTorch model's; it fails when they differ beyond float32 rounding.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ssd_ds.errors import BadInput
from ssd_ds.fileio import atomic_open
from ssd_ds.inference import inference_ops, load_inference
from ssd_ds.postprocess import Detections, PostprocessConfig, decode_scores, nms_by_group, select_detections

FORMATS = ("onnx", "exported_program")
METADATA_KEY = "ssd_ds"
OUTPUT_NAMES = Detections._fields


@torch.library.custom_op("ssd_ds::multiclass_nms", mutates_args=())
def multiclass_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
                   score_threshold: float) -> torch.Tensor:
    """ONNX NonMaxSuppression's contract: boxes [B,A,4], scores [B,C,A] -> [N,3] (image, class, anchor) kept by greedy
    NMS within each (image, class), over the scores above the threshold. As an op of its own so that the ONNX export
    maps it onto NonMaxSuppression (`_onnx_multiclass_nms`); here, the trainer's NMS."""
    C = scores.shape[1]
    image, cls, anchor = (scores > score_threshold).nonzero(as_tuple=True)
    kept = nms_by_group(boxes[image, anchor], scores[image, cls, anchor], image * C + cls, iou_threshold)
    return torch.stack([image, cls, anchor], dim=1)[kept]


@multiclass_nms.register_fake
def _(boxes, scores, iou_threshold, score_threshold):
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(), 3), dtype=torch.int64)


def _onnx_multiclass_nms():
    """The ONNX translation of `multiclass_nms` (onnxscript, imported only to export)."""
    from onnxscript import opset18 as op

    def translate(boxes, scores, iou_threshold: float, score_threshold: float):
        return op.NonMaxSuppression(boxes, scores, op.Constant(value_ints=[2**31 - 1]),
                                    op.Constant(value_floats=[iou_threshold]),
                                    op.Constant(value_floats=[score_threshold]))

    return {torch.ops.ssd_ds.multiclass_nms.default: translate}


class Detector(torch.nn.Module):
    """The model with its post-processing: normalised images [B,3,S,S] -> (boxes, scores, labels, counts)."""

    def __init__(self, model: torch.nn.Module, dboxes_cxcywh: torch.Tensor, onnx_nms: bool,
                 cfg: PostprocessConfig = PostprocessConfig()):
        super().__init__()
        self.model, self.cfg, self.onnx_nms = model, cfg, onnx_nms
        self.register_buffer("dboxes_cxcywh", dboxes_cxcywh)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        locs, logits = self.model(images)
        boxes, scores = decode_scores(locs, logits, self.dboxes_cxcywh, self.cfg.score_threshold)
        nms = torch.ops.ssd_ds.multiclass_nms if self.onnx_nms else None
        return tuple(select_detections(boxes, scores, self.cfg, multiclass_nms=nms))


def build_detector(model: torch.nn.Module, meta: dict, onnx_nms: bool) -> Detector:
    """`load_inference`'s model and meta as a float32 CPU Detector, with the default boxes evaluation uses."""
    ops, _ = inference_ops(meta, torch.device("cpu"))
    return Detector(model.float().cpu().eval(), ops.coder.dboxes_cxcywh, onnx_nms).eval()


def export(detector: Detector, fmt: str, output: Path, example: torch.Tensor, meta: dict) -> None:
    """Write `detector` to `output` (atomically) in `fmt`, batch size dynamic, with `meta` (JSON) embedded."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    info = json.dumps({k: meta.get(k) for k in ("model", "input_size", "anchor_scales", "class_names",
                                                "label_to_category")})
    output.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if fmt == "onnx":
            try:
                import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
            except ImportError:
                raise SystemExit("error: --format onnx needs onnx, onnxscript and onnxruntime, the export group: "
                                 "pip install -r requirements-export.txt -c constraints.txt") from None
            program = torch.onnx.export(detector, (example,), dynamo=True, input_names=["images"],
                                        output_names=list(OUTPUT_NAMES), dynamic_shapes={"images": {0: batch}},
                                        custom_translation_table=_onnx_multiclass_nms(), verbose=False)
            program.model.metadata_props[METADATA_KEY] = info
            with atomic_open(output, "wb") as f:
                f.write(program.model_proto.SerializeToString())
        else:
            program = torch.export.export(detector, (example,), dynamic_shapes={"images": {0: batch}}, strict=False)
            with atomic_open(output, "wb") as f:
                torch.export.save(program, f, extra_files={f"{METADATA_KEY}.json": info})


def run_exported(fmt: str, path: Path, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The exported file's outputs on `images`, run by onnxruntime or as a loaded ExportedProgram."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return tuple(torch.from_numpy(o) for o in session.run(None, {"images": images.numpy()}))
    with torch.no_grad():
        return tuple(torch.export.load(str(path)).module()(images))


def compare(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...], atol: float = 1e-4) -> dict:
    """How far the exported detections are from the PyTorch model's: per image, the detections of one that the other
    has (same label, box and score within `atol`), and the largest score and box differences of those pairs."""
    got, want = Detections(*got), Detections(*want)
    matched = total = 0
    worst_score = worst_box = 0.0
    for (g_boxes, g_scores, g_labels), (w_boxes, w_scores, w_labels) in zip(got.per_image(), want.per_image()):
        total += max(len(g_scores), len(w_scores))
        if len(g_scores) == 0 or len(w_scores) == 0:
            continue
        box_diff = (g_boxes[:, None] - w_boxes[None]).abs().amax(-1)  # [G, W]
        score_diff = (g_scores[:, None] - w_scores[None]).abs()
        close = (box_diff <= atol) & (score_diff <= atol) & (g_labels[:, None] == w_labels[None])
        pairs = close.any(1)
        matched += min(int(pairs.sum()), int(close.any(0).sum()))
        if pairs.any():
            best = torch.where(close, box_diff + score_diff, torch.inf).argmin(1)[pairs]
            worst_box = max(worst_box, float(box_diff[pairs].gather(1, best[:, None]).max()))
            worst_score = max(worst_score, float(score_diff[pairs].gather(1, best[:, None]).max()))
    return {"detections": total, "matched": matched, "max_box_diff": worst_box, "max_score_diff": worst_score,
            "counts_equal": bool(torch.equal(got.counts, want.counts))}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="model.pt, a checkpoint directory, or a run directory")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx (.onnx) or exported_program (.pt2)")
    parser.add_argument("--output", required=True, help="the file to write")
    parser.add_argument("--check_batch", type=int, default=2, help="images in the seeded batch the export is checked "
                        "on (0: no check)")
    args = parser.parse_args(argv)
    output = Path(args.output)
    if output.is_dir():
        raise BadInput(f"{output}: is a directory; --output names the file to write")
    if args.format == "exported_program" and output.suffix != ".pt2":
        raise BadInput(f"{output}: an ExportedProgram file must end in .pt2 (torch.export.load expects it)")
    model, meta = load_inference(args.checkpoint, "cpu")
    size = meta["input_size"]
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(max(args.check_batch, 2), 3, size, size, generator=generator)
    detector = build_detector(model, meta, onnx_nms=args.format == "onnx")
    export(detector, args.format, output, images[:2], meta)  # 2: a batch of 1 would be specialised
    print(f"{output}: {meta['model']} ({len(meta['class_names']) - 1} classes, {size}px) as {args.format}, "
          f"{output.stat().st_size / 2**20:.1f} MiB")
    if args.check_batch == 0:
        return {}
    with torch.no_grad():  # the trainer's post-processing, whatever NMS the export runs
        want = Detector(detector.model, detector.dboxes_cxcywh, onnx_nms=False)(images)
    report = compare(run_exported(args.format, output, images), want)
    print(f"check on {len(images)} seeded images: {report['matched']} of {report['detections']} detections match the "
          f"PyTorch model's (largest differences: box {report['max_box_diff']:.2e}, score "
          f"{report['max_score_diff']:.2e})")
    if report["detections"] == 0:
        print("  the seeded batch gave no detection (an untrained model?): only the counts were compared")
    if report["matched"] < report["detections"] or not report["counts_equal"]:
        raise SystemExit(f"error: {output}: the exported model's detections differ from the PyTorch model's")
    return report


if __name__ == "__main__":
    from ssd_ds.cli import run_cli

    run_cli(main)

"""`python -m ssd_ds.evaluate`: a checkpoint's COCO AP on a data set's val split, computed as the trainer computes it
(sharded inference, `ssd_ds.inference.infer_detections`; COCOeval, `ssd_ds.coco_eval`), and where the model fails
(`ssd_ds.eval_report`): a per-class table worst first, the TIDE error breakdown and a confusion summary, printed and
written to `--output` with the precision-recall curves of the worst classes as a PNG.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ssd_ds.coco_eval import COCOEVAL_BACKENDS, DEFAULT_BACKEND, STAT_LABELS, STAT_NAMES, evaluate_report
from ssd_ds.data.coco import CocoDetection
from ssd_ds.data.loaders import build_eval_loader
from ssd_ds.data.transforms import EvalTransform
from ssd_ds.distributed import gather_to_rank0, init_distributed, setup_process_env
from ssd_ds.errors import BadInput
from ssd_ds.eval_report import format_confusion, format_errors, format_per_class, plot_pr_curves, write_per_class_csv
from ssd_ds.fileio import atomic_write
from ssd_ds.inference import infer_detections, inference_ops, load_inference


def main(argv: list[str] | None = None) -> dict | None:
    """`python -m ssd_ds.evaluate --checkpoint C --data DIR [--backend hotcoco|faster|pycocotools] [--output DIR]`
    (one process), or under `deepspeed --num_gpus N --module ssd_ds.evaluate ...` sharded over the ranks: the
    checkpoint's COCO AP on the data set's val split, computed as the trainer computes it (same transform, precision,
    post-processing, COCOeval), then a per-class table (worst first), the AP each kind of error costs (TIDE) and which
    classes are mistaken for which. Writes results.json, per_class.csv and pr_curves.png to --output (default: an
    `evaluate` directory beside the checkpoint given). Returns the report (`ssd_ds.coco_eval.evaluate_report`)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--checkpoint", required=True, help="model.pt, a checkpoint directory, or a run directory")
    parser.add_argument("--data", required=True, help="COCO-laid-out data set; its val2017 split is evaluated")
    parser.add_argument("--backend", choices=COCOEVAL_BACKENDS, default=DEFAULT_BACKEND,
                        help="COCOeval implementation")
    parser.add_argument("--output", help="directory for results.json, per_class.csv and pr_curves.png (default: "
                                         "CHECKPOINT/evaluate, or beside a model.pt given as a file)")
    parser.add_argument("--batch", type=int, default=64, help="images per batch per rank")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers per rank")
    parser.add_argument("--channels_last", type=int, choices=(0, 1), default=1, help="as the trainer's default")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # DeepSpeed's launcher
    args = parser.parse_args(argv)
    setup_process_env()
    rank, world, device = init_distributed(timeout=600.0)
    model, meta = load_inference(args.checkpoint, device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    val_set = CocoDetection(args.data, "val", transform=EvalTransform(meta["input_size"]), skip_to_next=False)
    if val_set.label_to_category != meta["label_to_category"]:
        raise BadInput(f"{val_set.ann_file}: its categories are not the checkpoint's ({len(meta['class_names']) - 1}"
                       f" classes, ids {sorted(meta['label_to_category'].values())[:5]}...)")
    ops, autocast = inference_ops(meta, device)
    loader = build_eval_loader(val_set, rank, world, args.batch, args.workers, pin_memory=device.type == "cuda")
    detections, seen, skipped, _ = infer_detections(model, loader, ops.coder, val_set.label_to_category, device,
                                                    autocast, decode=ops.decode_scores, memory_format=memory_format)
    gathered = gather_to_rank0((detections, len(seen), skipped))
    if rank != 0:
        return None
    report = evaluate_report(val_set.ann_file, np.concatenate([g[0] for g in gathered]), args.backend)
    stats = report["stats"]
    print(f"{args.checkpoint}: {sum(g[1] for g in gathered)} images on {world} rank(s), "
          f"{sum(g[2] for g in gathered)} unreadable, COCOeval ({args.backend}):")
    for name, label in zip(STAT_NAMES, STAT_LABELS):
        print(f"  {name:6s} {label:36s} {stats[name]:.4f}")
    print("\nper class, worst first (AP at IoU 0.50:0.95 unless named; - : no ground truth of that size):")
    print(format_per_class(report["per_class"]))
    out_dir = output_dir(args.checkpoint, args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_per_class_csv(out_dir / "per_class.csv", report["per_class"])
    atomic_write(out_dir / "results.json", json.dumps(report))
    written = ["results.json", "per_class.csv"]
    if report["errors"] is not None:
        print("\nerrors (TIDE, Bolya et al. 2020):")
        print(format_errors(report["errors"]))
        print("\nconfusion:")
        print(format_confusion(report["confusion"]))
        plot_pr_curves(out_dir / "pr_curves.png", report["pr_curves"], report["per_class"])
        written.append("pr_curves.png")
    print(f"\nwritten to {out_dir}: {', '.join(written)}")
    return report


def output_dir(checkpoint: str, output: str | None) -> Path:
    """--output, or `evaluate/` in the checkpoint directory or run directory given (beside a model.pt file given)."""
    if output:
        return Path(output)
    checkpoint = Path(checkpoint)
    return (checkpoint.parent if checkpoint.is_file() else checkpoint) / "evaluate"

if __name__ == "__main__":
    from ssd_ds.cli import run_cli

    run_cli(main)

"""Check a COCO-laid-out data set before training on it: `python -m ssd_ds.data.check DATA [--model cpu_small|mlperf]
[--split train|val|both] [--report FILE.png] [--fit] [--anchor_scales S0,S1,...] [--workers N]`.

Reads each split as the trainer does (ssd_ds.data.coco.CocoDetection: the same annotation file, the same checks and
drops, the same decode of every image) and prints, per split: what was kept and dropped and why, unreadable images,
boxes per image and per class, box sizes in pixels of the model's square input, COCO's size buckets, and the share of
boxes the model's default boxes cover (ssd_ds.anchor_fit). `--fit` proposes default-box scales that cover more of the
train split's boxes and prints the flag to train with; `--report` draws it all in one PNG (ssd_ds.data.check_report).

Exit status 0 when the trainer can use the data set, else 2 with one `error: <file>: <problem>` line: a split or
file missing, no usable image or box, train and val with different categories, or more consecutive unreadable train
images than the trainer passes over.
"""

from __future__ import annotations

import argparse
import logging
import textwrap
from dataclasses import replace
from pathlib import Path

import torch

from ssd_ds.anchor_fit import Fit, fit_scales, scales_flag
from ssd_ds.data.coco import MAX_FALLBACKS, CocoDetection
from ssd_ds.data.split_stats import (
    SIZE_NAMES,
    Coverage,
    SplitCheck,
    boxes_per_image_counts,
    measure_coverage,
    scan_split,
)
from ssd_ds.errors import BadInput
from ssd_ds.model_config import MODEL_PRESETS, build_model_config

SHOWN = 5  # unreadable or resized images named in the report


def problems(checks: list[SplitCheck]) -> list[str]:
    """What makes the data set unusable for the trainer, each as `<file>: <problem>`."""
    found = []
    for check in checks:
        if check.images == 0:
            found.append(f"{check.ann_file}: none of its {len(check.unreadable)} images with boxes can be read")
        elif check.name == "train" and check.longest_unreadable_run > MAX_FALLBACKS:
            found.append(f"{check.ann_file}: {check.longest_unreadable_run} consecutive unreadable images; the trainer "
                         f"passes over at most {MAX_FALLBACKS} before it stops")
    if len(checks) == 2 and checks[0].class_names != checks[1].class_names:
        found.append(f"{checks[1].ann_file}: its categories are not train's ({len(checks[1].class_names) - 1} vs "
                     f"{len(checks[0].class_names) - 1}, or in another order): the trainer evaluates with one list")
    return found


def _pct(share: float) -> str:
    return "  -  " if share != share else f"{100 * share:.1f}%"  # NaN: no box there


def _quantiles(values: torch.Tensor) -> str:
    q = torch.quantile(values.double(), torch.tensor([0.0, 0.05, 0.5, 0.95, 1.0], dtype=torch.float64)).tolist()
    return f"min {q[0]:.1f}, 5% {q[1]:.1f}, median {q[2]:.1f}, 95% {q[3]:.1f}, max {q[4]:.1f}"


def describe_split(check: SplitCheck, input_size: int) -> list[str]:
    """The report's lines for one split: counts, drops, sizes and classes."""
    stats, n = check.stats, len(check.labels)
    lines = [f"{check.name}: {check.ann_file}", f"  annotations: {stats.summary()}"]
    lines.append(f"  images: {check.images} readable of {stats.kept_images} kept; {len(check.unreadable)} unreadable"
                 + (f" (the trainer skips them), e.g. {', '.join(map(str, check.unreadable[:SHOWN]))}"
                    if check.unreadable else ""))
    if check.resized:
        lines.append(f"  warning: {len(check.resized)} images decode to another size than the annotations give (the "
                     f"trainer scales boxes by the decoded size), e.g. {'; '.join(check.resized[:SHOWN])}")
    if check.images == 0:
        return lines
    per_image = check.boxes_per_image.double()
    buckets = " | ".join(f"{label}: {count}" for label, count in boxes_per_image_counts(check.boxes_per_image))
    lines.append(f"  boxes per image: mean {per_image.mean():.2f}, max {int(per_image.max())}; images with {buckets}")
    wh = check.input_wh(input_size).double()
    lines.append(f"  box size in the {input_size}px input, sqrt(w*h): {_quantiles(wh.prod(1).sqrt())} px")
    lines.append(f"  box aspect w/h in the input: {_quantiles(wh[:, 0] / wh[:, 1])}")
    sizes = torch.bincount(check.size_bucket, minlength=3).tolist()
    lines.append("  COCO size (box area in the original image): "
                 + ", ".join(f"{name} {count} ({100 * count / n:.1f}%)" for name, count in zip(SIZE_NAMES, sizes)))
    per_class = torch.bincount(check.labels, minlength=len(check.class_names)).tolist()
    order = sorted(range(1, len(per_class)), key=lambda k: -per_class[k])
    lines += textwrap.wrap("boxes per class: " + "; ".join(f"{check.class_names[k]} {per_class[k]}" for k in order),
                           width=116, initial_indent="  ", subsequent_indent="    ")
    return lines


def describe_coverage(check: SplitCheck, coverage: Coverage) -> list[str]:
    """The report's lines for one split under one set of default boxes."""
    counts = torch.bincount(check.size_bucket, minlength=len(SIZE_NAMES)).tolist()
    lines = [f"  coverage by {coverage.label} ({scales_flag(coverage.scales)} px): {_pct(coverage.overall)} of "
             f"{len(check.labels)} boxes have a default box with IoU > 0.5",
             "    by COCO size: " + ", ".join(f"{name} {_pct(share)} ({n})" for name, share, n in
                                           zip(SIZE_NAMES, coverage.per_size.tolist(), counts))]
    per_class = coverage.per_class.tolist()
    order = sorted((k for k in range(1, len(per_class)) if per_class[k] == per_class[k]), key=lambda k: per_class[k])
    lines += textwrap.wrap("by class, least covered first: " + "; ".join(
        f"{check.class_names[k]} {_pct(per_class[k])}" for k in order), width=116, initial_indent="    ",
        subsequent_indent="      ")
    return lines


def describe_fit(fit: Fit, checks: list[SplitCheck], before: list[Coverage], after: list[Coverage],
                 model: str) -> list[str]:
    """The fitting's lines: what was searched, coverage before and after on every split, the flag to train with."""
    lines = [f"fit on train: {fit.candidates} progressions of default-box scales scored on {fit.boxes} boxes "
             f"(ssd_ds/anchor_fit.py)"]
    if not fit.improved:
        lines.append(f"  none covers more than {model}'s own scales ({_pct(fit.coverage_before)}): keep them")
        return lines
    lines.append(f"  best: {fit.rule}: {scales_flag(fit.scales)} px")
    for check, b, a in zip(checks, before, after):
        small = f"small {_pct(b.per_size[0].item())} -> {_pct(a.per_size[0].item())}"
        lines.append(f"  {check.name} coverage: {_pct(b.overall)} -> {_pct(a.overall)} ({small})")
    lines.append(f"  train with: --model {model} --anchor_scales {scales_flag(fit.scales)}")
    lines.append(f'  or in a --config file: "model": "{model}", "anchor_scales": [{", ".join(map(str, fit.scales))}]')
    return lines


def parse_scales(text: str | None) -> tuple[float, ...] | None:
    """--anchor_scales as the trainer's flag takes it: "S0,S1,..." pixels of the input, or none."""
    if text is None or text.lower() == "none":
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v != "")
    except ValueError:
        raise BadInput(f"--anchor_scales: expected a comma-separated list of float or none, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="COCO-laid-out data set directory (train2017/, val2017/, annotations/)")
    parser.add_argument("--model", choices=sorted(MODEL_PRESETS), default="cpu_small",
                        help="model preset whose input size and default boxes are measured (the trainer's default)")
    parser.add_argument("--split", choices=("train", "val", "both"), default="both", help="splits to check")
    parser.add_argument("--report", metavar="FILE.png", help="draw the histograms and coverage bars into this PNG")
    parser.add_argument("--fit", action="store_true", help="propose default-box scales that cover more train boxes")
    parser.add_argument("--anchor_scales", metavar="S0,S1,...", default=None,
                        help="measure these default-box scales (as the trainer's flag) instead of the preset's")
    parser.add_argument("--workers", type=int, default=4, help="threads decoding images")
    args = parser.parse_args(argv)
    if args.fit and args.model == "mlperf":
        raise BadInput("--fit: the mlperf model keeps the benchmark's 8732 default boxes; fit another preset's "
                       "(--model cpu_small)")
    if args.fit and args.split == "val":
        raise BadInput("--fit fits on the train split: --split train or both")
    scales = parse_scales(args.anchor_scales)
    splits = ("train", "val") if args.split == "both" else (args.split,)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    datasets = [CocoDetection(args.data, split, skip_to_next=False) for split in splits]  # a missing split fails here
    model_cfg = build_model_config(args.model, num_classes=datasets[0].num_classes, anchor_scales=scales)
    checks = [scan_split(dataset, split, args.workers) for dataset, split in zip(datasets, splits)]
    found = problems(checks)
    usable = [check for check in checks if check.images]
    own = f"{args.model}'s {'given' if scales else 'own'} scales"
    before = [measure_coverage(check, model_cfg.anchors, own) for check in usable]
    fit, after = None, []
    if args.fit and not found:
        fit = fit_scales(model_cfg.anchors, usable[0].gt_ltrb, usable[0].size_bucket == 0)
        if fit.improved:
            fitted = replace(model_cfg.anchors, scales=fit.scales)
            after = [measure_coverage(check, fitted, "fitted scales") for check in usable]
    print(f"model {args.model}: {model_cfg.input_size}px input, {model_cfg.anchors.num_anchors} default boxes")
    for check in checks:
        print("\n".join(describe_split(check, model_cfg.input_size)))
        for coverages in (before, after):
            for coverage in (c for c, u in zip(coverages, usable) if u is check):
                print("\n".join(describe_coverage(check, coverage)))
    if fit is not None:
        print("\n".join(describe_fit(fit, usable, before, after, args.model)))
    if args.report and usable:
        from ssd_ds.data.check_report import draw_report  # matplotlib, imported only to draw

        draw_report(Path(args.report), usable, before, after, model_cfg, fit)
        print(f"report: {args.report}")
    if found:
        raise BadInput("; ".join(found))
    read = " and ".join(f"{c.images} {c.name} images with {len(c.labels)} boxes" for c in checks)
    print(f"usable: the trainer reads {read}")
    return 0


if __name__ == "__main__":
    from ssd_ds.cli import run_cli

    run_cli(main)

"""The data check's one-page PNG (`python -m ssd_ds.data.check DATA --report FILE.png`): what ssd_ds.data.check prints,
as histograms and coverage bars.

Top, per split: boxes per image, box sizes in pixels of the model's input with the default-box scales marked, COCO's
size buckets, and the covered share overall and per bucket under each set of default boxes (the model's; the fitted
ones with --fit). Below: boxes per class (share of each split's boxes) and the covered share per class on the first
split checked. Shares, not counts, so that a small val split reads beside a large train one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from ssd_ds.anchor_fit import Fit, scales_flag
from ssd_ds.data.split_stats import SIZE_NAMES, Coverage, SplitCheck, boxes_per_image_counts
from ssd_ds.model_config import ModelConfig

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange"}
COVERAGE_HATCH = ("", "//")  # the model's scales, the fitted ones


def _grouped_bars(ax, labels: list[str], series: list[tuple[str, list[float], dict]], horizontal: bool = False,
                  values_shown: bool = False):
    """Bars of several series side by side at each label; `series` = (legend, values, bar style). `values_shown`
    writes each bar's value at its end and the legend under the axes (coverage bars are all near the top)."""
    at = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    for i, (name, values, style) in enumerate(series):
        offset = at + (i - (len(series) - 1) / 2) * width
        values = np.nan_to_num(np.asarray(values, dtype=float))
        if horizontal:
            bars = ax.barh(offset, values, height=width, label=name, **style)
        else:
            bars = ax.bar(offset, values, width=width, label=name, **style)
        if values_shown:
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    (ax.set_yticks if horizontal else ax.set_xticks)(at, labels)
    if values_shown:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0), borderaxespad=2.5, ncol=2)  # below ticks
    else:
        ax.legend(fontsize=8)


def _coverage_series(checks: list[SplitCheck], coverages: list[list[Coverage]], values) -> list[tuple]:
    """One series per (set of default boxes, split): `values(coverage)` in percent."""
    series = []
    for hatch, per_split in zip(COVERAGE_HATCH, coverages):
        for check, coverage in zip(checks, per_split):
            style = {"color": SPLIT_COLOURS.get(check.name, "grey"), "hatch": hatch, "edgecolor": "white"}
            series.append((f"{check.name}, {coverage.label}", [100 * v for v in values(coverage)], style))
    return series


def draw_report(path: Path, checks: list[SplitCheck], before: list[Coverage], after: list[Coverage],
                model_cfg: ModelConfig, fit: Fit | None) -> None:
    """Write the report for `checks` (splits with boxes), the coverage of the model's default boxes (`before`, one
    per split) and of the fitted ones (`after`, empty without a better fit) to `path`."""
    coverages = [before] + ([after] if after else [])
    first = checks[0]
    classes = len(first.class_names) - 1
    rows = max(4.0, 0.16 * classes * max(len(checks), len(coverages)) + 1)
    fig = Figure(figsize=(16, 9 + rows), layout="constrained")
    grid = fig.add_gridspec(3, 2, height_ratios=[4.5, 4.5, rows])
    size = model_cfg.input_size
    title = (f"{Path(first.ann_file).parent.parent}: model {model_cfg.name}, {size}px input, "
             f"{model_cfg.anchors.num_anchors} default boxes")
    if fit is not None:
        title += (f"\nfitted on train: {fit.rule}, --anchor_scales {scales_flag(fit.scales)}" if fit.improved else
                  "\nfit on train: no progression covers more than the model's own scales")
    fig.suptitle(title, fontsize=13)

    ax = fig.add_subplot(grid[0, 0])
    bins = [label for label, _ in boxes_per_image_counts(first.boxes_per_image)]
    _grouped_bars(ax, bins, [(f"{c.name} ({c.images} images)",
                              [100 * n / c.images for _, n in boxes_per_image_counts(c.boxes_per_image)],
                              {"color": SPLIT_COLOURS.get(c.name, "grey")}) for c in checks])
    ax.set(title="boxes per image", xlabel="boxes in the image", ylabel="% of images")

    ax = fig.add_subplot(grid[0, 1])
    sides = [c.input_wh(size).double().prod(1).sqrt().numpy() for c in checks]
    edges = np.geomspace(max(0.5, min(s.min() for s in sides) * 0.9), max(size, max(s.max() for s in sides)), 40)
    for check, side in zip(checks, sides):
        ax.hist(side, bins=edges, weights=np.full(len(side), 100 / len(side)), histtype="step", linewidth=2,
                color=SPLIT_COLOURS.get(check.name, "grey"), label=f"{check.name} ({len(side)} boxes)")
    for i, coverage in enumerate(c[0] for c in coverages):
        for k, scale in enumerate(coverage.scales):
            ax.axvline(scale, color="black" if i == 0 else "tab:green", linestyle="--" if i == 0 else "-",
                       linewidth=1, label=f"{coverage.label} (s_k)" if k == 0 else None)
    ax.set_xscale("log")
    ax.set_xticks([t for t in 2.0 ** np.arange(0, 12) if edges[0] <= t <= edges[-1]])
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(title=f"box size in the {size}px input, sqrt(w*h)", xlabel="pixels", ylabel="% of boxes")
    ax.legend(fontsize=8)

    ax = fig.add_subplot(grid[1, 0])
    _grouped_bars(ax, list(SIZE_NAMES), [
        (c.name, (100 * np.bincount(c.size_bucket.numpy(), minlength=3) / len(c.labels)).tolist(),
         {"color": SPLIT_COLOURS.get(c.name, "grey")}) for c in checks])
    ax.set(title="COCO size buckets (box area in the original image: 32^2, 96^2)", ylabel="% of boxes")

    ax = fig.add_subplot(grid[1, 1])
    _grouped_bars(ax, ["all", *SIZE_NAMES], _coverage_series(
        checks, coverages, lambda cov: [cov.overall, *cov.per_size.tolist()]), values_shown=True)
    ax.set(title="coverage: boxes whose best default box has IoU > 0.5", ylabel="% of boxes", ylim=(0, 110))

    names = first.class_names[1:]
    ax = fig.add_subplot(grid[2, 0])
    _grouped_bars(ax, names, [
        (c.name, (100 * np.bincount(c.labels.numpy(), minlength=classes + 1)[1:] / len(c.labels)).tolist(),
         {"color": SPLIT_COLOURS.get(c.name, "grey")}) for c in checks if c.class_names == first.class_names],
        horizontal=True)
    ax.set_ylim(len(names) - 0.5, -0.5)  # first class on top, no empty margin
    ax.set(title="boxes per class", xlabel="% of the split's boxes")

    ax = fig.add_subplot(grid[2, 1])
    _grouped_bars(ax, names, _coverage_series(checks[:1], [c[:1] for c in coverages],
                                              lambda cov: cov.per_class[1:].tolist()), horizontal=True,
                  values_shown=True)
    ax.set_ylim(len(names) - 0.5, -0.5)  # first class on top, no empty margin
    ax.set(title=f"coverage per class ({first.name}): % of the class's boxes", xlim=(0, 112))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)

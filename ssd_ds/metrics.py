"""One place every metric of a run goes through: `MetricsLogger.log(group, values, step)`.

Each call writes `values` as one line of `<run_dir>/metrics.jsonl` (flushed, so a killed run keeps every line it
logged), every number in it (nested dicts flattened with "/") to TensorBoard as `<group>/<name>` at `step` (a key named
in `own_groups` is a TensorBoard group of its own: `<key>/<name>`, so that 80 per-class scalars get their own
section), and for the "train" group the progress bar's postfix. Every group is logged against the training
iteration, so that TensorBoard lines up AP with the loss. Images, text and precision-recall curves (TensorBoard's
PR-curve plugin) go to TensorBoard only. Only rank 0 logs; elsewhere every call is a no-op, so callers never test the
rank.
"""

from __future__ import annotations

import json
import sys
from numbers import Number
from pathlib import Path

STEP_KEYS = ("iteration",)  # the step itself, not a metric: kept out of TensorBoard
PROGRESS_KEYS = {"epoch": "{}", "loss": "{:.3f}", "lr": "{:.4f}", "images_per_s": "{:.0f}"}  # train postfix


def scalars(values: dict, prefix: str = ""):
    """(name, number) for every number in `values`, nested dicts flattened with "/" (bools and lists left out)."""
    for key, value in values.items():
        if isinstance(value, dict):
            yield from scalars(value, f"{prefix}{key}/")
        elif isinstance(value, Number) and not isinstance(value, bool) and key not in STEP_KEYS:
            yield prefix + key, value


class MetricsLogger:
    """JSONL, TensorBoard and the progress bar of one run; a no-op unless `enabled` (rank 0)."""

    def __init__(self, run_dir: Path, enabled: bool, append: bool = False):
        """`append`: a resumed run adds to its metrics.jsonl."""
        self.enabled = enabled
        self.jsonl = self.writer = self.progress = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.jsonl = open(Path(run_dir) / "metrics.jsonl", "a" if append else "w")
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def start_progress(self, total: int, start: int) -> None:
        """A progress bar over `total` iterations from `start`, advanced by the "train" records."""
        if self.enabled:
            from tqdm import tqdm

            self.progress = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True, file=sys.stdout)

    def log(self, group: str, values: dict, step: int, own_groups: tuple[str, ...] = ()) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(values) + "\n")
        self.jsonl.flush()
        for name, value in scalars(values):
            tag = name if name.split("/", 1)[0] in own_groups else f"{group}/{name}"
            self.writer.add_scalar(tag, value, step)
        if group == "train" and self.progress is not None:
            self.progress.update(step - self.progress.n)
            shown = {k: fmt.format(values[k]) for k, fmt in PROGRESS_KEYS.items() if k in values}
            self.progress.set_postfix(shown, refresh=False)

    def image(self, tag: str, image, step: int) -> None:
        if self.enabled:
            self.writer.add_image(tag, image, step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.enabled:
            self.writer.add_text(tag, text, step)

    def pr_curve(self, tag: str, precision, recall, counts: dict, step: int) -> None:
        """A precision-recall curve given point by point (TensorBoard's PR-curve plugin, at most 127 points), with
        the counts its tooltip shows (`counts`: tp, fp, tn, fn arrays as long as the curve)."""
        if self.enabled:
            self.writer.add_pr_curve_raw(tag, counts["tp"], counts["fp"], counts["tn"], counts["fn"], precision,
                                         recall, step, num_thresholds=len(precision))

    def close(self) -> None:
        for sink in (self.progress, self.writer, self.jsonl):
            if sink is not None:
                sink.close()
        self.jsonl = self.writer = self.progress = None
        self.enabled = False

"""Where a detector fails: per-class AP, precision-recall curves, the TIDE error breakdown and a confusion summary.

All of it is read off one COCOeval run (`ssd_ds.coco_eval.evaluate_report` calls these), so it agrees with the twelve
numbers by construction:

- `per_class_table`: pycocotools' `summarize` restricted to one category of the accumulated precision array
  `[T iou, R recall, K class, A area, M maxDets]` (AP, AP50, AP75, APs, APm, APl at 100 detections an image), with
  the class's ground-truth boxes (not crowd: COCOeval ignores those) and detections counted. Worst first.
- `pr_curves`: that array's precision at IoU 0.50 and 0.75 over the 101 recall thresholds, per class and overall
  (the mean over classes with ground truth, whose mean over recall is AP50 / AP75).
- `error_breakdown`: the TIDE error types (Bolya et al., "TIDE: A General Toolbox for Identifying Object Detection
  Errors", ECCV 2020: foreground IoU 0.5, background IoU 0.1; classification, localisation, both, duplicate,
  background, missed) with the AP50 each costs (dAP: the AP gained by fixing every error of that type), and a
  confusion summary: which classes are detected as which (class-agnostic matching at IoU 0.5 of the detections
  scoring at least `CONFUSION_MIN_SCORE`). Both are hotcoco's (a Rust COCOeval with TIDE and the confusion matrix
  built in; its dAP equal tidecv's, the TIDE authors' package, on the same detections: docs/inference.md).

Numpy and hotcoco only (matplotlib lazily, for `plot_pr_curves`): the background evaluation process imports this.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ssd_ds.fileio import atomic_open, atomic_write

PER_CLASS_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# (IoU threshold, area index) of each per-class number, as pycocotools' summarize picks them (None: all thresholds)
_PER_CLASS_SLICES = {"AP": (None, 0), "AP50": (0.5, 0), "AP75": (0.75, 0), "APs": (None, 1), "APm": (None, 2),
                     "APl": (None, 3)}
PR_IOUS = (0.5, 0.75)
ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
ERROR_NAMES = {"Cls": "classification", "Loc": "localisation", "Both": "both (class and box)",
               "Dupe": "duplicate detection", "Bkg": "background (no object there)", "Miss": "missed ground truth"}
CONFUSION_MIN_SCORE = 0.3  # the score above which predict draws and keeps a detection (its --score default)
CONFUSION_IOU = 0.5


def iou_index(iou_thrs, iou: float) -> int:
    """The index of `iou` among COCOeval's IoU thresholds (0.50:0.05:0.95, so compared with a tolerance)."""
    matches = np.flatnonzero(np.isclose(np.asarray(iou_thrs, dtype=np.float64), iou))
    if len(matches) != 1:
        raise ValueError(f"IoU threshold {iou} is not one of COCOeval's {list(iou_thrs)}")
    return int(matches[0])


def _mean_valid(values: np.ndarray) -> float | None:
    """pycocotools' summarize: the mean of the entries > -1 (-1: no ground truth there), None when there is none."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def count_ground_truth(gt_dataset: dict, cat_ids: list[int]) -> dict[int, int]:
    """Ground-truth boxes per category that COCOeval counts at area "all": crowd regions and `ignore`d ones left out."""
    counts = dict.fromkeys(cat_ids, 0)
    for ann in gt_dataset["annotations"]:
        if ann["category_id"] in counts and not ann.get("iscrowd", 0) and not ann.get("ignore", 0):
            counts[ann["category_id"]] += 1
    return counts


def per_class_table(precision: np.ndarray, iou_thrs, max_dets, cat_ids: list[int], names: dict[int, str],
                    num_gt: dict[int, int], detections: np.ndarray) -> list[dict]:
    """One row per category, worst AP first (categories without ground truth last): class, category_id, AP, AP50,
    AP75, APs, APm, APl (None where the class has no ground truth of that size), gt, dets.

    `precision` is COCOeval's accumulated `eval["precision"]` [T,R,K,A,M] with K in `cat_ids` order; the numbers are
    those of pycocotools' `summarize` at maxDets 100, taken over one category instead of the mean over all."""
    m = list(max_dets).index(100)
    dets_per_cat = dict(zip(*np.unique(detections[:, 6].astype(np.int64), return_counts=True))) if len(detections) \
        else {}
    rows = []
    for k, cat_id in enumerate(cat_ids):
        row = {"class": names.get(cat_id, str(cat_id)), "category_id": cat_id}
        for stat, (iou, area) in _PER_CLASS_SLICES.items():
            t = slice(None) if iou is None else iou_index(iou_thrs, iou)
            row[stat] = _mean_valid(precision[t, :, k, area, m])
        row["gt"] = int(num_gt.get(cat_id, 0))
        row["dets"] = int(dets_per_cat.get(cat_id, 0))
        rows.append(row)
    return sorted(rows, key=lambda r: (r["AP"] is None, r["AP"] if r["AP"] is not None else 0.0))


def pr_curves(precision: np.ndarray, iou_thrs, rec_thrs, max_dets, cat_ids: list[int], names: dict[int, str],
              num_gt: dict[int, int]) -> dict:
    """Precision over COCOeval's recall thresholds at IoU 0.50 and 0.75 (area all, 100 detections), straight from its
    accumulated array: {"recall": [R], "num_gt": {name: n}, "IoU0.50": {"all": [R], name: [R], ...}, "IoU0.75": ...}.
    Classes without ground truth have no curve; "all" is the mean over the others (its mean is AP50 / AP75)."""
    m = list(max_dets).index(100)
    curves = {"recall": [float(r) for r in rec_thrs],
              "num_gt": {"all": int(sum(num_gt.get(c, 0) for c in cat_ids)),
                         **{names.get(c, str(c)): int(num_gt.get(c, 0)) for c in cat_ids}}}
    for iou in PR_IOUS:
        p = precision[iou_index(iou_thrs, iou), :, :, 0, m]  # [R, K]
        valid = (p > -1).all(axis=0)
        by_class = {"all": p[:, valid].mean(axis=1).tolist() if valid.any() else [0.0] * p.shape[0]}
        by_class.update({names.get(c, str(c)): p[:, k].tolist() for k, c in enumerate(cat_ids) if valid[k]})
        curves[pr_key(iou)] = by_class
    return curves


def pr_key(iou: float) -> str:
    return f"IoU{iou:.2f}"


def pr_counts(precision, recall, num_gt: int) -> dict[str, np.ndarray]:
    """The counts TensorBoard's PR-curve plugin shows beside a curve, as the curve implies them (COCOeval keeps no
    counts): TP = recall x #gt, FP = TP (1 - precision) / precision, FN = #gt - TP, TN = 0 (detection has none);
    where the recall is never reached (precision 0) no detection is counted."""
    precision, recall = np.asarray(precision, dtype=np.float64), np.asarray(recall, dtype=np.float64)
    reached = precision > 0
    tp = np.where(reached, recall * num_gt, 0.0)
    fp = np.where(reached, tp * (1 - precision) / np.where(reached, precision, 1.0), 0.0)
    return {"tp": tp, "fp": fp, "tn": np.zeros_like(tp), "fn": num_gt - tp}


def error_breakdown(evaluator, names: dict[int, str], top: int = 10) -> tuple[dict, dict]:
    """(TIDE errors, confusion summary) of a hotcoco COCOeval that has run `evaluate()`.

    Errors: {"dAP": {type: the AP50 gained by fixing it}, "count": {type: n}, "AP50": TIDE's baseline}, types in
    `ERROR_TYPES`. Confusion: the `top` most frequent (ground truth, detected as) pairs of different classes among
    the detections scoring >= CONFUSION_MIN_SCORE matched at IoU 0.5 whatever their class, with each class's
    missed boxes and unmatched detections, and the whole matrix (rows: ground-truth class then background;
    columns: detected class then background)."""
    tide = evaluator.tide_errors(pos_thr=0.5, bg_thr=0.1)
    errors = {"AP50": float(tide["ap_base"]), "dAP": {t: float(tide["delta_ap"][t]) for t in ERROR_TYPES},
              "count": {t: int(tide["counts"][t]) for t in ERROR_TYPES}}
    cm = evaluator.confusion_matrix(iou_thr=CONFUSION_IOU, min_score=CONFUSION_MIN_SCORE)
    matrix = np.asarray(cm["matrix"], dtype=np.int64)
    labels = [names.get(c, str(c)) for c in cm["cat_ids"]]
    K = len(labels)
    pairs = [{"gt": labels[i], "detected_as": labels[j], "count": int(matrix[i, j]),
              "of_gt": float(matrix[i, j] / max(matrix[i].sum(), 1))}
             for i in range(K) for j in range(K) if i != j and matrix[i, j] > 0]
    pairs.sort(key=lambda p: -p["count"])
    confusion = {"min_score": CONFUSION_MIN_SCORE, "iou": CONFUSION_IOU, "classes": labels,
                 "pairs": pairs[:top], "missed": {labels[i]: int(matrix[i, K]) for i in range(K)},
                 "background": {labels[j]: int(matrix[K, j]) for j in range(K)}, "matrix": matrix.tolist()}
    return errors, confusion


def _fmt(value, width: int = 6) -> str:
    return f"{value:{width}.3f}" if value is not None else f"{'-':>{width}s}"


def format_per_class(rows: list[dict]) -> str:
    """The per-class table as printed by `ssd_ds.evaluate`, worst first."""
    width = max([len("class")] + [len(r["class"]) for r in rows])
    lines = [f"  {'class':{width}s} " + " ".join(f"{s:>6s}" for s in PER_CLASS_STATS) + f" {'#gt':>7s} {'#dets':>8s}"]
    for r in rows:
        lines.append(f"  {r['class']:{width}s} " + " ".join(_fmt(r[s]) for s in PER_CLASS_STATS)
                     + f" {r['gt']:7d} {r['dets']:8d}")
    return "\n".join(lines)


def format_errors(errors: dict) -> str:
    """The TIDE breakdown as printed: each error type's dAP (the AP50 gained by fixing it, 0-1) and count."""
    lines = [f"  TIDE baseline AP50 {errors['AP50']:.4f}; AP50 gained by fixing each kind of error:"]
    for t in ERROR_TYPES:
        lines.append(f"  {t:5s} {ERROR_NAMES[t]:30s} dAP {errors['dAP'][t]:.4f}  ({errors['count'][t]} errors)")
    return "\n".join(lines)


def format_confusion(confusion: dict) -> str:
    """The confusion summary as printed: the most frequent class-for-class mistakes, then missed and background."""
    lines = [f"  detections scoring >= {confusion['min_score']}, matched at IoU {confusion['iou']} whatever the class:"]
    if not confusion["pairs"]:
        lines.append("  no class detected as another")
    for p in confusion["pairs"]:
        lines.append(f"  {p['gt']} detected as {p['detected_as']}: {p['count']} ({100 * p['of_gt']:.1f}% of "
                     f"{p['gt']}'s boxes)")
    missed = ", ".join(f"{k} {v}" for k, v in sorted(confusion["missed"].items(), key=lambda kv: -kv[1]) if v)
    background = ", ".join(f"{k} {v}" for k, v in sorted(confusion["background"].items(), key=lambda kv: -kv[1]) if v)
    lines.append(f"  missed (no detection): {missed or 'none'}")
    lines.append(f"  on background (no box there): {background or 'none'}")
    return "\n".join(lines)


def per_class_csv(rows: list[dict]) -> str:
    """The per-class table as CSV (empty cells where a class has no ground truth of that size)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["class", "category_id", *PER_CLASS_STATS, "gt", "dets"],
                            lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return out.getvalue()


def write_per_class_csv(path: str | Path, rows: list[dict]) -> None:
    atomic_write(path, per_class_csv(rows))


def plot_pr_curves(path: str | Path, curves: dict, per_class: list[dict], worst: int = 5) -> None:
    """One PNG, one panel per IoU (0.50, 0.75): the overall curve and those of the `worst` classes by AP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["class"] for r in per_class if r["AP"] is not None][:worst]
    fig, axes = plt.subplots(1, len(PR_IOUS), figsize=(6 * len(PR_IOUS), 5), constrained_layout=True)
    for ax, iou in zip(np.atleast_1d(axes), PR_IOUS):
        by_class = curves[pr_key(iou)]
        ax.plot(curves["recall"], by_class["all"], color="black", linewidth=2.5,
                label=f"all classes (AP{int(iou * 100)} {np.mean(by_class['all']):.3f})")
        for name in names:
            if name in by_class:
                ax.plot(curves["recall"], by_class[name], linewidth=1.2,
                        label=f"{name} ({np.mean(by_class[name]):.3f})")
        ax.set(title=f"precision-recall at IoU {iou:.2f} (worst {len(names)} classes)", xlabel="recall",
               ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)

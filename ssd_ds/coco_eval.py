"""COCOeval (SPEC section 6), in this process or in a background one while training goes on.

`coco_eval` runs COCOeval (bbox) on detections as an `[N, 7]` array (`image_id, x, y, w, h, score, category_id`, the
form `COCO.loadRes` takes), with hotcoco by default, faster-coco-eval or pycocotools (`--coco_eval`);
`evaluate_report` adds what the run says about each class and each kind of error (`ssd_ds.eval_report`).
`BackgroundEvaluator` is the trainer's: rank 0 writes the gathered detections to `<run_dir>/eval/epoch_<e>.npy`
atomically and starts one spawned process per evaluation that writes `epoch_<e>.json` (the report) and
`epoch_<e>_per_class.csv` atomically. The trainer polls: a finished result is picked up; a process that died without a
result is logged as failed and the next evaluation simply starts a new one.

Import-light on purpose (numpy and the COCOeval packages, no torch): the spawned process imports only this module and
`ssd_ds.eval_report`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import multiprocessing as mp
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssd_ds.cocoeval_backends import COCOEVAL_BACKENDS, DEFAULT_BACKEND
from ssd_ds.fileio import atomic_open, atomic_write, read_json

log = logging.getLogger(__name__)


def run_cocoeval(gt_dataset: dict, detections: np.ndarray, backend: str = DEFAULT_BACKEND):
    """The COCOeval (bbox) object of `backend` over every image of `gt_dataset` (a parsed annotation file), after
    evaluate, accumulate and summarize (their printing swallowed); None when there are no detections.

    "faster" is faster-coco-eval (C++), "hotcoco" hotcoco (Rust), both implementations of pycocotools' algorithm
    whose twelve numbers and accumulated arrays equal pycocotools' on the same detections
    (tests/unit/test_evaluate.py); "pycocotools" is the reference itself."""
    if backend == "faster":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    elif backend == "hotcoco":
        from hotcoco import COCO, COCOeval
    elif backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        raise ValueError(f"COCOeval backend must be one of {COCOEVAL_BACKENDS}, got {backend!r}")
    if len(detections) == 0:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "hotcoco":
            gt = COCO(gt_dataset)
        else:
            gt = COCO()
            gt.dataset = gt_dataset
            gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(detections), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def load_ground_truth(ann_file: str | Path) -> dict:
    """The annotation file as the trainer reads it (a leading byte order mark skipped: `read_json`)."""
    return read_json(ann_file, "annotation file")


def coco_eval(ann_file: str, detections: np.ndarray, backend: str = DEFAULT_BACKEND) -> dict[str, float]:
    """COCOeval (bbox) over every image of the annotation file; AP, AP50, AP75, ... by name (all 0 without
    detections)."""
    evaluator = run_cocoeval(load_ground_truth(ann_file), detections, backend)
    return stats_of(evaluator)


def stats_of(evaluator) -> dict[str, float]:
    if evaluator is None:
        return {name: 0.0 for name in STAT_NAMES}
    return {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}


STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def evaluate_report(ann_file: str | Path, detections: np.ndarray, backend: str = DEFAULT_BACKEND) -> dict:
    """COCOeval with what it says about each class and each kind of error (ssd_ds.eval_report), as one JSON-ready
    dict: "stats" (the twelve numbers), "per_class" (rows, worst first), "pr_curves", "errors" (TIDE), "confusion",
    and "seconds" (the time each part took). Without detections: the zero stats, every class at AP 0 and no errors
    or curves to show (None).

    The per-class table and the curves are read off the chosen backend's accumulated array; the error breakdown and
    the confusion summary are hotcoco's, on the same evaluation when `backend` is hotcoco, else on its own run."""
    from ssd_ds import eval_report as er

    start = time.perf_counter()
    gt_dataset = load_ground_truth(ann_file)
    evaluator = run_cocoeval(gt_dataset, detections, backend)
    seconds = {"cocoeval": time.perf_counter() - start}
    names = {c["id"]: str(c.get("name", c["id"])) for c in gt_dataset["categories"]}
    cat_ids = sorted(names)
    num_gt = er.count_ground_truth(gt_dataset, cat_ids)
    report = {"stats": stats_of(evaluator), "backend": backend, "per_class": None, "pr_curves": None, "errors": None,
              "confusion": None}
    if evaluator is None:
        report["per_class"] = [{"class": names[c], "category_id": c,
                                **dict.fromkeys(er.PER_CLASS_STATS, 0.0 if num_gt[c] else None), "gt": num_gt[c],
                                "dets": 0} for c in cat_ids]
        report["seconds"] = seconds
        return report
    start = time.perf_counter()
    params = evaluator.params
    if list(params.catIds) != cat_ids:
        raise ValueError(f"COCOeval ({backend}) evaluated categories {list(params.catIds)[:5]}..., not the "
                         f"annotation file's {cat_ids[:5]}...")
    precision = np.asarray(evaluator.eval["precision"])
    report["per_class"] = er.per_class_table(precision, params.iouThrs, params.maxDets, cat_ids, names, num_gt,
                                             detections)
    report["pr_curves"] = er.pr_curves(precision, params.iouThrs, params.recThrs, params.maxDets, cat_ids, names,
                                       num_gt)
    seconds["per_class_and_curves"] = time.perf_counter() - start
    start = time.perf_counter()
    if backend != "hotcoco":
        from hotcoco import COCO, COCOeval

        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(gt_dataset)
            evaluator = COCOeval(gt, gt.loadRes(detections), iouType="bbox")
            evaluator.evaluate()
    report["errors"], report["confusion"] = er.error_breakdown(evaluator, names)
    seconds["errors_and_confusion"] = time.perf_counter() - start
    report["seconds"] = seconds
    return report


def per_class_file(result_file: str | Path) -> Path:
    """`epoch_<e>_per_class.csv` beside `epoch_<e>.json` (the CSV beside any result file named so)."""
    result_file = Path(result_file)
    return result_file.with_name(f"{result_file.stem}_per_class.csv")


def _eval_worker(ann_file: str, det_file: str, result_file: str, backend: str, ignore: tuple[int, ...] = ()) -> None:
    """Body of the background process: COCOeval of a detections file with its per-class table, curves and error
    breakdown (`evaluate_report`), written atomically as JSON, and the per-class table beside it as CSV. The signals
    `ignore` (the trainer's stop signals) are the trainer's to act on."""
    from ssd_ds.eval_report import write_per_class_csv

    for number in ignore:
        signal.signal(number, signal.SIG_IGN)

    report = evaluate_report(ann_file, np.load(det_file), backend)
    write_per_class_csv(per_class_file(result_file), report["per_class"])
    atomic_write(result_file, json.dumps(report))


@dataclass
class PendingEval:
    epoch: int
    process: mp.Process
    result_file: Path


class BackgroundEvaluator:
    """One spawned COCOeval process per evaluation; `poll()` returns finished (epoch, report or None on failure), the
    report being `evaluate_report`'s dict."""

    def __init__(self, ann_file: str | Path, out_dir: Path, backend: str = DEFAULT_BACKEND,
                 ignore_signals: tuple[int, ...] = ()):
        self.ann_file = str(ann_file)
        self.backend = backend
        self.ignore_signals = tuple(ignore_signals)  # left to the trainer (ssd_ds.preemption)
        self.out_dir = out_dir
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.pending: list[PendingEval] = []
        self._ctx = mp.get_context("spawn")  # no fork of a process holding threads, CUDA or gloo state

    def submit(self, epoch: int, detections: np.ndarray) -> None:
        det_file = self.out_dir / f"epoch_{epoch}.npy"
        with atomic_open(det_file, "wb") as f:
            np.save(f, detections)
        result_file = self.out_dir / f"epoch_{epoch}.json"
        result_file.unlink(missing_ok=True)
        per_class_file(result_file).unlink(missing_ok=True)
        process = self._ctx.Process(
            target=_eval_worker, args=(self.ann_file, str(det_file), str(result_file), self.backend,
                                       self.ignore_signals), daemon=True,
            name=f"coco-eval-epoch-{epoch}",
        )
        process.start()
        self.pending.append(PendingEval(epoch, process, result_file))

    def poll(self) -> list[tuple[int, dict | None]]:
        """Evaluations that ended since the last poll: (epoch, report), report None when the process died."""
        done = []
        for job in list(self.pending):
            if job.process.is_alive():
                continue
            job.process.join()
            self.pending.remove(job)
            if job.result_file.is_file():
                done.append((job.epoch, json.loads(job.result_file.read_text())))
            else:
                log.error("evaluation of epoch %d failed: process exited with code %s and no result",
                          job.epoch, job.process.exitcode)
                done.append((job.epoch, None))
        return done

    def wait(self, timeout: float | None = None) -> list[tuple[int, dict | None]]:
        """Block until every pending evaluation ends (or the timeout passes), then poll."""
        for job in self.pending:
            job.process.join(timeout)
        return self.poll()

    def close(self) -> None:
        for job in self.pending:
            job.process.kill()
            job.process.join()
        self.pending.clear()


STAT_LABELS = ("AP @ IoU 0.50:0.95, all, 100 dets", "AP @ IoU 0.50", "AP @ IoU 0.75", "AP small", "AP medium",
               "AP large", "AR @ 1 det", "AR @ 10 dets", "AR @ 100 dets", "AR small", "AR medium", "AR large")

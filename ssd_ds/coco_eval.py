"""COCOeval (SPEC section 6), in this process or in a background one while training goes on.

`coco_eval` runs COCOeval (bbox) on detections as an `[N, 7]` array (`image_id, x, y, w, h, score, category_id`, the
form `COCO.loadRes` takes), with faster-coco-eval by default or pycocotools (`--coco_eval`). `BackgroundEvaluator` is
the trainer's: rank 0 writes the gathered detections to `<run_dir>/eval/epoch_<e>.npy` atomically and starts one
spawned process per evaluation that writes `epoch_<e>.json` atomically. The trainer polls: a finished result is picked
up; a process that died without a result is logged as failed and the next evaluation simply starts a new one.

Import-light on purpose (numpy and the COCOeval package, no torch): the spawned process imports only this module.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import multiprocessing as mp
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssd_ds.fileio import atomic_open, atomic_write, read_json

log = logging.getLogger(__name__)


COCOEVAL_BACKENDS = ("faster", "pycocotools")


def coco_eval(ann_file: str, detections: np.ndarray, backend: str = "faster") -> dict[str, float]:
    """COCOeval (bbox) over every image of the annotation file; AP, AP50, AP75, ... by name.

    `backend` "faster" is faster-coco-eval, a C++ implementation of pycocotools' algorithm (its AP equals
    pycocotools' on the same detections: tests/unit/test_evaluate.py), "pycocotools" the reference itself."""
    if backend == "faster":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    elif backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        raise ValueError(f"COCOeval backend must be one of {COCOEVAL_BACKENDS}, got {backend!r}")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()  # filled from read_json, which reads a file that starts with a byte order mark as the trainer does
        gt.dataset = read_json(ann_file, "annotation file")
        gt.createIndex()
        if len(detections) == 0:
            return {name: 0.0 for name in STAT_NAMES}
        evaluator = COCOeval(gt, gt.loadRes(detections), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}


STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _eval_worker(ann_file: str, det_file: str, result_file: str, backend: str, ignore: tuple[int, ...] = ()) -> None:
    """Body of the background process: COCOeval of a detections file, result written atomically. The signals
    `ignore` (the trainer's stop signals) are the trainer's to act on."""
    for number in ignore:
        signal.signal(number, signal.SIG_IGN)
    stats = coco_eval(ann_file, np.load(det_file), backend)
    atomic_write(result_file, json.dumps(stats))


@dataclass
class PendingEval:
    epoch: int
    process: mp.Process
    result_file: Path


class BackgroundEvaluator:
    """One spawned COCOeval process per evaluation; `poll()` returns finished (epoch, stats or None on failure)."""

    def __init__(self, ann_file: str | Path, out_dir: Path, backend: str = "faster",
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
        process = self._ctx.Process(
            target=_eval_worker, args=(self.ann_file, str(det_file), str(result_file), self.backend,
                                       self.ignore_signals), daemon=True,
            name=f"coco-eval-epoch-{epoch}",
        )
        process.start()
        self.pending.append(PendingEval(epoch, process, result_file))

    def poll(self) -> list[tuple[int, dict | None]]:
        """Evaluations that ended since the last poll: (epoch, stats), stats None when the process died."""
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

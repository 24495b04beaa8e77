"""Evaluation (SPEC section 6): sharded inference on every rank, detections gathered on rank 0, and COCOeval in a
background process while training goes on.

Rank 0 writes the gathered detections as an `[N, 7]` array (`image_id, x, y, w, h, score, category_id`, the form
`COCO.loadRes` takes) to `<run_dir>/eval/epoch_<e>.npy` atomically and starts one spawned process per evaluation
that runs COCOeval (faster-coco-eval by default, pycocotools selectable: `--coco_eval`) and writes
`epoch_<e>.json` atomically. The trainer polls: a finished result is
picked up; a process that died without a result is logged as failed and the next evaluation simply starts a new one.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ssd_ds.box_coder import BoxCoder
from ssd_ds.errors import BadInput
from ssd_ds.fileio import atomic_open, atomic_write
from ssd_ds.inference import detect_batch, inference_ops, load_inference
from ssd_ds.postprocess import decode_scores, to_coco_results

log = logging.getLogger(__name__)


@torch.no_grad()
def infer_detections(model, loader, coder: BoxCoder, label_to_category: dict[int, int], device: torch.device,
                     autocast_dtype: torch.dtype | None = None, images_to_draw: int = 0, decode=decode_scores,
                     memory_format: torch.memory_format = torch.contiguous_format, pad_to: int | None = None):
    """This rank's detections as an [N, 7] float64 array, the ids of the images it evaluated, the count of skipped
    images, and up to `images_to_draw` examples `(image [3,S,S] uint8, boxes_ltrb relative, scores, labels)` for
    TensorBoard. `decode` is the torch or Triton decode+softmax (triton_kernels.select.decode_scores_fn); `pad_to`
    (the loader's batch size) runs every batch at that size (`detect_batch`), for a compiled model."""
    was_training = model.training
    model.eval()
    detections, seen, skipped, examples = [], [], 0, []
    for images, image_ids, sizes, n_skipped in loader:
        seen += image_ids
        skipped += n_skipped
        if images is None:
            continue
        per_image = detect_batch(model, images, coder, device, autocast_dtype, decode, memory_format,
                                 pad_to).per_image()
        for (boxes, scores, labels), image in zip(per_image, images):
            if len(examples) < images_to_draw:
                examples.append((image.cpu(), boxes.cpu(), scores.cpu(), labels.cpu()))
        for r in to_coco_results(per_image, image_ids, sizes, label_to_category):
            detections.append([r["image_id"], *r["bbox"], r["score"], r["category_id"]])
    model.train(was_training)
    return np.asarray(detections, dtype=np.float64).reshape(-1, 7), seen, skipped, examples


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
        gt = COCO(ann_file)
        if len(detections) == 0:
            return {name: 0.0 for name in STAT_NAMES}
        evaluator = COCOeval(gt, gt.loadRes(detections), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}


STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _eval_worker(ann_file: str, det_file: str, result_file: str, backend: str) -> None:
    """Body of the background process: COCOeval of a detections file, result written atomically."""
    stats = coco_eval(ann_file, np.load(det_file), backend)
    atomic_write(result_file, json.dumps(stats))


@dataclass
class PendingEval:
    epoch: int
    process: mp.Process
    result_file: Path


class BackgroundEvaluator:
    """One spawned COCOeval process per evaluation; `poll()` returns finished (epoch, stats or None on failure)."""

    def __init__(self, ann_file: str | Path, out_dir: Path, backend: str = "faster"):
        self.ann_file = str(ann_file)
        self.backend = backend
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
            target=_eval_worker, args=(self.ann_file, str(det_file), str(result_file), self.backend), daemon=True,
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


def main(argv: list[str] | None = None) -> dict[str, float] | None:
    """`python -m ssd_ds.evaluate --checkpoint C --data DIR [--backend faster|pycocotools]` (one process), or under
    `deepspeed --num_gpus N --module ssd_ds.evaluate ...` sharded over the ranks: the checkpoint's COCO AP on the data
    set's val split, computed as the trainer computes it (same transform, precision, post-processing, COCOeval)."""
    import argparse

    from ssd_ds.data.coco import CocoDetection
    from ssd_ds.data.loaders import build_eval_loader
    from ssd_ds.data.transforms import EvalTransform
    from ssd_ds.distributed import gather_to_rank0, init_distributed, setup_process_env

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--checkpoint", required=True, help="model.pt, a checkpoint directory, or a run directory")
    parser.add_argument("--data", required=True, help="COCO-laid-out data set; its val2017 split is evaluated")
    parser.add_argument("--backend", choices=COCOEVAL_BACKENDS, default="faster", help="COCOeval implementation")
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
    stats = coco_eval(val_set.ann_file, np.concatenate([g[0] for g in gathered]), args.backend)
    print(f"{args.checkpoint}: {sum(g[1] for g in gathered)} images on {world} rank(s), "
          f"{sum(g[2] for g in gathered)} unreadable, COCOeval ({args.backend}):")
    for name, label in zip(STAT_NAMES, STAT_LABELS):
        print(f"  {name:6s} {label:36s} {stats[name]:.4f}")
    return stats


if __name__ == "__main__":
    from ssd_ds.cli import run_cli

    run_cli(main)

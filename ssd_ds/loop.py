"""The training loop's parts, as torchvision's detection references split them: one step, one epoch, one evaluation.

Each function is given what it uses. What several of them share is a small object with one job: `TrainData` (the
sampler, the loader and how batches reach the device), `TrainLog` (rank 0's per-step records), `Checkpoints` (where
and how a checkpoint is saved), `Evaluation` (the evaluations during training, COCOeval in the background) and
`StopAt` (the stop conditions: the schedule's end, the target, a stop signal the ranks agreed on). `ssd_ds.train`
builds them in dependency order and calls `train` or `evaluate_only`; where the run is lives in `RunState`, which
every checkpoint saves.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ssd_ds import checkpoint
from ssd_ds.coco_eval import BackgroundEvaluator
from ssd_ds.data.batch import Batch
from ssd_ds.data.coco import CocoDetection
from ssd_ds.data.device_input import DecodeCounts
from ssd_ds.data.loaders import DevicePrefetcher, TrainSampler, loader_failure
from ssd_ds.data.transforms import normalize_images
from ssd_ds.distributed import agree, gather_to_rank0, parameter_checksums, verify_replicas
from ssd_ds.draw import draw_validation_image
from ssd_ds.ds_config import BatchPlan
from ssd_ds.eval_report import PR_IOUS, format_confusion, format_errors, format_per_class, pr_counts, pr_key
from ssd_ds.inference import infer_detections, inference_state, save_inference
from ssd_ds.metrics import MetricsLogger
from ssd_ds.mlperf_log import MLPerfLogger
from ssd_ds.preemption import StopSignals
from ssd_ds.rng import rng_state
from ssd_ds.schedule import EvalSchedule
from ssd_ds.speedups import TrainingSetup

log = logging.getLogger("ssd_ds.train")


@dataclass
class RunState:
    """Where the run is: saved in every checkpoint's client state."""

    epoch: int = 0  # completed epochs
    iteration: int = 0  # completed optimizer steps in all
    iter_in_epoch: int = 0  # completed optimizer steps in the current epoch
    best_map: float = 0.0
    success: bool = False
    evals: dict = field(default_factory=dict)  # epoch -> stats
    # rank 0's evaluations submitted to COCOeval and not picked up yet: epoch -> iteration submitted at. A resumed run
    # submits them again from their saved detections (Evaluation.resubmit), so that a stop loses none.
    evals_pending: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StopAt:
    """The stop conditions: the run is over (`finished`: the target reached, `RunState.success`, the schedule's epochs
    done, or the iteration limit, the schedule's or --max_iters, reached), or the ranks agreed to stop on a signal
    (`preempted`: ssd_ds.preemption; the run saves where it is and a resumed run goes on)."""

    epochs: int
    iterations: int
    signals: StopSignals | None = None  # the run's stop signals (None: none handled)

    def __call__(self, state: RunState) -> bool:
        return self.finished(state) or self.preempted

    def finished(self, state: RunState) -> bool:
        return state.success or state.epoch >= self.epochs or state.iteration >= self.iterations

    @property
    def requested(self) -> bool:
        """A stop signal reached this rank (the ranks have not agreed yet)."""
        return self.signals is not None and self.signals.received is not None

    @property
    def preempted(self) -> bool:
        return self.signals is not None and self.signals.agreed

    def agree(self, stop: bool) -> None:
        """The outcome of the sync point's agreement (Evaluation.poll): every rank stops at this iteration."""
        if stop and self.signals is not None:
            self.signals.agreed = True


def train_step(engine, batch: Batch, memory_format: torch.memory_format, encode=None):
    """One micro-batch already on the device: forward, backward (DeepSpeed scales for accumulation), step at the
    boundary. Images are normalised here. `encode` is the run's decision of who encodes the boxes (`DeviceOps.encode`):
    None when the loader workers did, so the batch carries the targets; otherwise `encode(boxes, labels, num_boxes)`,
    the run's one encoder on the device, encodes them here. A batch that disagrees with the decision is an error."""
    images = normalize_images(batch.images, memory_format)
    if encode is None:
        if batch.loc_t is None:
            raise ValueError("train_step: the run encodes in the loader workers (no encode given), but the batch "
                             "carries no encoded targets")
        loc_t, labels_t = batch.loc_t, batch.labels_t
    else:
        if batch.loc_t is not None:
            raise ValueError("train_step: the run encodes on the device (encode given), but the batch already carries "
                             "targets encoded by the loader workers")
        loc_t, labels_t = encode(batch.boxes, batch.labels, batch.num_boxes)
    loss, loc, conf = engine(images, loc_t, labels_t)
    engine.backward(loss)
    engine.step()
    return loss.detach(), loc.detach(), conf.detach()


@dataclass
class TrainData:
    """The training data of this rank: its sampler and loader, the batch plan, and how a host batch reaches the
    device (`prepare_batch`: DevicePrefetcher's default, a copy, or on the device input path decode and augmentation
    on the device)."""

    loader: torch.utils.data.DataLoader
    sampler: TrainSampler
    plan: BatchPlan
    iters_per_epoch: int
    device: torch.device
    prepare_batch: Callable | None = None
    data_dir: str = ""  # named in the error a stalled or dead loader worker ends the run with
    timeout: float = 0.0  # the loader's --loader_timeout

    def batches(self, state: RunState) -> DevicePrefetcher:
        """The micro-batches of the rest of the current epoch, on the device (a resumed epoch starts where it was)."""
        accum = self.plan.accumulation
        self.sampler.set_epoch(state.epoch, start=state.iter_in_epoch * accum * self.plan.micro_batch)
        micro_batches = (self.iters_per_epoch - state.iter_in_epoch) * accum
        return DevicePrefetcher(islice(self.loader, micro_batches), self.device, self.prepare_batch)

    def failure(self, exc: RuntimeError):
        """The user error a loader worker's stall or death becomes (ssd_ds.data.loaders.loader_failure), or None."""
        return loader_failure(exc, self.data_dir, self.timeout)


class LossWindow:
    """The losses of the steps since the last log, kept on the device: one host sync per `log_every` steps."""

    def __init__(self):
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def add(self, iteration: int, loss: torch.Tensor, loc: torch.Tensor, conf: torch.Tensor) -> None:
        self.pending.append((iteration, loss, loc, conf))  # nothing launched per step: stacked when drained

    def __len__(self) -> int:
        return len(self.pending)

    def records(self, ckpt_dir: Path) -> list[dict]:
        """The pending losses as records (one sync), still pending; a non-finite loss stops the run naming the
        iteration and the checkpoint it keeps."""
        if not self.pending:
            return []
        values = torch.stack([torch.stack(p[1:]) for p in self.pending]).float().cpu().tolist()
        records = [{"iteration": p[0], "loss": loss, "loc": loc, "conf": conf}
                   for p, (loss, loc, conf) in zip(self.pending, values)]
        for record in records:
            if not math.isfinite(record["loss"]):
                latest = ckpt_dir / "latest"
                kept = latest.read_text().strip() if latest.is_file() else "none saved yet"
                raise FloatingPointError(f"loss is {record['loss']} at iteration {record['iteration']}; stopping. "
                                         f"Last checkpoint ({kept}) in {ckpt_dir} is intact")
        return records

    def drain(self, ckpt_dir: Path) -> list[dict]:
        """`records`, no longer pending."""
        records = self.records(ckpt_dir)
        self.pending = []
        return records


class TrainLog:
    """The training records (rank 0's metrics logger writes them): one per step with its losses; the last of each
    log interval also carries the LR, the speed, the host seconds per step spent waiting for the loader workers and
    preparing batches for the device, the images skipped as unreadable, on the device input path how many images
    each decode path took, and on CUDA the allocator's peaks."""

    def __init__(self, metrics: MetricsLogger, ckpt_dir: Path, global_batch: int, device: torch.device,
                 decode_counts: DecodeCounts | None = None):
        self.metrics = metrics
        self.ckpt_dir = ckpt_dir  # named when a loss is not finite
        self.global_batch = global_batch
        self.device = device
        self.decode_counts = decode_counts
        self.losses = LossWindow()
        self.skipped_images = 0  # unreadable training images passed over since the last log

    def add(self, iteration: int, loss: torch.Tensor, loc: torch.Tensor, conf: torch.Tensor) -> None:
        self.losses.add(iteration, loss, loc, conf)

    def check_finite(self) -> None:
        """Before a checkpoint: never save past a non-finite loss (the losses stay pending for the next record)."""
        self.losses.records(self.ckpt_dir)

    def write(self, epoch: int, lr: float, elapsed: float, data_wait: float, prepare: float) -> None:
        steps = len(self.losses)
        records = self.losses.drain(self.ckpt_dir)
        if not records:
            return
        records[-1].update(epoch=epoch, lr=lr, images_per_s=steps * self.global_batch / max(elapsed, 1e-9),
                           data_wait_s_per_step=data_wait / steps, prepare_s_per_step=prepare / steps,
                           skipped_images=self.skipped_images)
        if self.decode_counts is not None:
            records[-1]["decode"] = self.decode_counts.take()
        if self.device.type == "cuda":  # the allocator's own counters: no sync
            records[-1].update(max_allocated_gib=torch.cuda.max_memory_allocated(self.device) / 2**30,
                               max_reserved_gib=torch.cuda.max_memory_reserved(self.device) / 2**30)
        self.skipped_images = 0
        for record in records:
            self.metrics.log("train", record, record["iteration"])


@dataclass
class Checkpoints:
    """Saves the run (ssd_ds.checkpoint: atomic, collective) with the client state and, on rank 0, the inference file
    beside DeepSpeed's (ssd_ds.inference.inference_state: what predict, evaluate and export load)."""

    engine: object  # the DeepSpeed engine
    ckpt_dir: Path
    keep: int
    sampler: TrainSampler
    config: dict  # the resolved run config as a dict
    inference_meta: dict | None  # rank 0's `inference_state` arguments other than the model; None on other ranks
    batch: dict = field(default_factory=dict)  # the batch plan and epoch length (ssd_ds.train.check_resume_batch)
    saved: str | None = None  # the tag of the last checkpoint this process saved

    def client_state(self, state: RunState) -> dict:
        """What a checkpoint saves beside DeepSpeed's module, optimizer and scheduler: host data only (plain numbers
        and CPU RNG states), so that a checkpoint of a GPU run reads anywhere."""
        return {"run_state": asdict(state), "rng": rng_state(), "sampler": self.sampler.state_dict(),
                "config": self.config, "batch": self.batch}

    @staticmethod
    def tag(state: RunState) -> str:
        return f"epoch{state.epoch:03d}_iter{state.iteration:07d}"

    def save(self, state: RunState) -> None:
        tag = self.tag(state)
        write_beside = None
        if self.inference_meta is not None:
            inference = inference_state(self.engine.module.model, **self.inference_meta)
            write_beside = lambda directory: save_inference(inference, directory)  # noqa: E731
        checkpoint.save(self.engine, self.ckpt_dir, tag, self.client_state(state), self.keep, write_beside)
        self.saved = tag


@dataclass
class Evaluation:
    """The evaluations during training (SPEC section 6): sharded inference on every rank, COCOeval of the gathered
    detections in a background process on rank 0, results picked up while training goes on. Reaching the target is
    broadcast, so that all ranks stop together."""

    setup: TrainingSetup
    loader: torch.utils.data.DataLoader
    val_set: CocoDetection
    device: torch.device
    autocast_dtype: torch.dtype | None
    rank: int
    evaluator: BackgroundEvaluator | None  # rank 0's
    metrics: MetricsLogger
    mlperf: MLPerfLogger
    target_map: float
    pad_to: int | None = None  # every batch at that size (a compiled model: the size the warm-up compiled it for)
    images_to_draw: int = 0  # validation images with their detections for TensorBoard (rank 0 draws them)

    def run(self, state: RunState) -> None:
        """Inference over this rank's shard now (after epoch `state.epoch`); rank 0 submits the gathered detections
        to COCOeval and notes the evaluation as pending in `state`."""
        epoch, iteration = state.epoch, state.iteration
        self.mlperf.eval_start(epoch)
        setup, to_draw = self.setup, self.images_to_draw if self.rank == 0 else 0
        detections, seen, skipped, examples = infer_detections(
            setup.eval_model, self.loader, setup.ops.coder, self.val_set.label_to_category, self.device,
            self.autocast_dtype, to_draw, setup.ops.decode_scores, setup.memory_format, self.pad_to)
        if skipped:
            log.warning("evaluation at epoch %d skipped %d unreadable images on rank %d", epoch, skipped, self.rank)
        gathered = gather_to_rank0((detections, seen, skipped))
        if self.rank != 0:
            return
        self.check_coverage(epoch, iteration, [g[1] for g in gathered], sum(g[2] for g in gathered))
        self.evaluator.submit(epoch, np.concatenate([g[0] for g in gathered]))
        state.evals_pending[epoch] = iteration
        self.draw(examples, iteration)

    def draw(self, examples: list, iteration: int) -> None:
        """The validation images with their ground truth and their detections scoring above 0.3 (predict's default
        --score), to TensorBoard (`ssd_ds.draw`)."""
        names = self.val_set.class_names
        records = {rec.image_id: rec for rec in self.val_set.records} if examples else {}
        for i, (image, boxes, scores, labels, image_id) in enumerate(examples):
            keep = scores > 0.3
            captions = [f"{names[label]} {score:.2f}"
                        for label, score in zip(labels[keep].tolist(), scores[keep].tolist())]
            rec = records[image_id]
            gt_boxes = rec.boxes_ltrb / torch.tensor([rec.width, rec.height, rec.width, rec.height],
                                                     dtype=rec.boxes_ltrb.dtype)
            self.metrics.image(f"val/image_{i}", draw_validation_image(
                image, boxes[keep], captions, labels[keep].tolist(), gt_boxes,
                [names[label] for label in rec.labels.tolist()]), iteration)

    def check_coverage(self, epoch: int, iteration: int, seen_per_rank: list[list[int]], skipped: int) -> None:
        """Every validation image evaluated exactly once over all ranks (SPEC section 6), unreadable ones aside."""
        seen = [i for ids in seen_per_rank for i in ids]
        record = {"eval_coverage": epoch, "per_rank": [len(ids) for ids in seen_per_rank], "unique": len(set(seen)),
                  "skipped": skipped, "val_images": len(self.val_set)}
        self.metrics.log("eval_coverage", record, iteration)
        if len(seen) != len(set(seen)) or len(seen) + skipped != len(self.val_set):
            raise RuntimeError(f"evaluation of epoch {epoch} did not cover the validation set exactly once: {record}")

    def resubmit(self, state: RunState) -> None:
        """A resumed run: rank 0 submits again the evaluations its checkpoint left pending, from the detections the
        first submission saved (`<run_dir>/eval/epoch_<e>.npy`); their results are picked up as usual."""
        if self.rank != 0:
            state.evals_pending.clear()  # rank 0's record, saved in the checkpoint: the other ranks keep none
            return
        for epoch in sorted(state.evals_pending):
            saved = self.evaluator.out_dir / f"epoch_{epoch}.npy"
            if not saved.is_file():
                log.warning("the evaluation of epoch %d was pending at the checkpoint but %s is gone: not evaluated",
                            epoch, saved)
                del state.evals_pending[epoch]
                continue
            self.evaluator.submit(epoch, np.load(saved))
            log.info("evaluation of epoch %d (pending at the checkpoint) submitted again", epoch)

    def poll(self, state: RunState, results: list | None = None, stop_requested: bool = False) -> bool:
        """Rank 0 picks up finished evaluations (or the given `results`); then one collective (the loop's sync point)
        gives every rank rank 0's "target reached" and whether any rank was asked to stop (returned)."""
        if self.rank == 0:
            for epoch, report in (self.evaluator.poll() if results is None else results):
                self.record(state, epoch, report)
        state.success, stop = agree(state.success, stop_requested, self.device)
        return stop

    def finish(self, state: RunState) -> None:
        """At the end of the schedule: wait for evaluations still running, they may reach the target."""
        self.poll(state, self.evaluator.wait() if self.rank == 0 else [])

    def record(self, state: RunState, epoch: int, report: dict | None) -> None:
        """Log a finished evaluation (`ssd_ds.coco_eval.evaluate_report`'s dict, None when it failed) at the iteration
        of the weights it evaluated: the twelve numbers, per-class AP (`per_class_AP/<class>`), the AP each kind of
        error costs (`errors_dAP/<type>`), precision-recall curves (`pr_IoU0.50/<class>`, `pr_IoU0.75/...`, "all"
        for the mean) and the per-class table, the error breakdown and the confusion summary as text. All of it was
        computed in the background process: here it is only written."""
        submitted_at = state.evals_pending.pop(epoch, None)
        step = submitted_at if submitted_at is not None else state.iteration
        stats = report["stats"] if report is not None else None
        record = {"eval_epoch": epoch, "submitted_at": submitted_at, "picked_up_at": state.iteration, "stats": stats}
        if report is not None and report.get("errors") is not None:
            record["per_class_AP"] = {row["class"]: row["AP"] for row in report["per_class"] if row["AP"] is not None}
            record["errors_dAP"] = report["errors"]["dAP"]
        self.metrics.log("eval", record, step, own_groups=("per_class_AP", "errors_dAP"))
        if stats is None:
            self.metrics.text("eval/failure", f"evaluation of epoch {epoch} failed; training goes on", step)
            return
        if report.get("errors") is not None:
            log_eval_report(self.metrics, report, step)
        state.evals[epoch] = stats
        state.best_map = max(state.best_map, stats["AP"])
        self.mlperf.eval_result(epoch, stats["AP"])
        log.info("epoch %d: COCO AP %.4f (AP50 %.4f, AP75 %.4f)", epoch, stats["AP"], stats["AP50"], stats["AP75"])
        if stats["AP"] >= self.target_map:
            state.success = True

    def close(self) -> None:
        if self.evaluator is not None:
            self.evaluator.close()


def log_eval_report(metrics: MetricsLogger, report: dict, step: int) -> None:
    """An evaluation report's curves (TensorBoard's PR-curve plugin: `pr_IoU0.50/<class>`, `pr_IoU0.75/<class>`, "all"
    the mean) and its per-class table, error breakdown and confusion summary as text; computed in the background
    process, only written here (`python -m ssd_ds.bench eval --run_dir` times it)."""
    curves = report["pr_curves"]
    for iou in PR_IOUS:
        for name, precision in curves[pr_key(iou)].items():
            metrics.pr_curve(f"pr_{pr_key(iou)}/{name}", precision, curves["recall"],
                             pr_counts(precision, curves["recall"], curves["num_gt"][name]), step)
    for tag, text in (("per_class", format_per_class(report["per_class"])), ("errors", format_errors(report["errors"])),
                      ("confusion", format_confusion(report["confusion"]))):
        metrics.text(f"eval/{tag}", "    " + text.replace("\n", "\n    "), step)  # indented: Markdown's code block


def train(state: RunState, stop: StopAt, train_epoch: Callable[[], None], data: TrainData, evaluation: Evaluation,
          setup: TrainingSetup, metrics: MetricsLogger, mlperf: MLPerfLogger, checkpoints: Checkpoints) -> bool:
    """`train_epoch()` (a `train_one_epoch` with its arguments bound) until `stop`; then wait for evaluations still
    running, check that the replicas agree, and log run_stop. Stopped on a signal before the run was over, it ends
    the MLPerf segment with the checkpoint it saved instead, and returns True: preempted, resume me."""
    mlperf.run_start()
    success = preempted = False
    try:
        while not stop(state):
            try:
                train_epoch()
            except RuntimeError as exc:  # a loader worker stalled or died (loaders.loader_failure)
                failure = data.failure(exc)
                if failure is None:
                    raise
                raise failure from exc
        preempted = stop.preempted and not stop.finished(state)
        if not state.success and not preempted:
            evaluation.finish(state)
        checksums = parameter_checksums(setup.deepspeed.module, data.device)
        metrics.log("replicas", {"param_checksums": checksums}, state.iteration)
        verify_replicas(checksums)
        success = state.success
    finally:
        if preempted:
            mlperf.preempted(stop.signals.name, checkpoints.ckpt_dir / checkpoints.saved, state.epoch, state.iteration)
        else:
            mlperf.run_stop(success)
    return preempted


def evaluate_only(state: RunState, evaluation: Evaluation) -> RunState:
    """Evaluate the loaded checkpoint once, wait for COCOeval, and end (no training, no MLPerf run)."""
    evaluation.run(state)
    evaluation.finish(state)
    return state


def train_one_epoch(state: RunState, setup: TrainingSetup, data: TrainData, schedule: EvalSchedule, stop: StopAt,
                    train_log: TrainLog, evaluation: Evaluation, checkpoints: Checkpoints, mlperf: MLPerfLogger,
                    log_every: int, checkpoint_every: int = 0) -> None:
    """The rest of the current epoch (all of it unless resumed mid-epoch); at its end the evaluation the schedule
    asks for and a checkpoint. Every `log_every` steps the losses are logged, finished evaluations picked up and the
    ranks agree on whether to stop (the target reached; a stop signal, after which this iteration is saved); every
    `checkpoint_every` steps (0: never) a checkpoint. Returns early when the run should stop."""
    epoch = state.epoch + 1  # 1-based epoch being trained
    if state.iter_in_epoch == 0:
        mlperf.epoch_start(epoch, schedule.block_length(epoch) if schedule.block_starts(epoch) else None)
    batches = data.batches(state)
    engine, ops = setup.deepspeed, setup.ops
    t_logged = time.perf_counter()
    while state.iter_in_epoch < data.iters_per_epoch and not stop(state):
        for _ in range(data.plan.accumulation):
            batch = next(batches)
            train_log.skipped_images += batch.skipped
            loss, loc, conf = train_step(engine, batch, setup.memory_format, ops.encode)
            batches.prefetch()  # after the step is queued (DevicePrefetcher's docstring says why)
        state.iteration += 1
        state.iter_in_epoch += 1
        train_log.add(state.iteration, loss, loc, conf)
        if state.iteration % log_every == 0 or state.iter_in_epoch == data.iters_per_epoch:
            train_log.write(state.epoch + 1, engine.lr_scheduler.get_last_lr()[0], time.perf_counter() - t_logged,
                            *batches.take_timings())
            t_logged = time.perf_counter()
            stop.agree(evaluation.poll(state, stop_requested=stop.requested))
            if state.success:
                return
            if stop.preempted:
                log.warning("stopping on %s at iteration %d (epoch %d, %d of its %d iterations)", stop.signals.name,
                            state.iteration, epoch, state.iter_in_epoch, data.iters_per_epoch)
        if checkpoint_every and state.iteration % checkpoint_every == 0:
            train_log.check_finite()
            checkpoints.save(state)
    del batches
    if state.iter_in_epoch < data.iters_per_epoch:  # stopped by --max_iters, or on a signal: saved where it is
        if stop.preempted and checkpoints.saved != checkpoints.tag(state):
            train_log.check_finite()
            checkpoints.save(state)
        return
    state.epoch, state.iter_in_epoch = epoch, 0
    mlperf.epoch_stop(epoch)
    if schedule.evaluates_after(epoch):
        evaluation.run(state)
        mlperf.block_stop(schedule.block_first(epoch))
    train_log.check_finite()
    checkpoints.save(state)

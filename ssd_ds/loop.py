"""The training loop's parts, as torchvision's detection references split them: one step, one epoch, one evaluation.

`TrainingRun` holds what they share (the `TrainingSetup` of ssd_ds.speedups, the loaders, the logs and where the run
is); `ssd_ds.train` builds it and calls `train` or `evaluate_only`. The run stops on exactly one condition,
`TrainingRun.should_stop`.
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
from mlperf_logging.mllog import constants as mllog_keys
from torchvision.utils import draw_bounding_boxes

from ssd_ds import checkpoint
from ssd_ds.coco_eval import BackgroundEvaluator
from ssd_ds.data.batch import Batch
from ssd_ds.data.coco import CocoDetection
from ssd_ds.data.device_input import DecodeCounts
from ssd_ds.data.loaders import DevicePrefetcher, TrainSampler, loader_failure
from ssd_ds.data.transforms import normalize_images
from ssd_ds.distributed import flag_from_rank0, gather_to_rank0, parameter_checksums, verify_replicas
from ssd_ds.ds_config import BatchPlan
from ssd_ds.inference import infer_detections, inference_state, save_inference
from ssd_ds.metrics import MetricsLogger
from ssd_ds.mlperf_log import MLPerfLogger
from ssd_ds.rng import rng_state
from ssd_ds.run_config import RunConfig
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


def client_state(state: RunState, sampler: TrainSampler, cfg: RunConfig) -> dict:
    """What a checkpoint saves beside DeepSpeed's module, optimizer and scheduler: host data only (plain numbers and
    CPU RNG states), so that a checkpoint of a GPU run reads anywhere."""
    return {"run_state": asdict(state), "rng": rng_state(), "sampler": sampler.state_dict(),
            "config": asdict(cfg)}


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


class LossWindow:
    """The losses of the steps since the last log, kept on the device: one host sync per `log_every` steps."""

    def __init__(self):
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def add(self, iteration: int, loss: torch.Tensor, loc: torch.Tensor, conf: torch.Tensor) -> None:
        self.pending.append((iteration, loss, loc, conf))  # nothing launched per step: stacked when drained

    def __len__(self) -> int:
        return len(self.pending)

    def drain(self, ckpt_dir: Path) -> list[dict]:
        """The pending losses as records (one sync); a non-finite loss stops the run naming the iteration."""
        if not self.pending:
            return []
        values = torch.stack([torch.stack(p[1:]) for p in self.pending]).float().cpu().tolist()
        records = [{"iteration": p[0], "loss": loss, "loc": loc, "conf": conf}
                   for p, (loss, loc, conf) in zip(self.pending, values)]
        self.pending = []
        for record in records:
            if not math.isfinite(record["loss"]):
                latest = ckpt_dir / "latest"
                kept = latest.read_text().strip() if latest.is_file() else "none saved yet"
                raise FloatingPointError(f"loss is {record['loss']} at iteration {record['iteration']}; stopping. "
                                         f"Last checkpoint ({kept}) in {ckpt_dir} is intact")
        return records


@dataclass
class TrainingRun:
    """What the loop's functions share."""

    cfg: RunConfig
    rank: int
    world: int
    device: torch.device
    plan: BatchPlan
    built: TrainingSetup
    sampler: TrainSampler
    train_loader: torch.utils.data.DataLoader
    eval_loader: torch.utils.data.DataLoader
    val_set: CocoDetection
    run_dir: Path
    mlperf: MLPerfLogger
    metrics: MetricsLogger
    evaluator: BackgroundEvaluator | None  # rank 0's
    state: RunState
    iters_per_epoch: int
    autocast_dtype: torch.dtype | None
    input_size: int
    prepare_batch: Callable | None = None  # host batch -> Batch on the device (DevicePrefetcher's default: a copy)
    decode_counts: DecodeCounts | None = None  # the device input path's decode paths (prepare_batch's decoder)
    losses: LossWindow = field(default_factory=LossWindow)
    skipped_images: int = 0  # unreadable training images passed over since the last log
    submitted_at: dict = field(default_factory=dict)  # epoch -> iteration at which its evaluation was submitted

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def total_iters(self) -> int:
        total = self.cfg.epochs * self.iters_per_epoch
        return min(total, self.cfg.max_iters) if self.cfg.max_iters else total

    def should_stop(self) -> bool:
        """The one stop condition: the target reached, the schedule's epochs done, or --max_iters reached."""
        state = self.state
        return state.success or state.epoch >= self.cfg.epochs or state.iteration >= self.total_iters

    def close(self) -> None:
        if self.evaluator is not None:
            self.evaluator.close()
        self.metrics.close()
        self.mlperf.close()


def train(run: TrainingRun) -> RunState:
    """Epochs until `should_stop`; then wait for evaluations still running, check the replicas, log run_stop."""
    run.mlperf.start(mllog_keys.RUN_START)
    if run.cfg.progress:
        run.metrics.start_progress(run.total_iters, run.state.iteration)
    status = "aborted"
    try:
        while not run.should_stop():
            try:
                train_one_epoch(run)
            except RuntimeError as exc:  # a loader worker stalled or died (loaders.loader_failure)
                failure = loader_failure(exc, run.cfg.data, run.cfg.loader_timeout)
                if failure is None:
                    raise
                raise failure from exc
        if not run.state.success:
            finish_evaluations(run)
        checksums = parameter_checksums(run.built.deepspeed.module, run.device)
        run.metrics.log("replicas", {"param_checksums": checksums}, run.state.iteration)
        verify_replicas(checksums)
        status = "success" if run.state.success else "aborted"
    finally:
        run.mlperf.end(mllog_keys.RUN_STOP, metadata={"status": status})
        run.close()
    return run.state


def evaluate_only(run: TrainingRun) -> RunState:
    """Evaluate the loaded checkpoint once, wait for COCOeval, and end (no training, no MLPerf run)."""
    try:
        evaluate(run, run.state.epoch)
        finish_evaluations(run)
    finally:
        run.close()
    return run.state


def train_one_epoch(run: TrainingRun) -> None:
    """The rest of the current epoch (all of it unless resumed mid-epoch); at its end the evaluation the schedule
    asks for and a checkpoint. Returns early when the run should stop."""
    cfg, state, schedule = run.cfg, run.state, run.cfg.eval_schedule
    epoch = state.epoch + 1  # 1-based epoch being trained
    if state.iter_in_epoch == 0:
        run.mlperf.start(mllog_keys.EPOCH_START, metadata={"epoch_num": epoch})
        if schedule.block_starts(epoch):
            run.mlperf.start(mllog_keys.BLOCK_START, metadata={"first_epoch_num": epoch,
                                                               "epoch_count": schedule.block_length(epoch)})
    accum = run.plan.accumulation
    run.sampler.set_epoch(state.epoch, start=state.iter_in_epoch * accum * run.plan.micro_batch)
    micro_batches = (run.iters_per_epoch - state.iter_in_epoch) * accum
    batches = DevicePrefetcher(islice(run.train_loader, micro_batches), run.device, run.prepare_batch)
    engine, ops = run.built.deepspeed, run.built.ops
    t_logged = time.perf_counter()
    while state.iter_in_epoch < run.iters_per_epoch and not run.should_stop():
        for _ in range(accum):
            batch = next(batches)
            run.skipped_images += batch.skipped
            loss, loc, conf = train_step(engine, batch, run.built.memory_format, ops.encode)
            batches.prefetch()  # after the step is queued (DevicePrefetcher's docstring says why)
        state.iteration += 1
        state.iter_in_epoch += 1
        run.losses.add(state.iteration, loss, loc, conf)
        if state.iteration % cfg.log_every == 0 or state.iter_in_epoch == run.iters_per_epoch:
            log_training(run, time.perf_counter() - t_logged, *batches.take_timings())
            t_logged = time.perf_counter()
            poll_evaluations(run)
            if state.success:
                return
        if cfg.checkpoint_every and state.iteration % cfg.checkpoint_every == 0:
            save_checkpoint(run)
    del batches
    if state.iter_in_epoch < run.iters_per_epoch:  # stopped by --max_iters
        return
    state.epoch, state.iter_in_epoch = epoch, 0
    run.mlperf.end(mllog_keys.EPOCH_STOP, metadata={"epoch_num": epoch})
    if schedule.evaluates_after(epoch):
        evaluate(run, epoch)
        run.mlperf.end(mllog_keys.BLOCK_STOP, metadata={"first_epoch_num": schedule.block_first(epoch)})
    save_checkpoint(run)


def log_training(run: TrainingRun, elapsed: float, data_wait: float, prepare: float) -> None:
    """The pending steps' losses, one record each; the last also carries the LR, the speed since the last log, the
    host seconds per step spent waiting for the loader workers and preparing batches for the device (a copy, or on
    the device input path decode and augmentation, launched from the thread that launches the steps), and on the
    device input path how many images each decode path took."""
    steps = len(run.losses)
    records = run.losses.drain(run.ckpt_dir)
    if not records:
        return
    records[-1].update(epoch=run.state.epoch + 1, lr=run.built.deepspeed.lr_scheduler.get_last_lr()[0],
                       images_per_s=steps * run.plan.global_batch / max(elapsed, 1e-9),
                       data_wait_s_per_step=data_wait / steps, prepare_s_per_step=prepare / steps,
                       skipped_images=run.skipped_images)
    if run.decode_counts is not None:
        records[-1]["decode"] = run.decode_counts.take()
    if run.device.type == "cuda":  # the allocator's own counters: no sync
        records[-1].update(max_allocated_gib=torch.cuda.max_memory_allocated(run.device) / 2**30,
                           max_reserved_gib=torch.cuda.max_memory_reserved(run.device) / 2**30)
    run.skipped_images = 0
    for record in records:
        run.metrics.log("train", record, record["iteration"])


def save_checkpoint(run: TrainingRun) -> None:
    run.losses.drain(run.ckpt_dir)  # never checkpoint past a non-finite loss
    tag = f"epoch{run.state.epoch:03d}_iter{run.state.iteration:07d}"
    inference = None
    if run.rank == 0:
        inference = inference_state(run.built.deepspeed.module.model, run.cfg.model, run.input_size,
                                    run.val_set.class_names, run.val_set.label_to_category, run.autocast_dtype)
    checkpoint.save(run.built.deepspeed, run.ckpt_dir, tag, client_state(run.state, run.sampler, run.cfg),
                    run.cfg.keep_checkpoints, lambda directory: save_inference(inference, directory))


def evaluate(run: TrainingRun, epoch: int) -> None:
    """Sharded inference on every rank now; COCOeval of the gathered detections in the background on rank 0."""
    run.mlperf.start(mllog_keys.EVAL_START, metadata={"epoch_num": epoch})
    images_to_draw = run.cfg.eval_images_to_draw if run.rank == 0 else 0
    # A compiled model is given every batch at the full size, the one the warm-up compiled it for (a partial batch
    # would compile it again); an eager model runs a partial batch as it comes, so its detections (the CPU demo's
    # AP sequence) stay bit for bit what they were.
    pad_to = run.cfg.eval_batch if run.built.compiled else None
    detections, seen, skipped, examples = infer_detections(
        run.built.eval_model, run.eval_loader, run.built.ops.coder, run.val_set.label_to_category,
        run.device, run.autocast_dtype, images_to_draw, run.built.ops.decode_scores, run.built.memory_format, pad_to)
    if skipped:
        log.warning("evaluation at epoch %d skipped %d unreadable images on rank %d", epoch, skipped, run.rank)
    gathered = gather_to_rank0((detections, seen, skipped))
    if run.rank != 0:
        return
    check_coverage(run, epoch, [g[1] for g in gathered], sum(g[2] for g in gathered))
    run.evaluator.submit(epoch, np.concatenate([g[0] for g in gathered]))
    run.submitted_at[epoch] = run.state.iteration
    for i, (image, boxes, scores, labels) in enumerate(examples):
        keep = scores > 0.3
        names = run.val_set.class_names
        captions = [f"{names[label]} {score:.2f}" for label, score in zip(labels[keep].tolist(), scores[keep].tolist())]
        run.metrics.image(f"val/image_{i}", draw_bounding_boxes(image, boxes[keep] * image.shape[-1],
                                                                labels=captions), epoch)


def check_coverage(run: TrainingRun, epoch: int, seen_per_rank: list[list[int]], skipped: int) -> None:
    """Every validation image evaluated exactly once over all ranks (SPEC section 6), unreadable ones aside."""
    seen = [i for ids in seen_per_rank for i in ids]
    record = {"eval_coverage": epoch, "per_rank": [len(ids) for ids in seen_per_rank], "unique": len(set(seen)),
              "skipped": skipped, "val_images": len(run.val_set)}
    run.metrics.log("eval_coverage", record, epoch)
    if len(seen) != len(set(seen)) or len(seen) + skipped != len(run.val_set):
        raise RuntimeError(f"evaluation of epoch {epoch} did not cover the validation set exactly once: {record}")


def poll_evaluations(run: TrainingRun, results: list | None = None) -> None:
    """Rank 0 picks up finished evaluations (or the given `results`); reaching the target is broadcast, so that all
    ranks stop together."""
    if run.rank == 0:
        for epoch, stats in (run.evaluator.poll() if results is None else results):
            record_evaluation(run, epoch, stats)
    run.state.success = flag_from_rank0(run.state.success, run.device)


def record_evaluation(run: TrainingRun, epoch: int, stats: dict | None) -> None:
    run.metrics.log("eval", {"eval_epoch": epoch, "submitted_at": run.submitted_at.pop(epoch, None),
                             "picked_up_at": run.state.iteration, "stats": stats}, epoch)
    if stats is None:
        run.metrics.text("eval/failure", f"evaluation of epoch {epoch} failed; training goes on", epoch)
        return
    run.state.evals[epoch] = stats
    run.state.best_map = max(run.state.best_map, stats["AP"])
    run.mlperf.event(mllog_keys.EVAL_ACCURACY, stats["AP"], metadata={"epoch_num": epoch})
    run.mlperf.end(mllog_keys.EVAL_STOP, metadata={"epoch_num": epoch})
    log.info("epoch %d: COCO AP %.4f (AP50 %.4f, AP75 %.4f)", epoch, stats["AP"], stats["AP50"], stats["AP75"])
    if stats["AP"] >= run.cfg.target_map:
        run.state.success = True


def finish_evaluations(run: TrainingRun) -> None:
    """At the end of the schedule: wait for evaluations still running, they may reach the target."""
    poll_evaluations(run, run.evaluator.wait() if run.rank == 0 else [])

"""The trainer: `python -m ssd_ds.train [--preset demo|mlperf] [--field value ...]` (one process) or
`deepspeed [--hostfile H] [--num_gpus N] ssd_ds/train.py --deepspeed_config ds_configs/X.json ...`.

Built top to bottom in dependency order: config -> distributed -> run directory and logs -> data -> model ->
speed-ups (`ssd_ds.speedups.build_engine`: kernel choice -> torch.compile -> deepspeed.initialize -> memory format)
-> resume -> warm-up -> the loop. The step and the evaluation are their own small functions; run state is the few
attributes of `RunState`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from itertools import islice
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # launched as a script (deepspeed ssd_ds/train.py): make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch.distributed as dist  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402
from torchvision.utils import draw_bounding_boxes  # noqa: E402
from tqdm import tqdm  # noqa: E402
from mlperf_logging.mllog import constants as K  # noqa: E402

from ssd_ds import checkpoint  # noqa: E402
from ssd_ds.anchors import default_boxes_ltrb  # noqa: E402
from ssd_ds.box_coder import BoxCoder  # noqa: E402
from ssd_ds.config import build_model_config  # noqa: E402
from ssd_ds.data.coco import CocoDetection  # noqa: E402
from ssd_ds.data.synthetic import ensure_synthetic  # noqa: E402
from ssd_ds.data.loaders import (DevicePrefetcher, TrainSampler, build_eval_loader, build_train_loader,  # noqa: E402
                                 check_shared_memory)
from ssd_ds.data.transforms import EvalTransform, TrainTransform, normalize_images  # noqa: E402
from ssd_ds.evaluate import BackgroundEvaluator, gather_to_rank0, predict  # noqa: E402
from ssd_ds.launch import check_local_rank, wait_for_rendezvous  # noqa: E402
from ssd_ds.mlperf_log import (CROP_MAX_SAMPLES, LOG_NAME, RESUMED_FROM, MLPerfLogger, log_records,  # noqa: E402
                               next_segment_log)
from ssd_ds.model import build_model  # noqa: E402
from ssd_ds.schedule import base_lr, lr_factor  # noqa: E402
from ssd_ds.speedups import build_engine, build_optimizer, should_encode_on_device, warm_up  # noqa: E402
from ssd_ds.train_config import TrainConfig, check_batch, config_from_args, should_evaluate  # noqa: E402

log = logging.getLogger("ssd_ds.train")


def setup_process_env() -> None:
    """Single-process runs get the rendezvous variables the launcher would set; CPU-only machines use DeepSpeed's
    CPU accelerator (it must be chosen before deepspeed is imported)."""
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # JIT-built ops (DeepSpeed's CPU shared-memory collective) in a directory of this environment's own: torch before
    # 2.14 guards the build with a lock *file*, and one left by a killed build, or by another torch version sharing
    # ~/.cache/torch_extensions, blocks every later start in FileBaton.wait, before any of the trainer's timeouts.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))


@dataclass
class RunState:
    """Where the run is: saved in every checkpoint's client state."""

    epoch: int = 0  # completed epochs
    iteration: int = 0  # completed optimizer steps in all
    iter_in_epoch: int = 0  # completed optimizer steps in the current epoch
    best_map: float = 0.0
    success: bool = False
    evals: dict = field(default_factory=dict)  # epoch -> stats


def holds_a_run(run_dir: Path) -> list[str]:
    """The traces of a previous run that trained in `run_dir` (none when it is new, or when an earlier start failed
    before training, e.g. on a bad config: such leftovers are overwritten)."""
    found = []
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        found.append("checkpoints")
    if (run_dir / LOG_NAME).is_file() and any(r["key"] == K.RUN_START for r in log_records(run_dir / LOG_NAME)):
        found.append(LOG_NAME)
    if (run_dir / "metrics.jsonl").is_file() and (run_dir / "metrics.jsonl").stat().st_size > 0:
        found.append("metrics.jsonl")
    return found


def prepare_run_dir(cfg: TrainConfig) -> tuple[str, str | None]:
    """(the directory this run writes to, or an error message). Two runs never share a directory: without --resume,
    a directory holding a previous run is refused, or with --new_run_dir the next free `<run_dir>-<k>` is taken
    (the demo preset does, so `make demo` works twice). `--resume auto` with no checkpoint yet starts afresh and
    first moves the earlier attempt's files into `<run_dir>/attempt-<k>/`, so nothing is lost or mixed."""
    run_dir = Path(cfg.run_dir)
    found = holds_a_run(run_dir)
    if not found or cfg.eval_only:
        return str(run_dir), None
    if cfg.resume == "auto" and checkpoint.find_resume("auto", run_dir / "checkpoints") is None:
        k = 1
        while (run_dir / f"attempt-{k}").exists():
            k += 1
        (run_dir / f"attempt-{k}").mkdir()
        for name in (*found, "tensorboard", "eval", *(p.name for p in run_dir.glob("mlperf.segment*.log"))):
            if (run_dir / name).exists():
                os.replace(run_dir / name, run_dir / f"attempt-{k}" / name)
        log.warning("%s: no checkpoint to resume; the earlier attempt's files moved to %s", run_dir,
                    run_dir / f"attempt-{k}")
        return str(run_dir), None
    if cfg.resume is not None:
        return str(run_dir), None
    if cfg.new_run_dir:
        k = 2
        while holds_a_run(run_dir.with_name(f"{run_dir.name}-{k}")):
            k += 1
        return str(run_dir.with_name(f"{run_dir.name}-{k}")), None
    return str(run_dir), (f"{run_dir}: holds a previous run ({', '.join(found)}); continue it with --resume auto, or "
                          f"start a new run with a fresh --run_dir")


def client_state(state: RunState, sampler: TrainSampler, cfg: TrainConfig) -> dict:
    """What a checkpoint saves beside DeepSpeed's module, optimizer and scheduler: host data only (plain numbers and
    CPU RNG states), so that a checkpoint of a GPU run reads anywhere."""
    return {"run_state": asdict(state), "rng": checkpoint.rng_state(), "sampler": sampler.state_dict(),
            "config": asdict(cfg)}


def precision_of(ds_config: dict, path: str) -> torch.dtype | None:
    """The autocast dtype the DeepSpeed JSON asks for (None = fp32).

    Reduced precision goes through DeepSpeed's `torch_autocast`: parameters, BatchNorm and the optimizer stay fp32
    (SPEC section 7: NVIDIA kept BN in fp32), convolutions run in bf16/fp16; fp16 adds dynamic loss scaling.
    DeepSpeed's `bf16`/`fp16` blocks cast every parameter, BatchNorm's included, so they are refused here.
    """
    for block in ("bf16", "fp16"):
        if ds_config.get(block, {}).get("enabled"):
            raise ValueError(f"{path}: '{block}.enabled' casts BatchNorm to {block}; use "
                             f"\"torch_autocast\": {{\"enabled\": true, \"dtype\": \"...\"}} instead")
    autocast = ds_config.get("torch_autocast", {})
    if not autocast.get("enabled"):
        return None
    dtype = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    name = str(autocast.get("dtype", "bfloat16")).replace("torch.", "")
    if name not in dtype:
        raise ValueError(f"{path}: torch_autocast.dtype {name!r} is not bfloat16 or float16")
    if dtype[name] == torch.float16 and not torch.cuda.is_available():
        raise ValueError(f"{path}: fp16 needs a GPU (DeepSpeed refuses fp16 on CPU); use bfloat16 or fp32")
    return dtype[name]


def load_ds_config(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: DeepSpeed config not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: malformed JSON ({exc})") from None


def train_step(engine, batch, device, memory_format, encode=None):
    """One micro-batch: forward, backward (DeepSpeed scales for accumulation), step at the boundary.

    Images arrive as uint8 and are normalised here, on the device. With `encode(gt_ltrb, gt_labels, num_gt)` the batch
    holds raw padded boxes, matched and encoded here on the device.
    """
    images, target_a, target_b, _ = batch
    images = normalize_images(images.to(device, non_blocking=True), memory_format)
    target_a, target_b = target_a.to(device, non_blocking=True), target_b.to(device, non_blocking=True)
    if encode is not None:
        target_a, target_b = encode(target_a, target_b, (target_b > 0).sum(dim=1))
    loss, loc, conf = engine(images, target_a, target_b)
    engine.backward(loss)
    engine.step()
    return loss.detach(), loc.detach(), conf.detach()


class Trainer:
    """Owns the engine, loaders, loggers and evaluator of one run."""

    def __init__(self, cfg: TrainConfig):
        import deepspeed  # after setup_process_env: DS_ACCELERATOR is read at import

        self.cfg = cfg
        # Distributed: bounded waits everywhere, so a missing or dead rank ends the run instead of hanging it.
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        check_local_rank(local_rank)
        if int(os.environ["RANK"]) != 0:
            wait_for_rendezvous(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), cfg.dist_timeout,
                                int(os.environ["RANK"]))
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                                   timeout=timedelta(seconds=cfg.dist_timeout))
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            self.device = torch.device("cuda", local_rank)
        else:
            self.device = torch.device("cpu")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)

        # Run directory: one run per directory; a resumed run is a new segment of its run. Rank 0 decides, so that
        # every rank writes to the same place and fails with the same message.
        decided = [prepare_run_dir(cfg) if self.rank == 0 else None]
        if self.world > 1:
            dist.broadcast_object_list(decided, src=0)
        run_dir, error = decided[0]
        if error:
            raise ValueError(error)
        cfg.run_dir = run_dir
        self.run_dir, self.ckpt_dir = Path(run_dir), Path(run_dir) / "checkpoints"
        self.resume_from = checkpoint.find_resume(cfg.resume, self.ckpt_dir)
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.run_dir / "config.json")
        dist.barrier()
        # An evaluation-only run is no MLPerf run: it writes no MLPerf log. A resumed one writes its segment's log.
        enabled = self.rank == 0 and not cfg.eval_only
        if self.resume_from is None:
            self.mll = MLPerfLogger(self.run_dir / LOG_NAME, enabled=enabled, mode="w")  # a start that failed is gone
            self.mll.start(K.INIT_START)
            self.mll.submission(cfg.division, cfg.submission_platform)
            self.mll.event(K.CACHE_CLEAR, True)
        else:
            self.mll = MLPerfLogger(next_segment_log(self.run_dir), enabled=enabled, header=(
                f"continuation of {LOG_NAME} in this directory, resumed from checkpoint "
                f"{self.resume_from[0] / self.resume_from[1]}: not a complete MLPerf log (python -m ssd_ds.mlperf_log "
                f"{self.run_dir / LOG_NAME} adds up the segments)"))

        # Data.
        if cfg.synthetic and self.rank == 0:
            ensure_synthetic(cfg.data)
        dist.barrier()
        self.train_set = CocoDetection(cfg.data, "train")
        self.val_set = CocoDetection(cfg.data, "val", skip_to_next=False)
        on_device = should_encode_on_device(cfg.encode_on_device, self.device)
        self.check_box_counts(on_device)

        # Transforms: boxes are encoded in the DataLoader workers (a CPU coder) or shipped raw for the device.
        model_cfg = build_model_config(cfg.model, num_classes=self.train_set.num_classes,
                                       backbone_weights=cfg.backbone_weights)
        worker_coder = None if on_device else BoxCoder(default_boxes_ltrb(model_cfg.anchors))
        self.train_set.transform = TrainTransform(model_cfg.input_size, worker_coder, CROP_MAX_SAMPLES, cfg.max_boxes)
        self.val_set.transform = EvalTransform(model_cfg.input_size)

        # Engine settings from the DeepSpeed JSON, checked against the world size.
        ds_config = load_ds_config(cfg.deepspeed_config)
        self.plan = check_batch(ds_config, cfg.deepspeed_config, self.world)
        ds_config.setdefault("train_batch_size", self.plan.global_batch)
        self.autocast_dtype = precision_of(ds_config, cfg.deepspeed_config)

        self.sampler = TrainSampler(len(self.train_set), cfg.seed, self.rank, self.world)
        self.train_loader = build_train_loader(self.train_set, self.sampler, self.plan.micro_batch, cfg.workers,
                                               pin_memory=self.device.type == "cuda", raw_boxes=on_device)
        self.iters_per_epoch = len(self.train_loader) // self.plan.accumulation
        if self.iters_per_epoch < 1:
            raise ValueError(f"{cfg.data}: {len(self.train_set)} training images give no full global batch of "
                             f"{self.plan.global_batch}")
        self.eval_loader = build_eval_loader(self.val_set, self.rank, self.world, cfg.eval_batch, cfg.workers,
                                             pin_memory=self.device.type == "cuda")
        S, A = model_cfg.input_size, model_cfg.anchors.num_anchors
        per_image = 3 * S * S + (cfg.max_boxes * (4 * 4 + 8) if on_device else A * (4 * 4 + 8))  # uint8 + targets
        shm_warning = check_shared_memory(self.plan.micro_batch * per_image, cfg.workers)
        if shm_warning:
            log.warning(shm_warning)

        # Model, optimizer and schedule, then the speed-ups (ssd_ds/speedups.py says why in this order).
        model = build_model(model_cfg).to(self.device)
        self.base_lr = base_lr(cfg.lr_arg, self.plan.global_batch)
        self.built = build_engine(
            model, model_cfg, self.device, ds_config, kernels=cfg.kernels, compile=cfg.compile,
            encode_on_device=cfg.encode_on_device, channels_last=cfg.channels_last,
            optimizer_fn=lambda m: build_optimizer(m, self.base_lr, cfg.momentum, cfg.weight_decay, self.device),
            scheduler_fn=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(
                it, self.iters_per_epoch, cfg.warmup_iters, cfg.warmup_factor, cfg.decay_epochs, cfg.decay_factor)))
        self.engine, self.ops, self.memory_format = self.built.engine, self.built.ops, self.built.memory_format
        self.scheduler = self.engine.lr_scheduler
        log.info("kernels: %s; box encoding on %s; compiled: %s; device %s; world size %d", self.ops.backend,
                 "the device" if self.ops.encode else "the loader workers", self.built.compiled, self.device,
                 self.world)

        self.state = RunState()
        where = self.resume_from
        if where is not None:
            client = checkpoint.load(self.engine, where)
            self.state = RunState(**client["run_state"])
            checkpoint.set_rng_state(client["rng"])
            log.info("resumed from %s/%s at epoch %d, iteration %d", *where, self.state.epoch, self.state.iteration)
            self.mll.event(RESUMED_FROM, str(where[0] / where[1]),
                           metadata={"epoch": self.state.epoch, "iteration": self.state.iteration})
        if cfg.warm_up == "on" or (cfg.warm_up == "auto" and (self.built.compiled or self.device.type == "cuda")):
            t0 = time.perf_counter()
            warm_up(self.built, self.plan.micro_batch, model_cfg.input_size, cfg.max_boxes)
            log.info("warm-up (compile, autotuning) on synthetic tensors: %.1f s", time.perf_counter() - t0)

        self.evaluator = BackgroundEvaluator(self.val_set.ann_file, self.run_dir / "eval") if self.rank == 0 else None
        self.submitted_at: dict[int, int] = {}  # epoch -> iteration at which its evaluation was submitted
        self.writer = None
        if self.rank == 0:
            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        self.metrics = open(self.run_dir / "metrics.jsonl", "a" if where else "w") if self.rank == 0 else None

        if self.resume_from is None:  # the run's init block: once, in its first segment's log
            self.mll.hyperparameters(cfg.seed, self.plan.micro_batch, self.plan.global_batch, self.base_lr,
                                     cfg.decay_epochs, cfg.weight_decay, cfg.warmup_iters, cfg.warmup_factor)
            self.mll.event(K.TRAIN_SAMPLES, len(self.train_set))
            self.mll.event(K.MAX_SAMPLES, CROP_MAX_SAMPLES)
            self.mll.event(K.EVAL_SAMPLES, len(self.val_set))
            self.mll.end(K.INIT_STOP)

    def check_box_counts(self, encode_on_device: bool) -> None:
        """Raw boxes travel padded to --max_boxes when the device encodes them: an image with more would fail in a
        loader worker mid-epoch, so the annotations are checked once, now. (Augmentation only removes boxes.)"""
        if not encode_on_device:
            return
        most = max(self.train_set.records, key=lambda rec: len(rec.labels))
        if len(most.labels) > self.cfg.max_boxes:
            n = len(most.labels)
            raise ValueError(f"{self.train_set.ann_file}: image {most.image_id} has {n} boxes, more than --max_boxes "
                             f"{self.cfg.max_boxes} (boxes per image shipped for encoding on the device); pass "
                             f"--max_boxes {n} or more (at most 256)")

    # --- the loop -------------------------------------------------------------------------------------------
    def run(self) -> RunState:
        cfg, state = self.cfg, self.state
        self.mll.start(K.RUN_START)
        total = cfg.epochs * self.iters_per_epoch
        if cfg.max_iters:
            total = min(total, cfg.max_iters)
        progress = None
        if self.rank == 0 and cfg.progress:
            progress = tqdm(total=total, initial=state.iteration, unit="it", dynamic_ncols=True, file=sys.stdout)
        self.pending_losses: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        status = "aborted"
        try:
            while state.epoch < cfg.epochs and not state.success and state.iteration < total:
                self.run_epoch(total, progress)
                if state.success or state.iteration >= total:
                    break
            if not state.success:
                self.finish_evaluations()
            self.verify_replicas()
            status = "success" if state.success else "aborted"
        finally:
            if progress is not None:
                progress.close()
            self.mll.end(K.RUN_STOP, metadata={"status": status})
            self.close()
        return state

    def evaluate_only(self) -> RunState:
        """Evaluate the loaded checkpoint once, wait for COCOeval, and end (no training, no MLPerf run)."""
        if self.cfg.resume is None:
            raise ValueError("--eval_only needs --resume auto|PATH: a checkpoint to evaluate")
        try:
            self.evaluate(self.state.epoch)
            self.finish_evaluations()
        finally:
            self.close()
        return self.state

    def run_epoch(self, total: int, progress) -> None:
        cfg, state = self.cfg, self.state
        epoch = state.epoch + 1  # 1-based epoch being trained
        if state.iter_in_epoch == 0:
            self.mll.start(K.EPOCH_START, metadata={"epoch_num": epoch})
            if self.block_starts(epoch):
                self.mll.start(K.BLOCK_START, metadata={"first_epoch_num": epoch,
                                                        "epoch_count": self.block_length(epoch)})
        accum = self.plan.accumulation
        self.sampler.set_epoch(state.epoch, start=state.iter_in_epoch * accum * self.plan.micro_batch)
        micro_batches = (self.iters_per_epoch - state.iter_in_epoch) * accum
        batches = DevicePrefetcher(islice(self.train_loader, micro_batches), self.device)
        t_step = time.perf_counter()
        data_wait = 0.0
        while state.iter_in_epoch < self.iters_per_epoch and state.iteration < total:
            for _ in range(accum):
                t0 = time.perf_counter()
                batch = next(batches)
                data_wait += time.perf_counter() - t0
                loss, loc, conf = train_step(self.engine, batch, self.device, self.memory_format, self.ops.encode)
            state.iteration += 1
            state.iter_in_epoch += 1
            self.pending_losses.append((state.iteration, loss, loc, conf))
            if state.iteration % cfg.log_every == 0 or state.iter_in_epoch == self.iters_per_epoch:
                elapsed = time.perf_counter() - t_step
                self.log_training(len(self.pending_losses), elapsed, data_wait, progress)
                t_step, data_wait = time.perf_counter(), 0.0
                if self.poll_evaluations():
                    return
            if cfg.checkpoint_every and state.iteration % cfg.checkpoint_every == 0:
                self.save_checkpoint()
        del batches
        if state.iter_in_epoch < self.iters_per_epoch:  # stopped by max_iters
            return
        state.epoch, state.iter_in_epoch = epoch, 0
        self.mll.end(K.EPOCH_STOP, metadata={"epoch_num": epoch})
        if should_evaluate(cfg, epoch):
            self.evaluate(epoch)
            self.mll.end(K.BLOCK_STOP, metadata={"first_epoch_num": self.block_first(epoch)})
        self.save_checkpoint()

    # --- MLPerf blocks: the epochs between two evaluations -------------------------------------------------
    def block_starts(self, epoch: int) -> bool:
        return epoch == 1 or should_evaluate(self.cfg, epoch - 1)

    def block_first(self, epoch: int) -> int:
        first = epoch
        while first > 1 and not should_evaluate(self.cfg, first - 1):
            first -= 1
        return first

    def block_length(self, epoch: int) -> int:
        last = epoch
        while not should_evaluate(self.cfg, last):
            last += 1
        return last - epoch + 1

    # --- logging, checks ----------------------------------------------------------------------------------------
    def check_finite(self) -> list[tuple[int, float, float, float]]:
        """Bring the pending losses to the host (one sync) and stop on the first non-finite one."""
        if not self.pending_losses:
            return []
        values = torch.stack([torch.stack(p[1:]) for p in self.pending_losses]).float().cpu().tolist()
        rows = [(p[0], *v) for p, v in zip(self.pending_losses, values)]
        self.pending_losses = []
        for iteration, loss, _, _ in rows:
            if not math.isfinite(loss):
                latest = self.ckpt_dir / "latest"
                kept = latest.read_text().strip() if latest.is_file() else "none saved yet"
                raise FloatingPointError(f"loss is {loss} at iteration {iteration}; stopping. Last checkpoint "
                                         f"({kept}) in {self.ckpt_dir} is intact")
        return rows

    def log_training(self, steps: int, elapsed: float, data_wait: float, progress) -> None:
        rows = self.check_finite()
        if self.rank != 0 or not rows:
            return
        lr = self.scheduler.get_last_lr()[0]
        img_s = steps * self.plan.global_batch / max(elapsed, 1e-9)
        iteration, loss, loc, conf = rows[-1]
        for it, l, lc, cf in rows:
            record = {"iteration": it, "loss": l, "loc": lc, "conf": cf}
            if it == iteration:  # the speed of the steps since the last record that carried it
                record.update(images_per_s=img_s, data_wait_s_per_step=data_wait / steps)
            self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        w = self.writer
        w.add_scalar("loss/total", loss, iteration)
        w.add_scalar("loss/loc", loc, iteration)
        w.add_scalar("loss/conf", conf, iteration)
        w.add_scalar("lr", lr, iteration)
        w.add_scalar("throughput/images_per_s", img_s, iteration)
        w.add_scalar("throughput/data_wait_s_per_step", data_wait / steps, iteration)
        if progress is not None:
            progress.update(iteration - progress.n)
            progress.set_postfix(epoch=self.state.epoch + 1, loss=f"{loss:.3f}", lr=f"{lr:.4f}",
                                 img_s=f"{img_s:.0f}", refresh=False)

    # --- checkpoints --------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        self.check_finite()
        client = client_state(self.state, self.sampler, self.cfg)
        tag = f"epoch{self.state.epoch:03d}_iter{self.state.iteration:07d}"
        checkpoint.save(self.engine, self.ckpt_dir, tag, client, self.cfg.keep_checkpoints)

    # --- evaluation ---------------------------------------------------------------------------------------------
    def evaluate(self, epoch: int) -> None:
        """Sharded inference now; COCOeval in the background on rank 0."""
        self.mll.start(K.EVAL_START, metadata={"epoch_num": epoch})
        model = self.engine.module.model
        draw = self.cfg.eval_images_to_draw if self.rank == 0 else 0
        rows, seen, skipped, examples = predict(model, self.eval_loader, self.ops.coder,
                                                self.val_set.label_to_category, self.device, self.autocast_dtype,
                                                draw, self.ops.decode_scores, self.memory_format)
        if skipped:
            log.warning("evaluation at epoch %d skipped %d unreadable images on rank %d", epoch, skipped, self.rank)
        gathered = gather_to_rank0((rows, seen, skipped))
        if self.rank == 0:
            detections = np.concatenate([g[0] for g in gathered])
            self.check_coverage(epoch, [g[1] for g in gathered], sum(g[2] for g in gathered))
            self.evaluator.submit(epoch, detections)
            self.submitted_at[epoch] = self.state.iteration
            self.draw_examples(epoch, examples)

    def check_coverage(self, epoch: int, seen_per_rank: list[list[int]], skipped: int) -> None:
        """Every validation image evaluated exactly once over all ranks (SPEC section 6), unreadable ones aside."""
        seen = [i for ids in seen_per_rank for i in ids]
        record = {"eval_coverage": epoch, "per_rank": [len(ids) for ids in seen_per_rank], "unique": len(set(seen)),
                  "skipped": skipped, "val_images": len(self.val_set)}
        self.metrics.write(json.dumps(record) + "\n")
        if len(seen) != len(set(seen)) or len(seen) + skipped != len(self.val_set):
            raise RuntimeError(f"evaluation of epoch {epoch} did not cover the validation set exactly once: {record}")

    def draw_examples(self, epoch: int, examples) -> None:
        for i, (image, boxes, scores, labels) in enumerate(examples):
            keep = scores > 0.3
            size = image.shape[-1]
            drawn = draw_bounding_boxes(image, boxes[keep] * size,
                                        labels=[f"{l}:{s:.2f}" for l, s in zip(labels[keep].tolist(),
                                                                                scores[keep].tolist())])
            self.writer.add_image(f"val/image_{i}", drawn, epoch)

    def poll_evaluations(self, results=None) -> bool:
        """Rank 0 picks up finished evaluations; the stop decision is broadcast so all ranks stop together."""
        stop = torch.zeros(1, device=self.device)
        if self.rank == 0:
            for epoch, stats in (self.evaluator.poll() if results is None else results):
                self.record_evaluation(epoch, stats)
            stop.fill_(float(self.state.success))
        dist.broadcast(stop, src=0)
        self.state.success = bool(stop.item())
        return self.state.success

    def record_evaluation(self, epoch: int, stats: dict | None) -> None:
        event = {"eval_epoch": epoch, "submitted_at": self.submitted_at.pop(epoch, None),
                 "picked_up_at": self.state.iteration, "stats": stats}
        self.metrics.write(json.dumps(event) + "\n")
        self.metrics.flush()
        if stats is None:
            self.writer.add_text("eval/failure", f"evaluation of epoch {epoch} failed; training goes on", epoch)
            return
        self.state.evals[epoch] = stats
        self.state.best_map = max(self.state.best_map, stats["AP"])
        self.mll.event(K.EVAL_ACCURACY, stats["AP"], metadata={"epoch_num": epoch})
        self.mll.end(K.EVAL_STOP, metadata={"epoch_num": epoch})
        for name in ("AP", "AP50", "AP75"):
            self.writer.add_scalar(f"eval/{name}", stats[name], epoch)
        log.info("epoch %d: COCO AP %.4f (AP50 %.4f, AP75 %.4f)", epoch, stats["AP"], stats["AP50"], stats["AP75"])
        if stats["AP"] >= self.cfg.target_map:
            self.state.success = True

    def finish_evaluations(self) -> None:
        """At the end of the schedule: wait for evaluations still running, they may reach the target."""
        results = self.evaluator.wait() if self.rank == 0 else []
        self.poll_evaluations(results)

    def verify_replicas(self) -> None:
        """Data parallelism must leave every rank with the same parameters: compare checksums across ranks."""
        with torch.no_grad():
            local = torch.stack([p.double().sum() for p in self.engine.module.parameters()]).sum().reshape(1)
        sums = [torch.zeros_like(local) for _ in range(self.world)]
        dist.all_gather(sums, local.to(self.device))
        checksums = [float(s.item()) for s in sums]
        if self.rank == 0:
            self.metrics.write(json.dumps({"param_checksums": checksums}) + "\n")
            self.metrics.flush()
        if len(set(checksums)) != 1:
            raise RuntimeError(f"parameters differ across ranks after training: checksums {checksums}")

    def close(self) -> None:
        if self.evaluator is not None:
            self.evaluator.close()
        if self.writer is not None:
            self.writer.close()
        if self.metrics is not None:
            self.metrics.close()
        self.mll.close()


def main(argv: list[str] | None = None) -> RunState:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(argv)
    setup_process_env()
    trainer = Trainer(cfg)
    state = trainer.evaluate_only() if cfg.eval_only else trainer.run()
    if trainer.rank == 0 and cfg.eval_only:
        stats = state.evals.get(state.epoch)
        print(f"checkpoint at epoch {state.epoch}: COCO AP {stats['AP']:.4f}" if stats else "evaluation failed")
    elif trainer.rank == 0:
        print(f"run {'reached' if state.success else 'did not reach'} the target AP {cfg.target_map}: "
              f"best AP {state.best_map:.4f} after {state.epoch} epochs, {state.iteration} iterations")
        print(f"MLPerf log:  {trainer.run_dir / 'mlperf.log'}")
        print(f"TensorBoard: tensorboard --logdir {trainer.run_dir / 'tensorboard'}")
    return state


if __name__ == "__main__":
    from ssd_ds.cli import run_cli

    run_cli(main)

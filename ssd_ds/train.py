"""The trainer: `python -m ssd_ds.train [--preset demo|mlperf | --config FILE] [--field value ...]` (one process) or
`deepspeed [--hostfile H] [--num_gpus N] --module ssd_ds.train --deepspeed_config ds_configs/X.json ...`.

`main` reads top to bottom in the order things depend on each other: config -> distributed -> stop signals ->
run directory and logs -> data -> model -> speed-ups (ssd_ds.speedups.build_training_setup) -> resume -> warm-up ->
the loop (ssd_ds.loop: one step, one epoch, one evaluation) -> the MLPerf log checked.

Exit codes: 0 when the run trained (whether or not it reached the target), 2 on a user error (ssd_ds.cli),
75 (ssd_ds.preemption.PREEMPTED_EXIT) when a stop signal ended it with a checkpoint: resume with `--resume auto`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path

import torch

from ssd_ds import checkpoint, ds_config
from ssd_ds.anchors import default_boxes_ltrb
from ssd_ds.box_coder import BoxCoder
from ssd_ds.coco_eval import BackgroundEvaluator
from ssd_ds.data.batch import collate_train
from ssd_ds.data.coco import CocoDetection
from ssd_ds.data.device_input import CompressedTrainTransform, DevicePreparation, collate_compressed
from ssd_ds.data.loaders import TrainSampler, build_eval_loader, build_train_loader, check_shared_memory
from ssd_ds.data.synthetic import ensure_synthetic
from ssd_ds.data.transforms import CROP_MAX_SAMPLES, EvalTransform, TrainTransform
from ssd_ds.distributed import barrier, init_distributed, setup_process_env
from ssd_ds.errors import BadInput
from ssd_ds.loop import (
    Checkpoints,
    Evaluation,
    RunState,
    StopAt,
    TrainData,
    TrainLog,
    evaluate_only,
    train,
    train_one_epoch,
)
from ssd_ds.metrics import MetricsLogger
from ssd_ds.mlperf_log import open_run_log, report
from ssd_ds.model import build_model
from ssd_ds.model_config import build_model_config
from ssd_ds.preemption import PREEMPTED_EXIT, StopSignals, ignore_signals, kill_children_at_exit
from ssd_ds.rng import set_rng_state
from ssd_ds.run_config import RunConfig, config_from_args
from ssd_ds.run_dir import open_run_dir
from ssd_ds.schedule import base_lr, lr_factor
from ssd_ds.speedups import build_training_setup, input_on_device, training_setup_options
from ssd_ds.warmup import load_compile_cache, save_compile_cache, warm_up

log = logging.getLogger("ssd_ds.train")


def check_dataset_box_counts(dataset: CocoDetection, max_boxes: int) -> None:
    """The device encodes at most --max_boxes boxes an image: an image with more would fail in a loader worker
    mid-epoch, so the annotations are checked once, at start-up. (Augmentation only removes boxes.)"""
    most = max(dataset.records, key=lambda rec: len(rec.labels))
    if len(most.labels) > max_boxes:
        n = len(most.labels)
        raise BadInput(f"{dataset.ann_file}: image {most.image_id} has {n} boxes, more than --max_boxes {max_boxes} "
                       f"(boxes per image encoded on the device); pass --max_boxes {n} or more (at most 256)")


def check_same_default_boxes(saved: dict, cfg: RunConfig, checkpoint_dir: Path) -> None:
    """A run resumes on the default boxes it was trained with: others would silently change what the weights'
    offsets mean (the model's shapes stay the same, so nothing else would notice)."""
    saved_scales, scales = tuple(saved.get("anchor_scales") or ()), tuple(cfg.anchor_scales or ())
    if saved_scales != scales:
        show = lambda s: ",".join(map(str, s)) or "none (the preset's)"  # noqa: E731
        raise BadInput(f"{checkpoint_dir}: trained with --anchor_scales {show(saved_scales)}, this run gives "
                       f"{show(scales)}; resume with the run's own (--config <run_dir>/config.json)")


def check_resume_batch(saved: dict | None, batch: dict, engine_settings: dict, checkpoint_dir: Path,
                       ds_path: str) -> None:
    """A run resumes at the global batch and epoch length it was saved with, on any number of ranks: the rest of the
    epoch is then dealt out again over the ranks there are (TrainSampler: a rank's position p is the epoch's global
    position p * world + rank, so each global batch holds the same samples, with the same augmentation, and none is
    repeated or lost). What cannot stay exact on another world size: BatchNorm's statistics, taken per micro-batch
    on each rank (other groupings of the same samples), and the order gradients are summed in. Anything else is
    refused in one line naming both sizes and the DeepSpeed setting that keeps the global batch."""
    if not saved:  # a checkpoint from before the batch plan was saved
        return
    world, saved_world = batch["world_size"], saved["world_size"]
    if saved["global_batch"] != batch["global_batch"]:
        need, rest = divmod(saved["global_batch"], world)
        if rest:
            fix = f"world size {world} does not divide it: resume on a world size that does"
        else:
            micro = batch["micro_batch"] if need % batch["micro_batch"] == 0 else need
            fix = (f"resume with a --deepspeed_config of train_micro_batch_size_per_gpu {micro} and "
                   f"gradient_accumulation_steps {need // micro} (train_batch_size {saved['global_batch']})")
        raise BadInput(f"{checkpoint_dir}: saved on world size {saved_world} at global batch {saved['global_batch']} "
                       f"(micro-batch {saved['micro_batch']} x accumulation {saved['accumulation']}), this run has "
                       f"world size {world} and global batch {batch['global_batch']} ({ds_path}); {fix}")
    if saved["iters_per_epoch"] != batch["iters_per_epoch"]:
        raise BadInput(f"{checkpoint_dir}: saved on world size {saved_world} with {saved['iters_per_epoch']} "
                       f"iterations an epoch, world size {world} pads the epoch to {batch['iters_per_epoch']}; resume "
                       f"on world size {saved_world}")
    if world != saved_world and engine_settings.get("zero_optimization", {}).get("stage", 0) > 0:
        raise BadInput(f"{checkpoint_dir}: saved on world size {saved_world} with ZeRO, which splits the optimizer "
                       f"state by rank; this run has world size {world}: resume on {saved_world} ranks")
    if world != saved_world:
        log.warning("resuming a run saved on world size %d on %d: the same global batch %d (micro-batch %d x "
                    "accumulation %d x %d ranks), the rest of the epoch dealt out again; the samples of each "
                    "global batch are the same, BatchNorm's per-micro-batch statistics are not", saved_world, world,
                    batch["global_batch"], batch["micro_batch"], batch["accumulation"], world)


def main(argv: list[str] | None = None) -> RunState | int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(argv)

    # Distributed: one process per device, every wait bounded by --dist_timeout.
    setup_process_env()
    rank, world, device = init_distributed(cfg.dist_timeout)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    # Stop signals (ssd_ds.preemption): noted from now on, acted on at the training loop's sync points. The loader
    # workers and COCOeval processes ignore them. An evaluation-only run keeps the signals' default actions.
    signals = None if cfg.eval_only else StopSignals(cfg.stop_signals, cfg.stop_timeout).install()
    in_children = functools.partial(ignore_signals, signals.numbers if signals else ())
    if signals is not None:
        kill_children_at_exit()  # children deaf to SIGTERM are killed at exit, not waited for

    # Run directory and logs. An evaluation-only run is no MLPerf run: it writes no MLPerf log.
    run_dir, resume_from = open_run_dir(cfg, rank)
    cfg = dataclasses.replace(cfg, run_dir=str(run_dir))  # checkpoints record the directory config.json does
    mlperf = open_run_log(run_dir, None if resume_from is None else resume_from[0] / resume_from[1],
                          enabled=rank == 0 and not cfg.eval_only, division=cfg.division,
                          platform=cfg.submission_platform)

    # Data: images are decoded and augmented in the loader workers or on the device, boxes encoded in the workers (a
    # CPU coder) or on the device; both decided once, here.
    if cfg.synthetic and rank == 0:
        ensure_synthetic(cfg.data)
    barrier()
    decode_on_device, encode_on_device = input_on_device(cfg, device)
    train_set = CocoDetection(cfg.data, "train", decode=not decode_on_device)
    val_set = CocoDetection(cfg.data, "val", skip_to_next=False)
    if encode_on_device:
        check_dataset_box_counts(train_set, cfg.max_boxes)
    model_cfg = build_model_config(cfg.model, num_classes=train_set.num_classes, anchor_scales=cfg.anchor_scales)
    if decode_on_device:
        train_set.transform = CompressedTrainTransform(CROP_MAX_SAMPLES, cfg.max_boxes)
    else:
        worker_coder = None if encode_on_device else BoxCoder(default_boxes_ltrb(model_cfg.anchors))
        train_set.transform = TrainTransform(model_cfg.input_size, worker_coder, CROP_MAX_SAMPLES, cfg.max_boxes)
    val_set.transform = EvalTransform(model_cfg.input_size)
    engine_cfg = ds_config.load(cfg.deepspeed_config, world)
    plan = engine_cfg.plan
    sampler = TrainSampler(len(train_set), cfg.seed, rank, world)
    pin = device.type == "cuda"
    train_loader = build_train_loader(train_set, sampler, plan.micro_batch, cfg.workers, pin_memory=pin,
                                      collate_fn=collate_compressed if decode_on_device else collate_train,
                                      timeout=cfg.loader_timeout, worker_init_fn=in_children)
    iters_per_epoch = len(train_loader) // plan.accumulation
    if iters_per_epoch < 1:
        raise BadInput(f"{cfg.data}: {len(train_set)} training images give no full global batch of "
                       f"{plan.global_batch}")
    eval_loader = build_eval_loader(val_set, rank, world, cfg.eval_batch, cfg.workers, pin_memory=pin,
                                    worker_init_fn=in_children)
    size, anchors = model_cfg.input_size, model_cfg.anchors.num_anchors
    # uint8 pixels (a JPEG's bytes are fewer), boxes, and targets when the workers encode
    per_image = 3 * size * size + cfg.max_boxes * 24 + (0 if encode_on_device else anchors * 24)
    shm_warning = check_shared_memory(plan.micro_batch * per_image, cfg.workers)
    if shm_warning:
        log.warning(shm_warning)

    # Model, optimizer and schedule, then the speed-ups (ssd_ds/speedups.py says why in this order).
    model = build_model(model_cfg, cfg.backbone_weights).to(device)
    lr = base_lr(cfg.lr_per_32, plan.global_batch)
    built = build_training_setup(
        model, model_cfg, device, engine_cfg.settings, **training_setup_options(cfg, device, lr),
        scheduler_fn=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(
            it, iters_per_epoch, cfg.warmup_iters, cfg.warmup_factor, cfg.decay_epochs, cfg.decay_factor)))
    log.info("kernels: %s; images decoded and augmented on %s; boxes encoded on %s; compiled: %s; device %s; world "
             "size %d", built.ops.backend, *("the device" if on else "the loader workers"
                                              for on in (decode_on_device, encode_on_device)),
             built.compiled, device, world)

    # Resume: DeepSpeed's module, optimizer and scheduler, then where the run was and every RNG.
    state = RunState()
    batch = dict(world_size=world, micro_batch=plan.micro_batch, accumulation=plan.accumulation,
                 global_batch=plan.global_batch, iters_per_epoch=iters_per_epoch)
    if resume_from is not None:
        client = checkpoint.load(built.deepspeed, resume_from)
        check_same_default_boxes(client["config"], cfg, resume_from[0] / resume_from[1])
        if not cfg.eval_only:
            check_resume_batch(client.get("batch"), batch, engine_cfg.settings, resume_from[0] / resume_from[1],
                               cfg.deepspeed_config)
        state = RunState(**client["run_state"])
        set_rng_state(client["rng"])
        log.info("resumed from %s/%s at epoch %d, iteration %d", *resume_from, state.epoch, state.iteration)
        mlperf.resumed(resume_from[0] / resume_from[1], state.epoch, state.iteration)
    elif cfg.eval_only:
        raise BadInput(f"{run_dir / 'checkpoints'}: no checkpoint to evaluate (--resume {cfg.resume})")
    if cfg.warm_up == "on" or (cfg.warm_up == "auto" and (built.compiled or device.type == "cuda")):
        if cfg.compile_cache and load_compile_cache(cfg.compile_cache):
            log.info("torch.compile cache artifacts loaded from %s", cfg.compile_cache)
        t0 = time.perf_counter()
        eval_seconds = warm_up(built, plan.micro_batch, model_cfg.input_size, cfg.max_boxes, cfg.eval_batch,
                               engine_cfg.autocast_dtype)
        log.info("warm-up (compile, autotuning) on synthetic tensors: %.1f s, of which the evaluation model %.1f s",
                 time.perf_counter() - t0, eval_seconds)
        if cfg.compile_cache and rank == 0:
            saved = save_compile_cache(cfg.compile_cache)
            log.info("torch.compile cache artifacts: %s", f"{saved / 2**20:.1f} MiB saved to {cfg.compile_cache}"
                     if saved else "none to save")

    # The loop: its parts (ssd_ds.loop), each given what it uses.
    preparation = DevicePreparation(device, model_cfg.input_size) if decode_on_device else None
    metrics = MetricsLogger(run_dir, enabled=rank == 0, append=resume_from is not None)
    evaluation = Evaluation(
        built, eval_loader, val_set, device, engine_cfg.autocast_dtype, rank,
        BackgroundEvaluator(val_set.ann_file, run_dir / "eval", cfg.coco_eval, signals.numbers if signals else ())
        if rank == 0 else None, metrics, mlperf,
        cfg.target_map, images_to_draw=cfg.eval_images_to_draw,
        # A compiled model is given every batch at the full size, the one the warm-up compiled it for (a partial batch
        # would compile it again); an eager model runs a partial batch as it comes, so its detections (the CPU demo's
        # AP sequence) stay bit for bit what they were.
        pad_to=cfg.eval_batch if built.compiled else None)
    try:
        if cfg.eval_only:
            evaluate_only(state, evaluation)
            return report_evaluation(state, rank)
        if resume_from is None:  # the run's init block: once, in its first segment's log
            mlperf.hyperparameters(cfg.seed, plan.micro_batch, plan.global_batch, lr, cfg.decay_epochs,
                                   cfg.weight_decay, cfg.warmup_iters, cfg.warmup_factor)
            mlperf.init_stop(len(train_set), len(val_set), CROP_MAX_SAMPLES)
        else:  # evaluations the checkpoint left running
            evaluation.resubmit(state)
        data = TrainData(train_loader, sampler, plan, iters_per_epoch, device, preparation, cfg.data,
                         cfg.loader_timeout)
        ckpt_dir = run_dir / "checkpoints"
        inference_meta = dict(model_name=cfg.model, input_size=model_cfg.input_size, anchor_scales=cfg.anchor_scales,
                              class_names=val_set.class_names, label_to_category=val_set.label_to_category,
                              autocast=engine_cfg.autocast_dtype)
        checkpoints = Checkpoints(built.deepspeed, ckpt_dir, cfg.keep_checkpoints, sampler, dataclasses.asdict(cfg),
                                  inference_meta if rank == 0 else None, batch)
        train_log = TrainLog(metrics, ckpt_dir, plan.global_batch, device,
                             preparation.decoder.counts if preparation else None)
        epochs = cfg.epochs * iters_per_epoch
        stop = StopAt(cfg.epochs, min(epochs, cfg.max_iters) if cfg.max_iters else epochs, signals)
        if cfg.progress:
            metrics.start_progress(stop.iterations, state.iteration)
        train_epoch = functools.partial(train_one_epoch, state, built, data, cfg.eval_schedule, stop, train_log,
                                        evaluation, checkpoints, mlperf, cfg.log_every, cfg.checkpoint_every)
        preempted = train(state, stop, train_epoch, data, evaluation, built, metrics, mlperf, checkpoints)
    finally:
        evaluation.close()
        metrics.close()
        mlperf.close()
    if preempted:
        if rank == 0:
            print(f"stopped on {signals.name} at iteration {state.iteration}, checkpoint {checkpoints.saved}: resume "
                  f"with --resume auto --run_dir {run_dir} (exit code {PREEMPTED_EXIT})", flush=True)
        return PREEMPTED_EXIT
    return report_training(state, rank, cfg.target_map, run_dir)


def report_evaluation(state: RunState, rank: int) -> RunState:
    """An evaluation-only run's outcome on rank 0's stdout."""
    if rank == 0:
        stats = state.evals.get(state.epoch)
        print(f"checkpoint at epoch {state.epoch}: COCO AP {stats['AP']:.4f}" if stats else "evaluation failed")
    return state


def report_training(state: RunState, rank: int, target_map: float, run_dir: Path) -> RunState:
    """The run's outcome on rank 0's stdout, then the compliance checker's verdict on its whole MLPerf log and the
    RESULT line (ssd_ds.mlperf_log.report). A failed check is a warning: it never fails a run that trained."""
    if rank == 0:
        print(f"run {'reached' if state.success else 'did not reach'} the target AP {target_map}: "
              f"best AP {state.best_map:.4f} after {state.epoch} epochs, {state.iteration} iterations")
        print(f"MLPerf log:  {run_dir / 'mlperf.log'}")
        # the parent: TensorBoard names each run by its directory (`demo/tensorboard`), where the run's own
        # tensorboard/ would show one run named "."
        print(f"TensorBoard: tensorboard --logdir {run_dir.parent}  (this run: {run_dir.name}/tensorboard)")
        try:
            print("\n".join(report(run_dir / "mlperf.log")), flush=True)
        except Exception as exc:  # the check is a report: whatever breaks it, the run stands
            log.warning("the MLPerf log could not be checked: %s: %s", type(exc).__name__, exc)
    return state


if __name__ == "__main__":
    from ssd_ds.cli import run_cli

    run_cli(main)

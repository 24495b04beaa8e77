"""The warm-up before MLPerf's `run_start`: everything the run will compile, compiled on synthetic tensors, and
torch.compile's cache artifacts kept between runs (`--compile_cache`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ssd_ds.data.batch import box_slot_counts, box_slots, synthetic_batch
from ssd_ds.data.transforms import normalize_images
from ssd_ds.fileio import atomic_write
from ssd_ds.inference import detect_batch
from ssd_ds.rng import rng_state, set_rng_state
from ssd_ds.speedups import TrainingSetup
from ssd_ds.step import SSDTrainStep


def warm_up(built: TrainingSetup, micro_batch: int, input_size: int, max_boxes: int, eval_batch: int,
            autocast_dtype: torch.dtype | None, steps: int = 2) -> float:
    """Compile everything the run will run, on synthetic tensors, before MLPerf's `run_start` (which forbids touching
    the training data earlier) so that nothing compiles inside the timed run: the training step forward and backward
    (torch.compile, cuDNN autotuning, the Triton kernels), the encoding at every box-slot count the loader pads to,
    and one evaluation batch through the evaluation model and its post-processing. Then put back everything these
    change (parameters' gradients, BatchNorm statistics, the model's mode, every RNG), so what trains is unchanged.

    `eval_batch` and `autocast_dtype` are the evaluation's (ssd_ds.loop.evaluate): a compiled evaluation model is
    given every batch at that size, so this is the one shape it compiles for. Returns the seconds the evaluation
    model's part took (its compile, where it compiles)."""
    # the autocast the engine's forward applies
    from deepspeed.runtime.torch_autocast import autocast_if_enabled

    engine, ops = built.deepspeed, built.ops
    step: SSDTrainStep = engine.module
    saved_state = {k: v.clone() for k, v in step.state_dict().items()}
    saved_rng = rng_state()
    images, gt_ltrb, gt_labels = synthetic_batch(micro_batch, input_size, box_slots(max_boxes))
    images = normalize_images(images.to(ops.device), built.memory_format)
    gt_ltrb, gt_labels = gt_ltrb.to(ops.device), gt_labels.to(ops.device)
    num_gt = (gt_labels > 0).sum(dim=1)
    encode = ops.encode or ops.coder.encode_batch  # the workers' encoding, on the device, when they encode
    # The Triton encode kernel specialises on G: once at every count the loader pads to (each slice holds every
    # synthetic box: they are in the first 8 slots).
    for G in box_slot_counts(max_boxes):
        encode(gt_ltrb[:, :G].contiguous(), gt_labels[:, :G].contiguous(), num_gt)
    for _ in range(steps):
        loc_t, labels_t = encode(gt_ltrb, gt_labels, num_gt)
        with autocast_if_enabled(engine):
            loss, _, _ = step(images, loc_t, labels_t)
        loss.backward()
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"warm-up loss is {float(loss)}: the model or loss is broken before training")
    # The evaluation model (compiled apart from the step) as `infer_detections` runs it: in eval mode, where BatchNorm
    # reads its running statistics and leaves them alone, without gradients, at the evaluation's batch size.
    _synchronize(ops.device)
    t0 = time.perf_counter()
    was_training = built.eval_model.training
    built.eval_model.eval()
    eval_images, _, _ = synthetic_batch(eval_batch, input_size, max_boxes=0)  # uint8, as the eval loader ships
    detect_batch(built.eval_model, eval_images, ops.coder, ops.device, autocast_dtype, ops.decode_scores,
                 built.memory_format)
    built.eval_model.train(was_training)
    _synchronize(ops.device)
    eval_seconds = time.perf_counter() - t0
    for p in step.parameters():
        p.grad = None
    step.load_state_dict(saved_state)
    set_rng_state(saved_rng)
    _synchronize(ops.device)
    return eval_seconds


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_compile_cache(path: str) -> bool:
    """Load torch.compile's cache artifacts (`torch.compiler.save_cache_artifacts`) from `path` if it exists, so that
    the compiles of an earlier run with the same torch, GPU, model and shapes are cache hits; False if absent."""
    if not Path(path).is_file():
        return False
    torch.compiler.load_cache_artifacts(Path(path).read_bytes())
    return True


def save_compile_cache(path: str) -> int | None:
    """Save this process's torch.compile cache artifacts to `path` (atomically): their size in bytes, or None when
    nothing compiled."""
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is None:
        return None
    data, _info = artifacts
    atomic_write(path, data)
    return len(data)

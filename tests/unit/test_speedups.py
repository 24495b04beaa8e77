"""The speed-up plumbing on CPU: DeepSpeed settings for CUDA, the device prefetcher, the shared-memory check, the
shapes the warm-up compiles for."""

import glob
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from deepspeed.utils.config import get_timers_config

from ssd_ds.data.batch import Batch
from ssd_ds.data.loaders import DevicePrefetcher, check_shared_memory, shared_memory_needed
from ssd_ds.device_ops import build_device_ops
from ssd_ds.ds_config import engine_settings
from ssd_ds.model import build_model
from ssd_ds.model_config import cpu_small
from ssd_ds.speedups import TrainingSetup
from ssd_ds.step import SSDTrainStep
from ssd_ds.warmup import load_compile_cache, save_compile_cache, warm_up
from tests.helpers import REPO, CallLog


def test_throughput_timer_is_off_on_cuda_and_a_config_keeps_its_own_choice():
    on_cuda = engine_settings({"train_micro_batch_size_per_gpu": 8}, torch.device("cuda"))
    timers = get_timers_config(on_cuda)  # what DeepSpeed's engine reads
    assert not timers.enabled and not timers.synchronized
    assert get_timers_config(engine_settings({}, torch.device("cpu"))).enabled  # DeepSpeed's default off CUDA
    mine = {"timers": {"throughput": {"enabled": True, "synchronized": False}}}
    kept = get_timers_config(engine_settings(mine, torch.device("cuda")))
    assert kept.enabled and not kept.synchronized


def test_every_gpu_config_turns_the_synchronising_timer_off():
    configs = [Path(p) for p in glob.glob(str(REPO / "ds_configs" / "*.json")) if "cpu" not in Path(p).name]
    assert len(configs) >= 7
    for path in configs:
        timers = get_timers_config(json.loads(path.read_text()))
        assert not timers.enabled and not timers.synchronized, path.name


def test_prefetcher_yields_every_batch_unchanged_on_the_device():
    batches = [Batch(torch.full((2, 3), i, dtype=torch.uint8), torch.zeros(2, 8, 4),
                     torch.zeros(2, 8, dtype=torch.int64), torch.tensor([0, 0]), None, None, i) for i in range(3)]
    got = list(DevicePrefetcher(batches, torch.device("cpu")))
    assert len(got) == 3
    for batch, want in zip(got, batches):
        assert isinstance(batch, Batch) and batch.images.dtype == torch.uint8 and batch.loc_t is None
        assert all(torch.equal(a, b) for a, b in zip(batch.tensors(), want.tensors())) and batch.skipped == want.skipped
    assert list(DevicePrefetcher([], torch.device("cpu"))) == []


def test_shared_memory_check_names_the_docker_flags_when_batches_do_not_fit(tmp_path):
    assert check_shared_memory(1024, workers=4, shm=str(tmp_path)) is None
    assert check_shared_memory(10**15, workers=0, shm=str(tmp_path)) is None  # no workers, no shared memory
    warning = check_shared_memory(10**15, workers=8, shm=str(tmp_path))
    assert warning and "--ipc=host" in warning and "--shm-size=" in warning and str(tmp_path) in warning
    # The H200 config: 456 uint8 images of 300x300 and raw boxes, 8 workers x 2 prefetched + 1 in flight.
    batch = 456 * (3 * 300 * 300 + 128 * 24)
    assert 2.0e9 < shared_memory_needed(batch, workers=8) < 2.2e9


@pytest.mark.slow
def test_warm_up_encodes_at_every_box_slot_count_and_evaluates_one_full_batch():
    """The warm-up meets the shapes the run will: the encoding at every G the loader pads boxes to (8 ... 128 for
    --max_boxes 100: ssd_ds.data.batch.box_slots), the evaluation model in eval mode on one batch of eval_batch
    images; then the model is as it was (weights, BatchNorm statistics, training mode, no gradients, the RNG)."""
    cfg = cpu_small(num_classes=3)
    model = build_model(cfg)
    ops = build_device_ops(cfg, torch.device("cpu"), "torch", encode_on_device="on")
    encode, box_slots_encoded = ops.encode, []

    def logged_encode(boxes, labels, num_boxes):
        box_slots_encoded.append(boxes.shape[1])
        return encode(boxes, labels, num_boxes)

    ops.encode = logged_encode
    step, eval_model = SSDTrainStep(model, ops.loss), CallLog(model)
    before, rng = {k: v.clone() for k, v in step.state_dict().items()}, torch.get_rng_state()
    engine = SimpleNamespace(module=step, torch_autocast_enabled=lambda: False)  # what warm_up reads of DeepSpeed's
    built = TrainingSetup(engine, ops, torch.contiguous_format, compiled=False, eval_model=eval_model)
    warm_up(built, micro_batch=2, input_size=cfg.input_size, max_boxes=100, eval_batch=3, autocast_dtype=None)
    assert sorted(set(box_slots_encoded)) == [8, 16, 32, 64, 128]
    assert eval_model.calls == [(3, False)] and model.training
    assert all(torch.equal(v, before[k]) for k, v in step.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and torch.equal(torch.get_rng_state(), rng)


@pytest.mark.slow
def test_compile_cache_artifacts_round_trip(tmp_path):
    """What a compiled run saves after its warm-up, a later one loads before it (--compile_cache)."""
    assert not load_compile_cache(str(tmp_path / "absent.bin"))
    compiled = torch.compile(lambda x: torch.sin(x) * 2 + 1)
    x = torch.arange(8.0)
    torch.testing.assert_close(compiled(x), torch.sin(x) * 2 + 1)
    size = save_compile_cache(str(tmp_path / "cache.bin"))
    assert size and (tmp_path / "cache.bin").stat().st_size == size
    assert load_compile_cache(str(tmp_path / "cache.bin"))


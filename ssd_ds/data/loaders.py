"""Samplers and DataLoaders: a resumable distributed training sampler and exact evaluation sharding.

TrainSampler: each epoch a permutation drawn from (seed, epoch), padded by wrapping to a multiple of the world size
(like torch's DistributedSampler) and dealt out rank by rank; it yields `(index, sample_seed)` pairs so that every
sample's augmentation depends only on (seed, epoch, position), and it can restart at a position within an epoch.
Evaluation shards are contiguous, sizes differ by at most one, and cover every image exactly once (no padding
duplicates, whatever the world size).
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ssd_ds.data.batch import Batch, collate_train
from ssd_ds.errors import LoaderStalled, LoaderWorkerDied, UserError

PREFETCH_FACTOR = 2  # batches each worker keeps ready: enough to hide a slow JPEG, and each one sits in /dev/shm

_SEED_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, epoch, position) over 63 bits


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A per-sample seed for the augmentation RNG, a pure function of the run seed, the epoch and the position."""
    return ((seed * 1_000_003 + epoch) * _SEED_MIX + position) % (2**63 - 1)


class TrainSampler(Sampler):
    """Shuffled per epoch from the seed, sharded over ranks, resumable at a position within the epoch."""

    def __init__(self, num_samples: int, seed: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_samples = num_samples
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.per_rank = math.ceil(num_samples / world_size)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch `epoch` from this rank's `start`-th sample on (a resumed run skips what it already saw)."""
        self.epoch = epoch
        self.start = start

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's indices for an epoch, in order."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_samples, generator=g).tolist()
        total = self.per_rank * self.world_size
        order += order[: total - len(order)]  # wrap-pad so every rank gets the same count
        return order[self.rank : total : self.world_size]

    def __iter__(self):
        indices = self.epoch_indices(self.epoch)
        for position in range(self.start, len(indices)):
            yield indices[position], sample_seed(self.seed, self.epoch, position * self.world_size + self.rank)

    def __len__(self) -> int:
        return self.per_rank - self.start

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start": self.start, "seed": self.seed}


def eval_shard(num_samples: int, rank: int, world_size: int) -> range:
    """Contiguous shard of [0, num_samples) for `rank`: sizes differ by at most one, no index repeats."""
    base, extra = divmod(num_samples, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


class ShardSampler(Sampler):
    """Visits a fixed range of indices in order."""

    def __init__(self, indices: range):
        self.indices = indices

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def collate_eval(batch):
    """Drops unreadable images (None) and reports how many: (images [B,3,S,S], ids [B], sizes [B], skipped)."""
    kept = [s for s in batch if s is not None]
    skipped = len(batch) - len(kept)
    if not kept:
        return None, [], [], skipped
    images = torch.stack([s[0] for s in kept])
    return images, [s[1] for s in kept], [s[2] for s in kept], skipped


def _loader_kwargs(workers: int, pin_memory: bool, timeout: float = 0.0,
                   worker_init_fn: Callable | None = None) -> dict:
    kwargs = {"num_workers": workers, "pin_memory": pin_memory, "persistent_workers": workers > 0}
    if workers > 0:
        kwargs["prefetch_factor"] = PREFETCH_FACTOR
        kwargs["timeout"] = timeout
        kwargs["worker_init_fn"] = worker_init_fn
    return kwargs


def build_train_loader(
    dataset: Dataset, sampler: TrainSampler, batch_size: int, workers: int, pin_memory: bool = False,
    collate_fn: Callable = collate_train, timeout: float = 0.0, worker_init_fn: Callable | None = None,
) -> DataLoader:
    """Full batches (drop_last) of `ssd_ds.data.batch.Batch` (or, with the device input path's collate, of the
    compressed batches the device decodes). `timeout` > 0: seconds to wait for any one batch from the workers
    before the loader raises (`loader_failure` makes that a clear error); 0 waits for ever. `worker_init_fn(id)`
    runs first in each worker (the trainer's: ignore its stop signals)."""
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=True, collate_fn=collate_fn,
        **_loader_kwargs(workers, pin_memory, timeout, worker_init_fn)
    )


def loader_failure(exc: RuntimeError, data: str, timeout: float) -> UserError | None:
    """The one-line error for a DataLoader's worker failure (None for any other RuntimeError): a batch that did not
    come within `timeout`, or a worker that died. torch raises these from `next()` or, for a dead worker, through
    its SIGCHLD handler from wherever the main thread is, so the training loop converts them around the whole epoch.

    Without a timeout a worker that can never deliver leaves the trainer waiting with no error for ever, a wait
    that --dist_timeout does not bound: a file that blocks on read (a hung network file system), or a batch the
    worker cannot hand over (out of file descriptors: "unable to open shared memory object ... (24)")."""
    if "DataLoader timed out" in str(exc):
        return LoaderStalled(
            f"{data}: no training batch from the loader workers in {timeout:g} s (--loader_timeout): a worker is "
            f"stuck reading a file, or cannot pass its batch (too few file descriptors? ulimit -n says how many; too "
            f"little /dev/shm?); the workers' warnings above say which")
    if "DataLoader worker" in str(exc):  # "... (pid(s) N) exited unexpectedly", "... is killed by signal: Killed."
        return LoaderWorkerDied(f"{data}: {exc} (out of memory? dmesg says; fewer --workers or a smaller micro-batch "
                                f"need less)")
    return None


def build_eval_loader(
    dataset: Dataset, rank: int, world_size: int, batch_size: int, workers: int, pin_memory: bool = False,
    worker_init_fn: Callable | None = None,
) -> DataLoader:
    """This rank's shard of the evaluation set, in order, unreadable images dropped."""
    sampler = ShardSampler(eval_shard(len(dataset), rank, world_size))
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_eval,
        **_loader_kwargs(workers, pin_memory, worker_init_fn=worker_init_fn)
    )


class DevicePrefetcher:
    """The `Batch`es of an iterable, already on `device`. On CUDA the next batch is prepared (copied from pinned
    memory, or with the device input path decoded and augmented) on a side stream while the current step computes,
    as NVIDIA's and torchvision's prefetchers do; on other devices when it is taken. `prepare(host batch) -> Batch
    on device` defaults to the copy. Tensors keep their dtype (images stay uint8 until the device normalises them).

    The training loop takes a batch, launches its step, then calls `prefetch()`: the next batch is prepared after
    the step is queued, so that after a host sync (the loss window's, every log_every steps) the device computes the
    step while the host prepares, instead of idling through the preparation. Iterated without `prefetch()`, each
    batch is prepared when it is taken.

    `wait_s` and `prepare_s` accumulate the host seconds spent waiting for the loader workers and preparing (on the
    device path: decode and augmentation launched from this thread), which the trainer logs apart."""

    def __init__(self, batches: Iterable, device: torch.device, prepare: Callable | None = None):
        self.batches = iter(batches)
        self.device = device
        self.prepare = prepare or (lambda batch: batch.to(device, non_blocking=True))
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" and torch.cuda.is_available() else None
        self.wait_s = self.prepare_s = 0.0
        self.ready: Batch | None = None
        self.exhausted = False
        self.prefetch()

    def prefetch(self) -> None:
        """Prepare the next batch now, unless it is ready or the batches are exhausted."""
        if self.ready is not None or self.exhausted:
            return
        t0 = time.perf_counter()
        batch = next(self.batches, None)
        t1 = time.perf_counter()
        self.wait_s += t1 - t0
        if batch is None:
            self.exhausted = True
            return
        if self.stream is None:
            self.ready = self.prepare(batch)
        else:
            with torch.cuda.stream(self.stream):
                self.ready = self.prepare(batch)
        self.prepare_s += time.perf_counter() - t1

    def take_timings(self) -> tuple[float, float]:
        """(seconds waiting for workers, seconds preparing) since the last call."""
        timings = (self.wait_s, self.prepare_s)
        self.wait_s = self.prepare_s = 0.0
        return timings

    def __iter__(self) -> Iterator:
        return self

    def __next__(self) -> Batch:
        self.prefetch()
        batch, self.ready = self.ready, None
        if batch is None:
            raise StopIteration
        if self.stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)
            for t in batch.tensors():  # the side stream's memory is now used on the current stream: keep it
                t.record_stream(current)
        return batch


def shared_memory_needed(batch_bytes: int, workers: int, prefetch_factor: int = PREFETCH_FACTOR) -> int:
    """Bytes of /dev/shm that the loader's ready batches occupy at once: each worker holds `prefetch_factor` batches,
    and the batch being copied to the device is one more."""
    return batch_bytes * (max(workers, 1) * prefetch_factor + 1)


def check_shared_memory(batch_bytes: int, workers: int, shm: str = "/dev/shm") -> str | None:
    """A warning naming the fix when the workers' batches may not fit in `shm` (a container's default is 64 MB: the
    DataLoader then dies of a bus error mid-epoch), else None. Workers pass batches through shared memory."""
    if workers == 0 or not os.path.isdir(shm):
        return None
    need = shared_memory_needed(batch_bytes, workers)
    stats = os.statvfs(shm)
    have = stats.f_bavail * stats.f_frsize
    if need <= have:
        return None
    return (f"{shm} has {have / 2**20:.0f} MiB free but {workers} loader workers x {PREFETCH_FACTOR} prefetched "
            f"batches of {batch_bytes / 2**20:.1f} MiB need about {need / 2**20:.0f} MiB: in Docker pass --ipc=host "
            f"or --shm-size={math.ceil(2 * need / 2**30)}g, or lower --workers or the micro-batch")

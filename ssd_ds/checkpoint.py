"""Atomic DeepSpeed checkpoints with the trainer's client state, and `--resume auto|PATH`.

Layout: `<run_dir>/checkpoints/<tag>/` (DeepSpeed's files) and `<run_dir>/checkpoints/latest` (the tag). A save
writes into `.<tag>.partial/`, then renames it to `<tag>/` and only then replaces `latest` (ssd_ds.fileio.atomic_write):
a kill at any moment leaves `latest` naming a complete checkpoint. Needs a filesystem shared by all ranks (rank 0
renames), as DeepSpeed's own `latest` does.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import torch.distributed as dist

from ssd_ds.distributed import barrier
from ssd_ds.errors import NotFound
from ssd_ds.fileio import atomic_write

LATEST = "latest"


def save(engine, ckpt_dir: Path, tag: str, client_state: dict, keep: int,
         write_beside: Callable[[Path], None] | None = None) -> Path:
    """Save atomically on all ranks (collective); keep the newest `keep` checkpoints. `write_beside(directory)` (rank
    0's) writes more files beside DeepSpeed's, inside the same atomic rename (the trainer's: the inference file,
    `ssd_ds.inference.save_inference`)."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    partial = f".{tag}.partial"
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(ckpt_dir / partial, ignore_errors=True)
    barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=partial, client_state=client_state, save_latest=False)
    barrier()
    if rank == 0:
        if write_beside is not None:
            write_beside(ckpt_dir / partial)
        final = ckpt_dir / tag
        shutil.rmtree(final, ignore_errors=True)
        os.replace(ckpt_dir / partial, final)
        atomic_write(ckpt_dir / LATEST, tag)
        _prune(ckpt_dir, keep)
    barrier()
    return ckpt_dir / tag


def _prune(ckpt_dir: Path, keep: int) -> None:
    """Drop all but the newest `keep` checkpoints, and partial directories left by saves that were killed."""
    for stale in ckpt_dir.glob(".*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
    tags = sorted((p for p in ckpt_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.stat().st_mtime)
    latest = (ckpt_dir / LATEST).read_text().strip()
    for old in tags[: max(0, len(tags) - keep)]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)


def find_resume(resume: str | None, ckpt_dir: Path) -> tuple[Path, str] | None:
    """(directory, tag) to resume from: "auto" = `latest` in the run's checkpoint dir if any; a path = that tag dir."""
    if resume is None:
        return None
    if resume == "auto":
        latest = ckpt_dir / LATEST
        if not latest.is_file():
            return None
        tag = latest.read_text().strip()
        if not (ckpt_dir / tag).is_dir():
            raise NotFound(f"{latest}: names checkpoint {tag!r}, which is not in {ckpt_dir}")
        return ckpt_dir, tag
    path = Path(resume)
    if not path.is_dir():
        raise NotFound(f"{path}: checkpoint directory not found")
    return path.parent, path.name


def load(engine, where: tuple[Path, str]) -> dict:
    """Load model, optimizer and LR scheduler into the engine; return the client state."""
    load_path, client_state = engine.load_checkpoint(str(where[0]), tag=where[1])
    if load_path is None:
        raise RuntimeError(f"{where[0] / where[1]}: DeepSpeed could not load this checkpoint")
    return client_state

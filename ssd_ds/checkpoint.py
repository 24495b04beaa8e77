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

import torch
import torch.distributed as dist

from ssd_ds.distributed import barrier
from ssd_ds.errors import BadInput, NotFound
from ssd_ds.fileio import atomic_write

LATEST = "latest"
INFERENCE_FILE = "model.pt"  # what inference needs, readable without DeepSpeed: torch.load(weights_only=True)


def save(engine, ckpt_dir: Path, tag: str, client_state: dict, keep: int, inference: dict | None = None) -> Path:
    """Save atomically on all ranks (collective); keep the newest `keep` checkpoints. `inference` (rank 0's) is
    written beside DeepSpeed's files as `model.pt` (see `inference_state`), inside the same atomic rename."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    partial = f".{tag}.partial"
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(ckpt_dir / partial, ignore_errors=True)
    barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=partial, client_state=client_state, save_latest=False)
    barrier()
    if rank == 0:
        if inference is not None:
            torch.save(inference, ckpt_dir / partial / INFERENCE_FILE)
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


def inference_state(model: torch.nn.Module, model_name: str, input_size: int, class_names: list[str],
                    label_to_category: dict[int, int], autocast: torch.dtype | None) -> dict:
    """Everything `ssd_ds.predict`, `ssd_ds.evaluate` and `ssd_ds.export` need, as plain data and CPU tensors: the
    model preset and input size, class names (index = label, 0 = background), the label -> COCO category id map,
    the evaluation precision, and the weights."""
    return {"format": 1, "model": model_name, "input_size": input_size, "class_names": list(class_names),
            "label_to_category": {int(k): int(v) for k, v in label_to_category.items()},
            "autocast": None if autocast is None else str(autocast).removeprefix("torch."),
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}}


def find_inference_file(path: str | Path) -> Path:
    """`model.pt` from a path to it, to a checkpoint directory, or to a run directory (its latest checkpoint)."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / INFERENCE_FILE).is_file():
        return path / INFERENCE_FILE
    if (path / "checkpoints" / LATEST).is_file():
        return find_inference_file(path / "checkpoints" / (path / "checkpoints" / LATEST).read_text().strip())
    raise NotFound(f"{path}: no {INFERENCE_FILE} there (a checkpoint file, a checkpoint directory or a run "
                   f"directory with checkpoints/latest)")


def load_inference(path: str | Path, device: torch.device | str = "cpu"):
    """(the model in eval mode on `device`, the inference state without its weights) from `find_inference_file`."""
    from ssd_ds.model import build_model
    from ssd_ds.model_config import build_model_config

    file = find_inference_file(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file: all mean the same to the user
        raise BadInput(f"{file}: cannot be read as an ssd_ds model checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != 1:
        raise BadInput(f"{file}: not an ssd_ds model checkpoint (no format 1 header)")
    model_cfg = build_model_config(state["model"], num_classes=len(state["class_names"]))
    if model_cfg.input_size != state["input_size"]:
        raise BadInput(f"{file}: model {state['model']!r} takes {model_cfg.input_size}px inputs, the checkpoint "
                       f"says {state['input_size']}")
    model = build_model(model_cfg)
    try:
        model.load_state_dict(state.pop("state_dict"))
    except RuntimeError as exc:
        raise BadInput(f"{file}: weights do not fit model preset {state['model']!r} "
                       f"({str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), state

"""The run directory: one run per directory, a resumed run a new segment of its run.

`<run_dir>/` holds `config.json` (the resolved run config), `mlperf.log` (and `mlperf.segment<k>.log` per resumed
segment), `metrics.jsonl`, `tensorboard/`, `eval/` (detections and COCOeval results) and `checkpoints/`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from mlperf_logging.mllog import constants as mllog_keys

from ssd_ds import checkpoint
from ssd_ds.distributed import barrier, broadcast_from_rank0
from ssd_ds.errors import BadInput
from ssd_ds.mlperf_log import CHECKER_LOG, JOINED_NAME, LOG_NAME, log_records
from ssd_ds.run_config import RunConfig

log = logging.getLogger(__name__)


def holds_a_run(run_dir: Path) -> list[str]:
    """The traces of a previous run that trained in `run_dir` (none when it is new, or when an earlier start failed
    before training, e.g. on a bad config: such leftovers are overwritten)."""
    found = []
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        found.append("checkpoints")
    log_file = run_dir / LOG_NAME
    if log_file.is_file() and any(r["key"] == mllog_keys.RUN_START for r in log_records(log_file)):
        found.append(LOG_NAME)
    if (run_dir / "metrics.jsonl").is_file() and (run_dir / "metrics.jsonl").stat().st_size > 0:
        found.append("metrics.jsonl")
    return found


def choose_run_dir(cfg: RunConfig) -> tuple[str, str | None]:
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
        for name in (*found, "tensorboard", "eval", JOINED_NAME, CHECKER_LOG,
                     *(p.name for p in run_dir.glob("mlperf.segment*.log"))):
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


def open_run_dir(cfg: RunConfig, rank: int) -> tuple[Path, tuple[Path, str] | None]:
    """(the run directory, the checkpoint to resume from or None), the same on every rank. Rank 0 decides, so that
    every rank writes to the same place and fails with the same message, and saves the resolved config there, its
    run_dir the chosen directory. `cfg` is left as given: a caller that keeps the config uses the returned path."""
    chosen, error = broadcast_from_rank0(choose_run_dir(cfg) if rank == 0 else None)
    if error:
        raise BadInput(error)
    run_dir = Path(chosen)
    resume_from = checkpoint.find_resume(cfg.resume, run_dir / "checkpoints")
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        dataclasses.replace(cfg, run_dir=chosen).save(run_dir / "config.json")
    barrier()
    return run_dir, resume_from

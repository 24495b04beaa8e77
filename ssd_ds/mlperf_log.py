"""MLPerf logging through `mlperf_logging.mllog` (SPEC section 8), rank 0 only.

Lines go to `<run_dir>/mlperf.log` (one `:::MLLOG {...}` JSON per line, flushed as written) and to stdout.
`python -m mlperf_logging.compliance_checker --usage training --ruleset 0.7.0 <run_dir>/mlperf.log` checks them.

A resumed run is a new segment of the same run: it never appends to `mlperf.log` (whose init block, submission keys
and run_start must each occur once) but writes `mlperf.segment<k>.log` (k = 2, 3, ...), plainly marked as a
continuation: a first comment line and a `ssd_ds_resumed_from` record (checkpoint, epoch, iteration) instead of the
init block and submission keys, so the checker can never take it for a complete run. Then run_start, the epochs,
evaluations and run_stop as usual. `python -m ssd_ds.mlperf_log <run_dir>/mlperf.log` adds up the segments: each
from its run_start to its run_stop, or to its last record when it was killed.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

from mlperf_logging.mllog import constants as keys
from mlperf_logging.mllog import mllog

from ssd_ds.errors import BadInput, NotFound

BENCHMARK = keys.SSD
ORG = "ssd_ds"
LOG_NAME = "mlperf.log"
RESUMED_FROM = "ssd_ds_resumed_from"  # the first record of a continuation segment (not an MLPerf key)
_SEGMENT = re.compile(r"mlperf\.segment(\d+)\.log")


def segment_logs(first: Path) -> list[Path]:
    """A run's logs in order: `first` (mlperf.log) and the `mlperf.segment<k>.log` of its resumed segments."""
    first = Path(first)
    numbered = sorted((int(m[1]), p) for p in first.parent.glob("mlperf.segment*.log")
                      if (m := _SEGMENT.fullmatch(p.name)))
    return [first] + [p for _, p in numbered]


def next_segment_log(run_dir: Path) -> Path:
    """Where a resumed segment logs: the first free `mlperf.segment<k>.log`, k >= 2."""
    k = 2
    while (Path(run_dir) / f"mlperf.segment{k}.log").exists():
        k += 1
    return Path(run_dir) / f"mlperf.segment{k}.log"


class MLPerfLogger:
    """Thin wrapper over mllog.MLLogger that is a no-op on ranks other than 0."""

    def __init__(self, path: Path | None, enabled: bool = True, echo: bool = False, header: str | None = None,
                 mode: str = "a"):
        """`header`: a comment line written first (a continuation segment says what it continues); `mode` "w"
        starts the file afresh."""
        self.enabled = enabled and path is not None
        self.path = path
        if not self.enabled:
            return
        with open(path, mode) as f:
            if header is not None:
                f.write(f"# {header}\n")
        logger = logging.getLogger(f"ssd_ds.mllog.{path}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.handlers.clear()
        handler = logging.FileHandler(path, mode="a")
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        if echo:
            logger.addHandler(logging.StreamHandler())
        self._logger = logger
        # default_stack_offset 3: the reported file/line is the trainer's call site, not this wrapper's two levels.
        self._mllog = mllog.MLLogger(logger=logger, default_stack_offset=3)

    def _event(self, key: str, value=None, metadata: dict | None = None) -> None:
        if self.enabled:
            self._mllog.event(key=key, value=value, metadata=metadata)

    def _start(self, key: str, value=None, metadata: dict | None = None) -> None:
        if self.enabled:
            self._mllog.start(key=key, value=value, metadata=metadata)

    def _end(self, key: str, value=None, metadata: dict | None = None) -> None:
        if self.enabled:
            self._mllog.end(key=key, value=value, metadata=metadata)

    def close(self) -> None:
        if self.enabled:
            for handler in self._logger.handlers:
                handler.close()
            self._logger.handlers.clear()

    # One method per phase of the run, in the order they come (SPEC section 8).

    def init_start(self, division: str, platform: str) -> None:
        """init_start, the submission keys and cache_clear: a first segment's opening."""
        self._start(keys.INIT_START)
        self._event(keys.SUBMISSION_BENCHMARK, BENCHMARK)
        self._event(keys.SUBMISSION_ORG, ORG)
        self._event(keys.SUBMISSION_DIVISION, division)
        self._event(keys.SUBMISSION_STATUS, "research")
        self._event(keys.SUBMISSION_PLATFORM, platform)
        self._event(keys.CACHE_CLEAR, True)

    def hyperparameters(
        self,
        seed: int,
        bn_span: int,
        global_batch: int,
        base_lr: float,
        decay_epochs: tuple[int, ...],
        weight_decay: float,
        warmup_iters: int,
        warmup_factor: float,
    ) -> None:
        """The SPEC section 8 hyperparameter keys, between init_start and init_stop."""
        self._event(keys.SEED, seed)
        self._event(keys.MODEL_BN_SPAN, bn_span)
        self._event(keys.GLOBAL_BATCH_SIZE, global_batch)
        self._event(keys.OPT_BASE_LR, base_lr)
        self._event(keys.OPT_LR_DECAY_BOUNDARY_EPOCHS, list(decay_epochs))
        self._event(keys.OPT_WEIGHT_DECAY, weight_decay)
        self._event(keys.OPT_LR_WARMUP_STEPS, warmup_iters)
        self._event(keys.OPT_LR_WARMUP_FACTOR, warmup_factor)

    def init_stop(self, train_samples: int, eval_samples: int, max_samples: int) -> None:
        """The data set sizes and the crop's max_samples, then init_stop (after `hyperparameters`)."""
        self._event(keys.TRAIN_SAMPLES, train_samples)
        self._event(keys.MAX_SAMPLES, max_samples)
        self._event(keys.EVAL_SAMPLES, eval_samples)
        self._end(keys.INIT_STOP)

    def resumed(self, checkpoint: Path, epoch: int, iteration: int) -> None:
        """A continuation segment's first record: the checkpoint it resumed from and where that was."""
        self._event(RESUMED_FROM, str(checkpoint), metadata={"epoch": epoch, "iteration": iteration})

    def run_start(self) -> None:
        self._start(keys.RUN_START)

    def epoch_start(self, epoch: int, block_length: int | None = None) -> None:
        """epoch_start; and block_start when `epoch` opens a block of `block_length` epochs ending in an evaluation."""
        self._start(keys.EPOCH_START, metadata={"epoch_num": epoch})
        if block_length is not None:
            self._start(keys.BLOCK_START, metadata={"first_epoch_num": epoch, "epoch_count": block_length})

    def epoch_stop(self, epoch: int) -> None:
        self._end(keys.EPOCH_STOP, metadata={"epoch_num": epoch})

    def eval_start(self, epoch: int) -> None:
        self._start(keys.EVAL_START, metadata={"epoch_num": epoch})

    def block_stop(self, first_epoch: int) -> None:
        self._end(keys.BLOCK_STOP, metadata={"first_epoch_num": first_epoch})

    def eval_result(self, epoch: int, ap: float) -> None:
        """eval_accuracy and eval_stop, when the background COCOeval of `epoch` is picked up."""
        self._event(keys.EVAL_ACCURACY, ap, metadata={"epoch_num": epoch})
        self._end(keys.EVAL_STOP, metadata={"epoch_num": epoch})

    def run_stop(self, success: bool) -> None:
        self._end(keys.RUN_STOP, metadata={"status": "success" if success else "aborted"})


def open_run_log(run_dir: Path, resumed_from: Path | None, enabled: bool, division: str,
                 platform: str) -> MLPerfLogger:
    """The log of this segment of the run in `run_dir`: a fresh `mlperf.log` opened with init_start, the submission
    keys and cache_clear (a start that failed earlier is overwritten), or for a run resumed from the checkpoint
    `resumed_from` the next continuation segment (module docstring)."""
    if resumed_from is None:
        mlperf = MLPerfLogger(Path(run_dir) / LOG_NAME, enabled=enabled, mode="w")
        mlperf.init_start(division, platform)
        return mlperf
    return MLPerfLogger(next_segment_log(run_dir), enabled=enabled, header=(
        f"continuation of {LOG_NAME} in this directory, resumed from checkpoint {resumed_from}: not a complete "
        f"MLPerf log (python -m ssd_ds.mlperf_log {Path(run_dir) / LOG_NAME} adds up the segments)"))


def log_records(path: Path) -> list[dict]:
    """The `:::MLLOG` records of a log; a line that is not JSON is an error naming the file and line."""
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="latin-1").splitlines(), start=1):
        if ":::MLLOG" in line:
            try:
                records.append(json.loads(line.split(":::MLLOG", 1)[1]))
            except json.JSONDecodeError as exc:
                raise BadInput(f"{path}:{number}: not an MLPerf log record ({exc})") from None
    return records


def segment_time(path: Path) -> tuple[float, str]:
    """(seconds, status) of one segment: run_start to run_stop, or to its last record with status "interrupted"
    when the segment was killed; a clear error when it never reached run_start."""
    records = log_records(path)
    starts = [r for r in records if r["key"] == keys.RUN_START]
    if not starts:
        raise BadInput(f"{path}: no {keys.RUN_START} record (the segment did not start training)")
    stops = [r for r in records if r["key"] == keys.RUN_STOP]
    end = stops[-1] if stops else records[-1]
    status = stops[-1]["metadata"].get("status", "unknown") if stops else "interrupted"
    return (end["time_ms"] - starts[0]["time_ms"]) / 1000, status


def time_across_segments(first: Path) -> tuple[float, str, list[tuple[Path, float, str]]]:
    """(total seconds, the last segment's status, per segment (log, seconds, status)) of a run and its resumed
    segments. A single log must have finished (time_to_train's error otherwise)."""
    logs = segment_logs(first)
    if len(logs) == 1:
        seconds, status = time_to_train(logs[0])
        return seconds, status, [(logs[0], seconds, status)]
    rows = [(log, *segment_time(log)) for log in logs]
    return sum(r[1] for r in rows), rows[-1][2], rows


def time_to_train(path: Path) -> tuple[float, str]:
    """(seconds from run_start to run_stop, run_stop status) of an MLPerf log; a clear error when either is missing."""
    events = {r["key"]: r for r in log_records(path) if r["key"] in (keys.RUN_START, keys.RUN_STOP)}
    for key in (keys.RUN_START, keys.RUN_STOP):
        if key not in events:
            raise BadInput(f"{path}: no {key} record (the run did not start or did not finish)")
    seconds = (events[keys.RUN_STOP]["time_ms"] - events[keys.RUN_START]["time_ms"]) / 1000
    return seconds, events[keys.RUN_STOP]["metadata"].get("status", "unknown")


def main(argv: list[str] | None = None) -> None:
    """`python -m ssd_ds.mlperf_log LOG`: print the time to train, as run_and_time.sh reports it (summed over the
    resumed segments beside LOG, if any)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("log", type=Path)
    args = parser.parse_args(argv)
    if not args.log.is_file():
        raise NotFound(f"{args.log}: MLPerf log not found")
    seconds, status, rows = time_across_segments(args.log)
    print(f"RESULT,SSD,{seconds:.1f},{status}")
    if len(rows) > 1:
        for log, s, st in rows:
            print(f"  segment {log.name}: {s:.1f} s ({st})")
        print(f"time to train: {seconds / 60:.2f} min over {len(rows)} segments ({status}); a resumed run is not a "
              "valid MLPerf result")
    else:
        print(f"time to train: {seconds / 60:.2f} min ({status})")


if __name__ == "__main__":
    from ssd_ds.cli import run_cli

    run_cli(main)

"""MLPerf logging through `mlperf_logging.mllog` (SPEC section 8), rank 0 only.

Lines go to `<run_dir>/mlperf.log` (one `:::MLLOG {...}` JSON per line, flushed as written) and to stdout.
`python -m mlperf_logging.compliance_checker --usage training --ruleset 0.7.0 <run_dir>/mlperf.log` checks them.

A resumed run is a new segment of the same run: it never appends to `mlperf.log` (whose init block, submission keys
and run_start must each occur once) but writes `mlperf.segment<k>.log` (k = 2, 3, ...), plainly marked as a
continuation: a first comment line and a `ssd_ds_resumed_from` record (checkpoint, epoch, iteration) instead of the
init block and submission keys, so the checker can never take it for a complete run. Then run_start, the epochs,
evaluations and run_stop as usual. A segment stopped on a signal (ssd_ds.preemption) ends with a `ssd_ds_preempted`
record (the signal, the checkpoint saved, epoch and iteration) instead of run_stop: the run is not over.
`python -m ssd_ds.mlperf_log <run_dir>/mlperf.log` adds up the segments: each from its run_start to its run_stop, or
to its last record when it was stopped or killed.

At the end of a run the trainer checks its log with the MLPerf 0.7.0 compliance checker (`check_run`): a resumed
run's segments joined into one log (`mlperf.joined.log`: the first segment's init block and run_start, every
segment's epochs and evaluations, the last segment's run_stop) so that the whole run is checked, as one log.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

from mlperf_logging.mllog import constants as keys
from mlperf_logging.mllog import mllog

from ssd_ds.errors import BadInput, NotFound
from ssd_ds.fileio import atomic_write

BENCHMARK = keys.SSD
ORG = "ssd_ds"
LOG_NAME = "mlperf.log"
RESUMED_FROM = "ssd_ds_resumed_from"  # the first record of a continuation segment (not an MLPerf key)
PREEMPTED = "ssd_ds_preempted"  # the last record of a segment stopped on a signal, instead of run_stop (ditto)
JOINED_NAME = "mlperf.joined.log"
CHECKER_LOG = "compliance_checker.log"
CHECKER_RULESET = "0.7.0"
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

    def preempted(self, signal_name: str, checkpoint: Path, epoch: int, iteration: int) -> None:
        """The end of a segment stopped on a signal, in place of run_stop: a resumed segment continues the run."""
        self._event(PREEMPTED, signal_name, metadata={"checkpoint": str(checkpoint), "epoch": epoch,
                                                      "iteration": iteration})


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
    """(seconds, status) of one segment: run_start to run_stop, or to its last record with status "preempted" when
    it stopped on a signal, "interrupted" when it was killed; a clear error when it never reached run_start."""
    records = log_records(path)
    starts = [r for r in records if r["key"] == keys.RUN_START]
    if not starts:
        raise BadInput(f"{path}: no {keys.RUN_START} record (the segment did not start training)")
    stops = [r for r in records if r["key"] == keys.RUN_STOP]
    end = stops[-1] if stops else records[-1]
    status = stops[-1]["metadata"].get("status", "unknown") if stops else \
        "preempted" if records[-1]["key"] == PREEMPTED else "interrupted"
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


def result_lines(first: Path) -> list[str]:
    """The `RESULT,SSD,<seconds>,<status>` line and the time to train, summed over the resumed segments beside
    `first`, if any, each segment's time listed."""
    seconds, status, rows = time_across_segments(first)
    lines = [f"RESULT,SSD,{seconds:.1f},{status}"]
    if len(rows) > 1:
        lines += [f"  segment {log.name}: {s:.1f} s ({st})" for log, s, st in rows]
        lines.append(f"time to train: {seconds / 60:.2f} min over {len(rows)} segments ({status}); a resumed run is "
                     "not a valid MLPerf result")
    else:
        lines.append(f"time to train: {seconds / 60:.2f} min ({status})")
    return lines


def join_segments(first: Path, out: Path) -> Path:
    """The run's segments as one log at `out`, for the compliance checker: the first segment's records, then each
    later segment's after its run_start, with every end but the last (run_stop, `ssd_ds_preempted`) left out, and no
    `ssd_ds_resumed_from` records. The segments' own logs stay as they are."""
    logs = segment_logs(first)
    lines = [f"# {len(logs)} segments of {Path(first).name} joined for the compliance check (python -m "
             f"ssd_ds.mlperf_log); the time between them is not training time"]
    for k, log in enumerate(logs):
        last = k == len(logs) - 1
        started = k == 0
        for line in Path(log).read_text(encoding="latin-1").splitlines():
            if ":::MLLOG" not in line:
                continue
            key = json.loads(line.split(":::MLLOG", 1)[1])["key"]
            if key == keys.RUN_START and not started:
                started = True
                continue
            if not started or key in (RESUMED_FROM, PREEMPTED) or (key == keys.RUN_STOP and not last):
                continue
            lines.append(line)
    atomic_write(out, "\n".join(lines) + "\n")
    return out


def check_run(first: Path) -> tuple[bool, list[str]]:
    """(passed, findings) of the MLPerf 0.7.0 compliance checker on a finished run's log: `first` itself, or for a
    resumed run its segments joined (`join_segments`, written beside it). The checker's own log goes to
    `compliance_checker.log` beside it. Findings: the rules files applied and every warning or error."""
    first = Path(first)
    target = first if len(segment_logs(first)) == 1 else join_segments(first, first.with_name(JOINED_NAME))
    try:
        proc = subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage", "training",
                               "--ruleset", CHECKER_RULESET, "--log_output", str(first.with_name(CHECKER_LOG)),
                               str(target)], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, [f"the checker did not run: {exc}"]
    output = (proc.stdout + proc.stderr).splitlines()
    rules = [line.rsplit("/", 1)[-1] for line in output if "Compliance checks:" in line]
    findings = [line.strip() for line in output
                if line.startswith(("WARNING", "ERROR", "Traceback")) and line.strip() != "ERROR - FAILED"]
    if proc.returncode != 0 and not findings:
        findings = [line.strip() for line in output[-5:]]
    return proc.returncode == 0, [f"rules {', '.join(rules) or 'none applied'}", *findings]


def report(first: Path) -> list[str]:
    """What the trainer prints at the end of a run: the compliance checker's verdict on the whole log, and the
    RESULT line (a resumed run: its segments' sum)."""
    passed, findings = check_run(first)
    joined = len(segment_logs(first)) > 1
    what = f"{Path(first).with_name(JOINED_NAME)} (its segments joined)" if joined else str(first)
    verdict = "passed" if passed else "FAILED (a warning: the run's exit code does not change)"
    lines = [f"MLPerf {CHECKER_RULESET} compliance check of {what}: {verdict}; {findings[0]}",
             *(f"  {f}" for f in findings[1:])]
    return lines + result_lines(first)


def main(argv: list[str] | None = None) -> None:
    """`python -m ssd_ds.mlperf_log LOG [--check]`: print the time to train, as run_and_time.sh reports it (summed
    over the resumed segments beside LOG, if any); with --check, first the compliance checker's verdict on the whole
    run, as the trainer prints it at the end of a run."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("log", type=Path)
    parser.add_argument("--check", action="store_true", help="run the MLPerf 0.7.0 compliance checker first")
    args = parser.parse_args(argv)
    if not args.log.is_file():
        raise NotFound(f"{args.log}: MLPerf log not found")
    print("\n".join(report(args.log) if args.check else result_lines(args.log)))


if __name__ == "__main__":
    from ssd_ds.cli import run_cli

    run_cli(main)

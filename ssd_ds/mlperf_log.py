"""MLPerf logging through `mlperf_logging.mllog` (SPEC section 8), rank 0 only.

Lines go to `<run_dir>/mlperf.log` (one `:::MLLOG {...}` JSON per line, flushed as written) and to stdout.
`python -m mlperf_logging.compliance_checker --usage training --ruleset 0.7.0 <run_dir>/mlperf.log` checks them.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from mlperf_logging.mllog import mllog
from mlperf_logging.mllog import constants as K

BENCHMARK = K.SSD
ORG = "ssd_ds"
CROP_MAX_SAMPLES = 1  # SPEC section 5: one crop candidate per draw (logged as max_samples)


class MLPerfLogger:
    """Thin wrapper over mllog.MLLogger that is a no-op on ranks other than 0."""

    def __init__(self, path: Path | None, enabled: bool = True, echo: bool = False):
        self.enabled = enabled and path is not None
        self.path = path
        if not self.enabled:
            return
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
        # default_stack_offset 2: the reported file/line is the trainer's call site, not this wrapper.
        self._mllog = mllog.MLLogger(logger=logger, default_stack_offset=2)

    def event(self, key: str, value=None, metadata: dict | None = None) -> None:
        if self.enabled:
            self._mllog.event(key=key, value=value, metadata=metadata)

    def start(self, key: str, value=None, metadata: dict | None = None) -> None:
        if self.enabled:
            self._mllog.start(key=key, value=value, metadata=metadata)

    def end(self, key: str, value=None, metadata: dict | None = None) -> None:
        if self.enabled:
            self._mllog.end(key=key, value=value, metadata=metadata)

    def close(self) -> None:
        if self.enabled:
            for handler in self._logger.handlers:
                handler.close()
            self._logger.handlers.clear()

    def submission(self, division: str, platform: str) -> None:
        self.event(K.SUBMISSION_BENCHMARK, BENCHMARK)
        self.event(K.SUBMISSION_ORG, ORG)
        self.event(K.SUBMISSION_DIVISION, division)
        self.event(K.SUBMISSION_STATUS, "research")
        self.event(K.SUBMISSION_PLATFORM, platform)

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
        self.event(K.SEED, seed)
        self.event(K.MODEL_BN_SPAN, bn_span)
        self.event(K.GLOBAL_BATCH_SIZE, global_batch)
        self.event(K.OPT_BASE_LR, base_lr)
        self.event(K.OPT_LR_DECAY_BOUNDARY_EPOCHS, list(decay_epochs))
        self.event(K.OPT_WEIGHT_DECAY, weight_decay)
        self.event(K.OPT_LR_WARMUP_STEPS, warmup_iters)
        self.event(K.OPT_LR_WARMUP_FACTOR, warmup_factor)


def time_to_train(path: Path) -> tuple[float, str]:
    """(seconds from run_start to run_stop, run_stop status) of an MLPerf log; a clear error when either is missing."""
    events = {}
    for line in Path(path).read_text(encoding="latin-1").splitlines():
        if ":::MLLOG" not in line:
            continue
        record = json.loads(line.split(":::MLLOG", 1)[1])
        if record["key"] in (K.RUN_START, K.RUN_STOP):
            events[record["key"]] = record
    for key in (K.RUN_START, K.RUN_STOP):
        if key not in events:
            raise ValueError(f"{path}: no {key} record (the run did not start or did not finish)")
    seconds = (events[K.RUN_STOP]["time_ms"] - events[K.RUN_START]["time_ms"]) / 1000
    return seconds, events[K.RUN_STOP]["metadata"].get("status", "unknown")


def main(argv: list[str] | None = None) -> None:
    """`python -m ssd_ds.mlperf_log LOG`: print the time to train, as run_and_time.sh reports it."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("log", type=Path)
    args = parser.parse_args(argv)
    seconds, status = time_to_train(args.log)
    print(f"RESULT,SSD,{seconds:.1f},{status}")
    print(f"time to train: {seconds / 60:.2f} min ({status})")


if __name__ == "__main__":
    main()

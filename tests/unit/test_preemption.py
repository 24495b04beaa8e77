"""Stop signals on their own: names, the handler (one signal acted on, later ones ignored, a watchdog), what a
resumed run's epoch looks like on another world size, the refusal of a resume that cannot keep the global batch,
and the MLPerf segments of a stopped run joined for the checker."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ssd_ds.data.loaders import TrainSampler
from ssd_ds.errors import BadInput
from ssd_ds.mlperf_log import MLPerfLogger, join_segments, log_records, segment_time
from ssd_ds.preemption import PREEMPTED_EXIT, StopSignals, signal_number
from ssd_ds.train import check_resume_batch
from tests.helpers import REPO, env


def test_signal_names():
    assert signal_number("SIGTERM") == signal_number("term") == signal_number("15") == signal.SIGTERM
    assert signal_number("USR1") == signal.SIGUSR1
    for bad in ("SIGKILL", "STOP", "SIGNOPE", "999"):
        with pytest.raises(ValueError, match="signal"):
            signal_number(bad)


def test_the_first_signal_is_noted_and_later_ones_ignored():
    signals = StopSignals(("SIGUSR1", "SIGUSR2"), timeout=60).install()
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)  # Python runs handlers between bytecodes
        assert signals.received == signal.SIGUSR2 and signals.name == "SIGUSR2" and signals.ignored == 2
        assert not signals.agreed  # the loop's to decide, with the other ranks
    finally:
        signals._watchdog.cancel()
        signals.uninstall()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_the_watchdog_exits_75_when_the_stop_does_not_finish():
    code = textwrap.dedent("""
        import os, signal, time
        from ssd_ds.preemption import StopSignals
        StopSignals(("SIGTERM",), timeout=1).install()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)  # a save that hangs
    """)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == PREEMPTED_EXIT, proc.stderr
    assert time.monotonic() - start < 30
    assert "no clean stop within 1 s of SIGTERM (--stop_timeout)" in proc.stderr


def rest_of_epoch(num_samples, world, micro, accumulation, iterations_done, epoch=3):
    """Each remaining iteration's global batch as a set of (index, sample seed), over all ranks, as the trainer deals
    it when resuming mid-epoch (TrainData.batches)."""
    per_rank = []
    for rank in range(world):
        sampler = TrainSampler(num_samples, seed=7, rank=rank, world_size=world)
        sampler.set_epoch(epoch, start=iterations_done * accumulation * micro)
        per_rank.append(list(sampler))
    iterations = min(len(s) for s in per_rank) // (micro * accumulation)
    step = micro * accumulation
    return [{s for samples in per_rank for s in samples[i * step:(i + 1) * step]} for i in range(iterations)]


@pytest.mark.parametrize(("before", "after"), [((2, 4, 1), (1, 4, 2)), ((1, 4, 2), (2, 4, 1)), ((4, 2, 1), (2, 2, 2))])
def test_the_rest_of_an_epoch_dealt_on_another_world_size_keeps_every_global_batch(before, after):
    """The same global batch on another world size: every remaining global batch holds the same samples with the
    same augmentation seeds; none is repeated or lost."""
    for done in (0, 1, 3):
        kept = rest_of_epoch(48, *before, done)
        dealt = rest_of_epoch(48, *after, done)
        assert dealt == kept and len(kept) == 6 - done
        seen = [s for batch in dealt for s in batch]
        assert len(seen) == len(set(seen))


BATCH = dict(world_size=2, micro_batch=4, accumulation=1, global_batch=8, iters_per_epoch=5)


def test_a_resume_on_another_world_size_is_checked(tmp_path, caplog):
    check_resume_batch(None, BATCH, {}, tmp_path, "ds.json")  # an older checkpoint: nothing to compare
    check_resume_batch(BATCH, BATCH, {}, tmp_path, "ds.json")
    one = dict(BATCH, world_size=1, accumulation=2)
    check_resume_batch(BATCH, one, {}, tmp_path, "ds.json")  # the global batch kept through accumulation
    assert "resuming a run saved on world size 2 on 1: the same global batch 8" in caplog.text
    with pytest.raises(BadInput, match=r"saved on world size 2 at global batch 8 \(micro-batch 4 x accumulation 1\), "
                                       r"this run has world size 1 and global batch 4 \(ds.json\); resume with a "
                                       r"--deepspeed_config of train_micro_batch_size_per_gpu 4 and "
                                       r"gradient_accumulation_steps 2"):
        check_resume_batch(BATCH, dict(BATCH, world_size=1, global_batch=4), {}, tmp_path, "ds.json")
    with pytest.raises(BadInput, match="world size 3 does not divide it"):
        check_resume_batch(BATCH, dict(BATCH, world_size=3, global_batch=12), {}, tmp_path, "ds.json")
    with pytest.raises(BadInput, match="pads the epoch to 6"):
        check_resume_batch(BATCH, dict(one, iters_per_epoch=6), {}, tmp_path, "ds.json")
    with pytest.raises(BadInput, match="ZeRO"):
        check_resume_batch(BATCH, one, {"zero_optimization": {"stage": 1}}, tmp_path, "ds.json")


def write_segment(path: Path, header, body):
    log = MLPerfLogger(path, header=header, mode="w")
    body(log)
    log.close()


def test_a_stopped_segment_and_its_continuation_join_into_one_log(tmp_path):
    def first(log):
        log.init_start("open", "cpu")
        log.run_start()
        log.epoch_start(1, 1)
        log.preempted("SIGTERM", tmp_path / "checkpoints" / "epoch000_iter0000003", 0, 3)

    def second(log):
        log.resumed(tmp_path / "checkpoints" / "epoch000_iter0000003", 0, 3)
        log.run_start()
        log.epoch_stop(1)
        log.eval_start(1)
        log.eval_result(1, 0.3)
        log.run_stop(True)

    write_segment(tmp_path / "mlperf.log", None, first)
    write_segment(tmp_path / "mlperf.segment2.log", "continuation", second)
    assert segment_time(tmp_path / "mlperf.log")[1] == "preempted"
    joined = join_segments(tmp_path / "mlperf.log", tmp_path / "mlperf.joined.log")
    assert [r["key"] for r in log_records(joined)] == [
        "init_start", "submission_benchmark", "submission_org", "submission_division", "submission_status",
        "submission_platform", "cache_clear", "run_start", "epoch_start", "block_start", "epoch_stop", "eval_start",
        "eval_accuracy", "eval_stop", "run_stop"]


CHILD_DEAF_TO_SIGTERM = """
import multiprocessing as mp, signal, sys, time
from ssd_ds.preemption import ignore_signals, kill_children_at_exit

def child():
    ignore_signals((signal.SIGTERM, signal.SIGUSR1))
    time.sleep(60)

def child_died(number, frame):  # as torch's DataLoader handler does when one of its workers dies
    raise RuntimeError("a worker died")

if __name__ == "__main__":
    if sys.argv[1] == "kill":
        kill_children_at_exit()
    signal.signal(signal.SIGCHLD, child_died)
    for _ in range(2):  # two, as a trainer has (its train and val loaders' workers)
        mp.get_context("fork").Process(target=child, daemon=True).start()
    time.sleep(0.5)
"""


@pytest.mark.parametrize("kill", [True, False])
def test_the_trainer_exits_although_its_children_ignore_sigterm(kill, tmp_path):
    """A daemonic child that ignores SIGTERM (a loader worker of a trainer with stop signals) would hang the exit:
    multiprocessing's exit hook terminates daemonic children with SIGTERM, then joins them. kill_children_at_exit
    kills them first, all of them although a SIGCHLD handler raises at the first death (torch's DataLoader has
    one); without it the exit waits (shown by the timeout)."""
    script = tmp_path / "deaf_child.py"
    script.write_text(CHILD_DEAF_TO_SIGTERM)
    cmd = [sys.executable, str(script), "kill" if kill else "wait"]
    if kill:
        proc = subprocess.run(cmd, env=env(), timeout=15, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    else:
        with pytest.raises(subprocess.TimeoutExpired):
            subprocess.run(cmd, env=env(), timeout=5, capture_output=True)

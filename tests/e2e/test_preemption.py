"""A stop signal (a cluster's preemption warning): the run saves where it is, exits 75, and a resumed run goes on
exactly; on several ranks one rank's signal stops all of them at the same iteration; a resume on another world size
keeps the global batch or is refused. Each stop is a real signal the trainer sends itself at a chosen point
(tests/e2e/signal_at.py), so that it lands where the test means it to."""

import json
import subprocess
import sys
import time

import pytest
import torch

from ssd_ds.mlperf_log import log_records
from ssd_ds.preemption import PREEMPTED_EXIT
from tests.helpers import REPO, env, free_port, losses, metrics, run_train, train_args

pytestmark = pytest.mark.slow  # every test here launches the trainer

# Two epochs of 5 iterations (46 usable images of 48, global batch 8), an evaluation after each: 10 iterations.
SHORT = ("--epochs", "2", "--log_every", "1", "--eval_epochs", "1", "--eval_every", "1")
HARNESS = str(REPO / "tests" / "e2e" / "signal_at.py")


def signalled(args, timeout=600, **environ):
    """The trainer under the signal harness, its environment saying where it signals itself."""
    return subprocess.run([sys.executable, HARNESS, *args], cwd=REPO, env=env(**environ), capture_output=True,
                          text=True, timeout=timeout)


def final_weights(run_dir):
    """The module's tensors in the run's latest checkpoint."""
    tag = (run_dir / "checkpoints" / "latest").read_text().strip()
    states = torch.load(run_dir / "checkpoints" / tag / "mp_rank_00_model_states.pt", map_location="cpu",
                        weights_only=False)
    return tag, states["module"]


def evaluations(run_dir):
    """epoch -> COCOeval stats; an evaluation logged twice is a defect."""
    records = [m for m in metrics(run_dir) if "eval_epoch" in m]
    epochs = [m["eval_epoch"] for m in records]
    assert len(epochs) == len(set(epochs)), epochs
    return {m["eval_epoch"]: m["stats"] for m in records}


@pytest.fixture(scope="module")
def straight(synthetic_dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    run_train(train_args(synthetic_dataset, run_dir, *SHORT))
    assert sorted(losses(run_dir)) == list(range(1, 11))
    return run_dir


@pytest.mark.parametrize(("where", "stopped_at", "environ"), [
    ("mid-epoch", 3, {"SIGNAL_AT": "step:3"}),
    # in the last iteration of epoch 1: the stop is agreed there, the epoch's end (evaluation, checkpoint) follows
    ("epoch boundary", 5, {"SIGNAL_AT": "step:5"}),
    # as epoch 1's evaluation starts; its COCOeval, slower than the steps to the stop, is still running at the stop
    ("evaluation in flight", 6, {"SIGNAL_AT": "eval:1", "SLOW_COCOEVAL": "1"}),
])
def test_sigterm_then_resume_is_bit_identical(synthetic_dataset, tmp_path, straight, where, stopped_at, environ):
    run_dir = tmp_path / "stopped"
    proc = signalled(train_args(synthetic_dataset, run_dir, *SHORT), **environ)
    assert proc.returncode == PREEMPTED_EXIT, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert f"stopped on SIGTERM at iteration {stopped_at}," in proc.stdout
    assert (run_dir / "checkpoints" / "latest").read_text().endswith(f"iter{stopped_at:07d}")
    assert sorted(losses(run_dir)) == list(range(1, stopped_at + 1))
    records = log_records(run_dir / "mlperf.log")
    assert records[-1]["key"] == "ssd_ds_preempted" and records[-1]["metadata"]["iteration"] == stopped_at
    assert "run_stop" not in [r["key"] for r in records]  # the run is not over

    resumed = run_train(train_args(synthetic_dataset, run_dir, *SHORT, "--resume", "auto"))
    if where == "evaluation in flight":
        assert "evaluation of epoch 1 (pending at the checkpoint) submitted again" in resumed.stderr
    assert losses(run_dir) == losses(straight)  # every iteration's loss, bit for bit
    (tag, weights), (want_tag, want) = final_weights(run_dir), final_weights(straight)
    assert tag == want_tag == "epoch002_iter0000010"
    assert weights.keys() == want.keys() and all(torch.equal(weights[k], want[k]) for k in want)
    assert evaluations(run_dir) == evaluations(straight)
    # The end of the run: the checker's verdict on the two segments joined, then their time added up.
    out = resumed.stdout
    assert "compliance check of" in out and "mlperf.joined.log (its segments joined): FAILED" in out
    findings = out.split("compliance check of", 1)[1].split("RESULT,SSD,", 1)[0].splitlines()[1:]
    assert findings == ["  WARNING -  Failed checks for eval_accuracy : v['value'] >= 0.230 and v['value'] < 1.0"]
    assert "segment mlperf.log" in out and "(preempted)" in out and "over 2 segments" in out


def test_sigusr1_during_a_save_and_a_second_signal_during_the_next(synthetic_dataset, tmp_path, straight):
    """SIGUSR1 mid-write of the iteration-2 checkpoint: that save completes and the run stops at iteration 3, where
    another SIGUSR1 arrives mid-write of the stop's own save and is ignored. `latest` is loadable and the resumed run
    exact."""
    run_dir = tmp_path / "saving"
    args = train_args(synthetic_dataset, run_dir, *SHORT, "--checkpoint_every", "2")
    proc = signalled(args, SIGNAL="SIGUSR1", SIGNAL_AT="save:1,save:2")
    assert proc.returncode == PREEMPTED_EXIT, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stderr.count("signal_at: sending SIGUSR1") == 2
    assert proc.stderr.count("SIGUSR1 received") == 1  # the second one ignored
    assert "stopped on SIGUSR1 at iteration 3, checkpoint epoch000_iter0000003" in proc.stdout
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "latest").read_text() == "epoch000_iter0000003"
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["epoch000_iter0000002", "epoch000_iter0000003"]
    run_train(train_args(synthetic_dataset, run_dir, *SHORT, "--checkpoint_every", "2", "--resume", "auto"))
    assert losses(run_dir) == losses(straight)


def test_a_hung_save_exits_within_the_stop_timeout_keeping_the_last_complete_checkpoint(synthetic_dataset, tmp_path):
    run_dir = tmp_path / "hung"
    args = train_args(synthetic_dataset, run_dir, *SHORT, "--checkpoint_every", "2", "--stop_timeout", "8")
    start = time.monotonic()
    proc = signalled(args, SIGNAL_AT="step:3", HANG_SAVE="2", timeout=300)
    assert proc.returncode == PREEMPTED_EXIT, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "signal_at: save 2 hangs" in proc.stderr and "no clean stop within 8 s of SIGTERM" in proc.stderr
    assert time.monotonic() - start < 120
    assert (run_dir / "checkpoints" / "latest").read_text() == "epoch000_iter0000002"  # the stop's own save hung
    run_train(train_args(synthetic_dataset, run_dir, *SHORT, "--max_iters", "4", "--resume", "auto"))
    assert sorted(losses(run_dir)) == [1, 2, 3, 4]


def deepspeed(args, harness=True, **environ):
    """Two ranks under DeepSpeed's launcher: the trainer, or (`harness`) the trainer under the signal harness."""
    program = [HARNESS] if harness else ["--module", "ssd_ds.train"]
    return subprocess.run(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), *program, *args],
                          cwd=REPO, env=env(**environ), capture_output=True, text=True, timeout=600)


def batch_config(tmp_path, micro, accumulation):
    path = tmp_path / f"micro{micro}_accum{accumulation}.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": accumulation}))
    return str(path)


# Two ranks: 46 usable images split 23 and 23, micro-batch 4 (global batch 8): 5 iterations an epoch; 2 epochs.
TWO = ("--epochs", "2", "--log_every", "2", "--eval_epochs", "9", "--eval_every", "9")


def test_a_signal_to_rank_1_alone_stops_both_ranks_at_the_same_iteration(synthetic_dataset, tmp_path):
    config = batch_config(tmp_path, 4, 1)
    straight = tmp_path / "straight"
    out = deepspeed([*train_args(synthetic_dataset, straight, *TWO), "--deepspeed_config", config])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    stopped = tmp_path / "stopped"
    args = [*train_args(synthetic_dataset, stopped, *TWO), "--deepspeed_config", config]
    out = deepspeed(args, SIGNAL_AT="step:3", SIGNAL_RANK="1")
    assert out.returncode == PREEMPTED_EXIT, out.stdout[-3000:] + out.stderr[-3000:]
    output = out.stdout + out.stderr
    assert output.count("signal_at: sending SIGTERM") == 1  # rank 1 only
    # Agreed at the next sync point (--log_every 2): iteration 4 on both ranks, saved there together.
    stops = [line.split("stopping on ")[1] for line in output.splitlines()
             if "WARNING ssd_ds.train: stopping on" in line]
    assert sorted(stops) == ["SIGTERM at iteration 4 (epoch 1, 4 of its 5 iterations)",
                             "another rank's stop signal at iteration 4 (epoch 1, 4 of its 5 iterations)"], stops
    assert (stopped / "checkpoints" / "latest").read_text() == "epoch000_iter0000004"
    out = deepspeed([*args, "--resume", "auto"], harness=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert losses(stopped) == losses(straight) and len(losses(straight)) == 10
    assert final_weights(stopped)[0] == final_weights(straight)[0] == "epoch002_iter0000010"
    assert all(torch.equal(a, b) for a, b in zip(final_weights(stopped)[1].values(),
                                                   final_weights(straight)[1].values()))


def distance(a, b):
    """The L2 distance between two modules' parameters (BatchNorm's running statistics left out)."""
    return sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a if "running_" not in k
               and a[k].is_floating_point()) ** 0.5


def test_resume_on_another_world_size_keeps_the_global_batch_or_is_refused(synthetic_dataset, tmp_path):
    """2 ranks -> 1 with the accumulation doubled: the global batch and the epoch stay, the run goes on and ends near
    the uninterrupted run's weights (not on them: BatchNorm normalises other micro-batches of the same samples;
    the logged loss, one micro-batch's on rank 0, is not comparable either). With the same DeepSpeed JSON the global
    batch would halve: refused, naming both world sizes and what to pass. 1 rank -> 2 likewise, with the micro-batch
    halved."""
    two_ranks = batch_config(tmp_path, 4, 1)  # global batch 8 on 2 ranks
    one_rank = batch_config(tmp_path, 4, 2)  # global batch 8 on 1 rank
    straight = tmp_path / "straight"
    out = deepspeed([*train_args(synthetic_dataset, straight, *TWO), "--deepspeed_config", two_ranks],
                    harness=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    shrunk = tmp_path / "shrunk"
    out = deepspeed([*train_args(synthetic_dataset, shrunk, *TWO), "--deepspeed_config", two_ranks],
                    SIGNAL_AT="step:3")
    assert out.returncode == PREEMPTED_EXIT, out.stdout[-3000:] + out.stderr[-3000:]
    at_stop = final_weights(shrunk)[1]
    refused = run_train([*train_args(synthetic_dataset, shrunk, *TWO), "--deepspeed_config", two_ranks, "--resume",
                         "auto"], check=False)
    assert refused.returncode == 2
    assert ("saved on world size 2 at global batch 8 (micro-batch 4 x accumulation 1), this run has world size 1 and "
            "global batch 4") in refused.stderr
    assert "train_micro_batch_size_per_gpu 4 and gradient_accumulation_steps 2" in refused.stderr
    resumed = run_train([*train_args(synthetic_dataset, shrunk, *TWO), "--deepspeed_config", one_rank, "--resume",
                         "auto"])
    assert "resuming a run saved on world size 2 on 1: the same global batch 8" in resumed.stderr
    got, want = losses(shrunk), losses(straight)
    assert sorted(got) == sorted(want) == list(range(1, 11))
    assert all(got[i] == want[i] for i in range(1, 5))  # before the stop: the same run
    end, want_end = final_weights(shrunk), final_weights(straight)
    assert end[0] == want_end[0] == "epoch002_iter0000010"
    # The six iterations after the stop moved the parameters; the resumed run ends well within that of the
    # uninterrupted run's end (0.28 of it when measured: micro-batches of 4 make BatchNorm's statistics noisy).
    # That the same samples make each global batch is shown exactly by tests/unit/test_preemption.py.
    moved, gap = distance(want_end[1], at_stop), distance(end[1], want_end[1])
    assert 0 < gap < 0.5 * moved, (gap, moved)

    grown = tmp_path / "grown"
    proc = signalled([*train_args(synthetic_dataset, grown, *TWO), "--deepspeed_config", one_rank], SIGNAL_AT="step:5")
    assert proc.returncode == PREEMPTED_EXIT, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = deepspeed([*train_args(synthetic_dataset, grown, *TWO), "--deepspeed_config", batch_config(tmp_path, 8, 1),
                     "--resume", "auto"], harness=False)
    assert out.returncode == 2 and "saved on world size 1 at global batch 8" in out.stdout + out.stderr
    assert "train_micro_batch_size_per_gpu 4 and gradient_accumulation_steps 1" in out.stdout + out.stderr
    out = deepspeed([*train_args(synthetic_dataset, grown, *TWO), "--deepspeed_config", two_ranks, "--resume", "auto"],
                    harness=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "resuming a run saved on world size 1 on 2" in out.stdout + out.stderr
    assert sorted(losses(grown)) == list(range(1, 11))

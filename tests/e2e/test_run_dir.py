"""One run per run directory, and what a resumed run logs (issue: a second run mixed into an existing directory; a
resumed run's MLPerf log failed the checker); the box-count check for encoding on the device."""

import json
import subprocess
import sys

import pytest

from ssd_ds.mlperf_log import log_records
from ssd_ds.run_config import demo, from_file
from ssd_ds.run_dir import open_run_dir
from tests.helpers import REPO, checker, env, losses, run_train, train_args

SHORT = ("--epochs", "2", "--eval_epochs", "9", "--eval_every", "9", "--log_every", "1")


def mllog_keys(path):
    return [record["key"] for record in log_records(path)]


@pytest.mark.slow
def test_a_resumed_run_logs_a_marked_continuation_segment_and_the_times_add_up(synthetic_dataset, tmp_path):
    run_dir = tmp_path / "run"
    run_train(train_args(synthetic_dataset, run_dir, *SHORT, "--max_iters", "6", "--checkpoint_every", "3"))
    first = (run_dir / "mlperf.log").read_text()
    run_train(train_args(synthetic_dataset, run_dir, *SHORT, "--max_iters", "10", "--resume", "auto"))
    assert (run_dir / "mlperf.log").read_text() == first  # the first segment's log is never appended to
    keys = mllog_keys(run_dir / "mlperf.log")
    for key in ("init_start", "init_stop", "run_start", "run_stop", "submission_org", "submission_division"):
        assert keys.count(key) == 1, key
    output = checker(run_dir / "mlperf.log", cwd=tmp_path)
    assert "found 2" not in output.stdout + output.stderr  # what appending a second segment used to cause

    segment = run_dir / "mlperf.segment2.log"
    assert segment.read_text().startswith("# continuation of mlperf.log")
    keys = mllog_keys(segment)
    assert keys[0] == "ssd_ds_resumed_from" and keys.count("run_start") == 1 and keys.count("run_stop") == 1
    assert not {"init_start", "init_stop", "submission_org", "global_batch_size"} & set(keys)
    assert '"iteration": 6' in segment.read_text()
    rejected = checker(segment, cwd=tmp_path)
    assert "FAILED" in rejected.stdout + rejected.stderr  # never mistaken for a complete run

    proc = subprocess.run([sys.executable, "-m", "ssd_ds.mlperf_log", str(run_dir / "mlperf.log")], cwd=REPO,
                          env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    seconds = [float(line.split(": ")[1].split(" s")[0]) for line in lines if line.startswith("  segment ")]
    assert len(seconds) == 2 and "over 2 segments" in proc.stdout
    assert abs(float(lines[0].split(",")[2]) - sum(seconds)) < 0.15  # RESULT,SSD,<total>,<status>
    assert sorted(losses(run_dir)) == list(range(1, 11))


@pytest.mark.slow
def test_a_second_run_into_a_used_directory_is_refused_and_nothing_is_lost(synthetic_dataset, tmp_path):
    run_dir = tmp_path / "run"
    run_train(train_args(synthetic_dataset, run_dir, *SHORT, "--max_iters", "2"))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    proc = run_train(train_args(synthetic_dataset, run_dir, *SHORT, "--max_iters", "2", "--new_run_dir", "false"),
                     check=False)
    assert proc.returncode != 0
    assert f"{run_dir}: holds a previous run" in proc.stderr and "--resume auto" in proc.stderr
    assert "fresh --run_dir" in proc.stderr
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before

    # --new_run_dir (the demo preset's default, so `make demo` works twice): the next free numbered directory.
    proc = run_train(train_args(synthetic_dataset, run_dir, *SHORT, "--max_iters", "2"))
    assert (tmp_path / "run-2" / "mlperf.log").is_file() and str(tmp_path / "run-2" / "mlperf.log") in proc.stdout
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


@pytest.mark.slow
def test_resume_auto_without_a_checkpoint_starts_afresh_and_keeps_the_earlier_attempt(synthetic_dataset, tmp_path):
    run_dir = tmp_path / "run"
    run_train(train_args(synthetic_dataset, run_dir, *SHORT, "--max_iters", "2"))  # no checkpoint before the end
    first_log = (run_dir / "mlperf.log").read_text()
    run_train(train_args(synthetic_dataset, run_dir, *SHORT, "--max_iters", "2", "--resume", "auto"))
    assert (run_dir / "attempt-1" / "mlperf.log").read_text() == first_log
    assert mllog_keys(run_dir / "mlperf.log").count("run_start") == 1
    assert sorted(losses(run_dir)) == [1, 2]


@pytest.mark.slow
def test_a_start_that_failed_leaves_nothing_that_blocks_the_next_one(synthetic_dataset, tmp_path):
    run_dir = tmp_path / "run"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 8}))
    args = train_args(synthetic_dataset, run_dir, *SHORT, "--max_iters", "2")
    good = args[args.index("--deepspeed_config") + 1]
    args[args.index("--deepspeed_config") + 1] = str(bad)
    assert run_train(args, check=False).returncode != 0
    args[args.index("--deepspeed_config") + 1] = good
    run_train(args)  # the same directory, config fixed
    assert mllog_keys(run_dir / "mlperf.log").count("init_start") == 1


@pytest.mark.slow
def test_more_boxes_than_max_boxes_fails_at_start_naming_the_image(synthetic_dataset, tmp_path):
    proc = run_train(train_args(synthetic_dataset, tmp_path / "run", *SHORT, "--encode_on_device", "on",
                                "--max_boxes", "2"), check=False)
    assert proc.returncode != 0
    assert "instances_train2017.json: image " in proc.stderr and "more than --max_boxes 2" in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # before training, not mid-epoch


def test_open_run_dir_returns_the_chosen_directory_and_leaves_the_config_as_given(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "tag").mkdir(parents=True)  # a previous run's traces
    cfg = demo()
    cfg.run_dir = str(run_dir)  # demo: new_run_dir on
    chosen, resume_from = open_run_dir(cfg, rank=0)
    assert chosen == tmp_path / "run-2" and resume_from is None
    assert cfg.run_dir == str(run_dir)
    assert from_file(str(chosen / "config.json")).run_dir == str(chosen)  # the saved config names where it ran

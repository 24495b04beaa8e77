"""User errors end a command with one `error: ...` line and exit status 2; bugs keep their traceback.

Each user error is launched as users launch it, in its own process. The trainer's start-up (torch, DeepSpeed, the
process group) is most of their cost, so its cases start together, as many at a time as there are CPUs.
"""

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ssd_ds.cli import USER_ERROR_EXIT, run_cli
from ssd_ds.errors import AlreadyExists, BadInput, LoaderStalled, LoaderWorkerDied, NotFound
from tests.helpers import CPU_TEST_CONFIG, REPO, env, free_port, train_args


def run(cmd, timeout=300):
    quiet = {k: v for k, v in env().items() if k != "SSD_DS_DEBUG"}  # a developer's debug setting would show tracebacks
    return subprocess.run(cmd, cwd=REPO, env=quiet, capture_output=True, text=True, timeout=timeout)


def assert_one_error_line(proc, *names):
    """Non-zero exit, no traceback, and the last line of stderr the only `error:` line, naming `names`."""
    output = f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    assert proc.returncode == USER_ERROR_EXIT, output
    assert "Traceback" not in proc.stderr + proc.stdout, output
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert [line for line in lines if "error:" in line] == lines[-1:], output
    assert lines[-1].startswith("error: ") and all(name in lines[-1] for name in names), output


def _damaged(root: Path, synthetic_dataset: Path, damage) -> Path:
    shutil.copytree(synthetic_dataset, root)
    damage(root)
    return root


def _write_train_json(text):
    return lambda root: (root / "annotations" / "instances_train2017.json").write_text(text)


@pytest.fixture(scope="module")
def trainer_runs(synthetic_dataset, tmp_path_factory):
    """Case name -> (finished trainer process, names its error must give), all cases started together."""
    tmp = tmp_path_factory.mktemp("cli_errors")
    no_images = json.loads((synthetic_dataset / "annotations" / "instances_train2017.json").read_text())
    no_images["images"] = []
    data_cases = {
        "missing data directory": (tmp / "absent", ["absent: dataset directory not found"]),
        "no train2017": (_damaged(tmp / "layout", synthetic_dataset, lambda r: shutil.rmtree(r / "train2017")),
                         ["train2017: image directory not found"]),
        "malformed annotations": (_damaged(tmp / "json", synthetic_dataset, _write_train_json('{"images": [')),
                                  ["instances_train2017.json: malformed JSON"]),
        "empty images list": (_damaged(tmp / "empty", synthetic_dataset, _write_train_json(json.dumps(no_images))),
                              ["instances_train2017.json: no image with a usable box"]),
    }
    (tmp / "malformed.json").write_text('{"train_micro_batch_size_per_gpu": 8,')
    (tmp / "mismatch.json").write_text(json.dumps({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 8}))
    config_cases = {
        "missing DeepSpeed config": (tmp / "absent.json", ["absent.json: DeepSpeed config not found"]),
        "batch mismatch": (tmp / "mismatch.json", ["mismatch.json: train_batch_size 64 != "]),
    }
    module = [sys.executable, "-m", "ssd_ds.train"]
    launcher = ["deepspeed", "--num_gpus", "1", "--master_port", str(free_port()), "--module", "ssd_ds.train"]
    cases = {}  # name -> (command, names)
    for name, (data, names) in data_cases.items():
        cases[name] = ([*module, *train_args(data, tmp / "runs" / name)], names)
    for name, (config, names) in config_cases.items():
        args = train_args(synthetic_dataset, tmp / "runs" / name)
        args[args.index("--deepspeed_config") + 1] = str(config)
        cases[name] = ([*module, *args], names)
    # Through DeepSpeed's launcher (`--module ssd_ds.train`: the package run as python -m on each rank).
    args = train_args(synthetic_dataset, tmp / "runs" / "launcher")
    args[args.index("--deepspeed_config") + 1] = str(tmp / "malformed.json")
    cases["malformed DeepSpeed config, deepspeed launcher"] = ([*launcher, *args], ["malformed.json: malformed JSON"])
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {name: pool.submit(run, cmd) for name, (cmd, _) in cases.items()}
        return {name: (futures[name].result(), cases[name][1]) for name in cases}


@pytest.mark.parametrize("case", ["missing data directory", "no train2017", "malformed annotations",
                                  "empty images list", "missing DeepSpeed config", "batch mismatch",
                                  "malformed DeepSpeed config, deepspeed launcher"])
@pytest.mark.slow
def test_trainer_user_error_is_one_line(trainer_runs, case):
    proc, names = trainer_runs[case]
    assert_one_error_line(proc, *names)


@pytest.mark.slow
def test_launch_check_malformed_hostfile(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("node1 slots=8\nnode2 slots = eight\n")
    proc = run([sys.executable, "-m", "ssd_ds.launch", "check", "--hostfile", str(hosts), "--deepspeed_config",
                CPU_TEST_CONFIG, "--no_ssh"])
    assert_one_error_line(proc, f"{hosts}:2: expected 'HOST slots=N'")


def test_mlperf_log_missing(tmp_path):
    proc = run([sys.executable, "-m", "ssd_ds.mlperf_log", str(tmp_path / "mlperf.log")])
    assert_one_error_line(proc, "mlperf.log: MLPerf log not found")


def test_a_bug_keeps_its_traceback():
    """A ValueError raised inside numpy (LinAlgError is one) is no user error, whatever it says."""
    code = ("import numpy\nfrom ssd_ds.cli import run_cli\n"
            "run_cli(lambda argv: numpy.linalg.inv(numpy.zeros((2, 2))))")
    proc = run([sys.executable, "-c", code])
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "error:" not in proc.stderr, proc.stderr
    assert proc.stderr.rstrip().endswith("LinAlgError: Singular matrix"), proc.stderr


USER_ERRORS = [(BadInput, ValueError), (NotFound, FileNotFoundError), (AlreadyExists, FileExistsError),
               (LoaderStalled, TimeoutError), (LoaderWorkerDied, ChildProcessError)]


@pytest.mark.parametrize("user_error, builtin", USER_ERRORS)
def test_a_user_error_is_one_line_and_exit_2(user_error, builtin, monkeypatch, capsys):
    monkeypatch.delenv("SSD_DS_DEBUG", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def main(argv):
        raise user_error("x.json: malformed")

    with pytest.raises(SystemExit) as exit_:
        run_cli(main)
    assert exit_.value.code == USER_ERROR_EXIT
    assert capsys.readouterr().err == "error: x.json: malformed\n"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit):
        run_cli(main)
    assert capsys.readouterr().err == "[rank1]: error: x.json: malformed\n"


@pytest.mark.parametrize("user_error, builtin", USER_ERRORS)
def test_each_user_error_is_still_its_builtin_error(user_error, builtin):
    """`except ValueError` / `except FileNotFoundError` around our calls catch them as before."""
    with pytest.raises(builtin, match="x.json: malformed"):
        raise user_error("x.json: malformed")
    # A DataLoader worker's exception is raised again in the main process as `type(exc)(message)`.
    assert str(user_error("x.json: malformed")) == "x.json: malformed"


def _builtin_value_error(argv):
    int("x")


def _key_error(argv):
    {}["key"]


def _plain_value_error(argv):
    raise ValueError("x.json: malformed")  # what it says does not matter: only a UserError is the user's


@pytest.mark.parametrize("main", [_builtin_value_error, _key_error, _plain_value_error])
def test_any_other_error_leaves_run_cli_with_its_traceback(main, monkeypatch):
    monkeypatch.delenv("SSD_DS_DEBUG", raising=False)
    with pytest.raises((ValueError, KeyError)):  # not SystemExit: Python prints the traceback and exits 1
        run_cli(main)


def test_run_cli_exit_status_and_debug(monkeypatch, capsys):
    monkeypatch.delenv("SSD_DS_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda argv: 3)
    assert exit_.value.code == 3
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda argv: Path("not an exit status"))
    assert exit_.value.code == 0
    from ssd_ds.launch import parse_hostfile

    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda argv: parse_hostfile("/nonexistent/hosts"))
    assert exit_.value.code == USER_ERROR_EXIT
    assert capsys.readouterr().err == "error: /nonexistent/hosts: hostfile not found\n"
    monkeypatch.setenv("SSD_DS_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="hostfile not found"):
        run_cli(lambda argv: parse_hostfile("/nonexistent/hosts"))

"""Launch and scale-out: hostfile checks, a dying rank, and a real two-node run in two network namespaces."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from ssd_ds.distributed import wait_for_rendezvous
from ssd_ds.launch import check_hostfile, parse_hostfile
from tests.helpers import CPU_TEST_CONFIG, REPO, env, free_port, metrics, train_args


def test_every_hostfile_in_the_repo_parses():
    for path in (REPO / "hostfiles").iterdir():
        if path.name != "README.md":
            assert sum(parse_hostfile(path).values()) >= 1


def test_malformed_hostfile_names_file_and_line(tmp_path):
    bad = tmp_path / "hosts"
    bad.write_text("node1 slots=8\nnode2 slots = eight\n")
    with pytest.raises(ValueError, match=r"hosts:2: expected 'HOST slots=N'"):
        parse_hostfile(bad)


def test_slot_count_that_does_not_fit_the_config(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=3\n")
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"train_batch_size": 16, "train_micro_batch_size_per_gpu": 8}))
    with pytest.raises(ValueError, match=r"ds.json: train_batch_size 16 != .* world size 3"):
        check_hostfile(str(hosts), str(config), ssh=False)


def test_launch_check_takes_the_deepspeed_config_a_system_config_names(capsys, monkeypatch):
    from ssd_ds.launch import main

    monkeypatch.chdir(REPO)  # the config's paths start at the repository root
    two_nodes = ["check", "--hostfile", "hostfiles/two_nodes_8gpu", "--no_ssh", "--config"]
    assert main([*two_nodes, "configs/systems/DGXA100_multi_2x8x56.json"]) == 0
    assert "fits ds_configs/2xdgxa100_16x56_bf16.json" in capsys.readouterr().out
    assert main([*two_nodes, "configs/systems/DGXA100.json"]) == 2  # one node's batch on 16 slots
    assert "dgxa100_8x114_bf16.json: train_batch_size 912 != " in capsys.readouterr().err


def test_unreachable_host_fails_fast(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    with socket.socket() as server:  # one port that answers, to show the check passes when hosts are up
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_hostfile(str(hosts), CPU_TEST_CONFIG, ssh=True, ssh_port=server.getsockname()[1], timeout=2)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"2 of 2 hosts do not answer"):
        check_hostfile(str(hosts), CPU_TEST_CONFIG, ssh=True, ssh_port=free_port(), timeout=2)
    assert time.monotonic() - start < 10
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"rank 1: the rendezvous at 127.0.0.1:\d+ did not answer within 3 s"):
        wait_for_rendezvous("127.0.0.1", free_port(), timeout=3, rank=1)
    assert time.monotonic() - start < 10


@pytest.mark.slow
def test_a_dying_rank_ends_the_whole_run(synthetic_dataset, tmp_path):
    run_dir = tmp_path / "dies"
    # dist_timeout leaves rank 0 room to start on a loaded machine (rank 1 waits that long for its rendezvous); the
    # bound checked below comes from DeepSpeed's launcher taking the node's other ranks down when one dies.
    args = train_args(synthetic_dataset, run_dir, "--epochs", "50", "--log_every", "1", "--eval_epochs", "99",
                       "--dist_timeout", "180")
    log = open(tmp_path / "launcher.log", "w")
    launcher = subprocess.Popen(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), "--module",
                                 "ssd_ds.train", *args], cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    victim = None
    while victim is None and time.time() < deadline and launcher.poll() is None:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().count("iteration") >= 3:
            for p in psutil.Process(launcher.pid).children(recursive=True):
                if "--local_rank=1" in " ".join(p.cmdline()):
                    victim = p
        time.sleep(0.1)
    assert victim is not None, "rank 1 never trained:\n" + (tmp_path / "launcher.log").read_text()[-5000:]
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    launcher.wait(timeout=120)
    assert launcher.returncode != 0
    assert time.monotonic() - killed_at < 60  # rank 0 did not hang in its next all-reduce


NS = ("ssdtest_n0", "ssdtest_n1")
VETH = ("ssdtest_v0", "ssdtest_v1")
ADDR = ("10.213.7.1", "10.213.7.2")  # private to the two namespaces this test creates


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def two_namespaces():
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("needs root and iproute2 to create network namespaces")
    for ns in NS:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    try:
        for ns in NS:
            _ip("netns", "add", ns)
        _ip("link", "add", VETH[0], "type", "veth", "peer", "name", VETH[1])
        for ns, dev, addr in zip(NS, VETH, ADDR):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as exc:
        for ns in NS:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.skip(f"this machine does not permit network namespaces: {exc.stderr.decode().strip()}")
    yield
    for ns in NS:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.slow
def test_two_nodes_in_network_namespaces(two_namespaces, synthetic_dataset, tmp_path):
    run_dir = tmp_path / "two_nodes"
    args = train_args(synthetic_dataset, run_dir, "--epochs", "1", "--log_every", "2", "--eval_epochs", "1",
                       "--dist_timeout", "120")
    nodes = []
    for rank, (ns, dev) in enumerate(zip(NS, VETH)):
        cmd = ["ip", "netns", "exec", ns, "deepspeed", "--hostfile", "hostfiles/cpu_two_nodes", "--no_ssh",
               "--node_rank", str(rank), "--master_addr", ADDR[0], "--master_port", "29581", "--module", "ssd_ds.train",
               *args]
        # (port 29581 on 10.213.7.1 lives inside the test's own namespace: no clash with the host's ports)
        nodes.append(subprocess.Popen(cmd, cwd=REPO, env=env(GLOO_SOCKET_IFNAME=dev), text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = [n.communicate(timeout=600)[0] for n in nodes]
    for node, out in zip(nodes, outputs):
        assert node.returncode == 0, out[-5000:]
    records = metrics(run_dir)
    checksums = [r["param_checksums"] for r in records if "param_checksums" in r]
    assert checksums and len(checksums[0]) == 2 and checksums[0][0] == checksums[0][1]
    evals = [r for r in records if "eval_epoch" in r]
    assert evals and evals[0]["stats"] is not None
    log = (run_dir / "mlperf.log").read_text()
    assert '"key": "global_batch_size", "value": 16' in log


def test_launch_scripts_parse():
    for script in [*(REPO / "scripts").rglob("*.sh"), REPO / "scripts" / "launch" / "run.sub"]:
        subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.slow
def test_run_and_time_prints_time_to_train(synthetic_dataset, tmp_path):
    system = tmp_path / "CPU.json"  # a system's config, as in configs/systems/: a preset and the fields it changes
    system.write_text(json.dumps({"preset": "mlperf", "deepspeed_config": CPU_TEST_CONFIG, "submission_platform": "CPU",
                                  "model": "cpu_small", "backbone_weights": None, "epochs": 1, "eval_epochs": [1]}))
    script_env = env(DATADIR=str(synthetic_dataset), LOGDIR=str(tmp_path), SYSTEM_CONFIG=str(system),
                     LAUNCH="direct", DGXSYSTEM="CPU", RUN_ID="t1", SEED="3", PYTHON=sys.executable)
    flags = ["--synthetic", "false", "--workers", "1", "--progress", "false"]  # applied on top of the system's config
    run = subprocess.run(["scripts/launch/run_and_time.sh", *flags], cwd=REPO, env=script_env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    result = [line for line in run.stdout.splitlines() if line.startswith("RESULT,SSD,")]
    assert len(result) == 1 and result[0].endswith(",aborted")  # one epoch never reaches AP 0.23
    assert float(result[0].split(",")[2]) > 0
    assert (tmp_path / "ssd_CPU_t1" / "mlperf.log").is_file()
    assert '"key": "submission_platform", "value": "CPU"' in (tmp_path / "ssd_CPU_t1" / "mlperf.log").read_text()


def test_time_to_train_names_an_unfinished_log(tmp_path):
    from ssd_ds.mlperf_log import time_to_train

    log = tmp_path / "mlperf.log"
    log.write_text(':::MLLOG {"namespace": "", "time_ms": 1, "event_type": "INTERVAL_START", "key": "run_start", '
                   '"value": null, "metadata": {}}\n')
    with pytest.raises(ValueError, match="mlperf.log: no run_stop record"):
        time_to_train(log)

"""The training loader at the shipped H200 micro-batch under the limits of a GPU node, and a worker that can never
deliver: each in its own process, with `ulimit -n 1024` set there (a common default on GPU nodes and under Slurm;
this machine allows far more, which is why nothing else here would see a descriptor per image)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.helpers import REPO, env, free_port, train_args

pytestmark = pytest.mark.slow  # every test here launches the trainer or a loader process

MICRO_BATCH = 912  # the H200 config's whole global batch in one step (ds_configs/h200_1x912_bf16.json: 456 x 2)
WORKERS = 8
FD_LIMIT = 1024

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


@pytest.fixture(scope="module")
def small_images(tmp_path_factory):
    """Enough training images for 3 micro-batches of 912 once ~3% without boxes are dropped, small (48-64 px) so
    that they are quick to make."""
    root = tmp_path_factory.mktemp("loader_limits") / "data"
    subprocess.run([sys.executable, "-m", "ssd_ds.data.synthetic", str(root), "--train", str(3 * MICRO_BATCH + 200),
                    "--val", "8", "--min-size", "48", "--max-size", "64", "--workers", "2"],
                   cwd=REPO, env=env(), check=True, capture_output=True, timeout=300)
    return root


def limited(argv: list[str], timeout: float, **extra_env) -> subprocess.CompletedProcess:
    """argv run under `ulimit -n 1024`, in the repository, with the trainer tests' environment."""
    command = f"ulimit -n {FD_LIMIT} && exec \"$@\""
    return subprocess.run(["bash", "-c", command, "bash", *argv], cwd=REPO, env=env(**extra_env),
                          capture_output=True, text=True, timeout=timeout)


LOADER_LOOP = textwrap.dedent("""
    import json, os, resource, sys
    from ssd_ds.data.coco import CocoDetection
    from ssd_ds.data.device_input import CompressedTrainTransform, collate_compressed
    from ssd_ds.data.loaders import TrainSampler, build_train_loader

    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == int(sys.argv[2])
    dataset = CocoDetection(sys.argv[1], "train", transform=CompressedTrainTransform(), decode=False)
    loader = build_train_loader(dataset, TrainSampler(len(dataset), seed=0), int(sys.argv[3]), int(sys.argv[4]),
                                collate_fn=collate_compressed, timeout=120)
    held, sizes, most = None, [], 0
    for batch in loader:  # the previous batch is still held while this one was fetched
        most = max(most, len(os.listdir("/proc/self/fd")))
        sizes.append(len(batch.offsets) - 1)
        held = batch
    print(json.dumps({"batches": sizes, "most_fds": most}))
""")


def test_device_loader_at_micro_batch_912_with_8_workers_under_1024_descriptors(small_images):
    """Each batch's files travel as one tensor: a handful of descriptors a batch, not one an image. (On the code
    before, this loop died at its second batch: 'received 0 items of ancdata'.)"""
    proc = limited([sys.executable, "-c", LOADER_LOOP, str(small_images), str(FD_LIMIT), str(MICRO_BATCH),
                    str(WORKERS)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["batches"] == [MICRO_BATCH] * 3
    assert result["most_fds"] < 200, result  # measured: ~70 (the workers' pipes and a few tensors a batch)


def test_trainer_on_the_device_input_path_at_micro_batch_912_under_1024_descriptors(small_images, tmp_path):
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"train_batch_size": MICRO_BATCH, "train_micro_batch_size_per_gpu": MICRO_BATCH,
                                  "gradient_accumulation_steps": 1}))
    run_dir = tmp_path / "run"
    args = train_args(small_images, run_dir, "--input", "device", "--workers", str(WORKERS), "--deepspeed_config",
                      str(config), "--max_iters", "2", "--log_every", "1", "--threads", "2")
    proc = limited([sys.executable, "-m", "ssd_ds.train", *args], timeout=600, MASTER_PORT=str(free_port()))
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["iteration"] for r in train] == [1, 2]
    # every image took the host decode (the device is the CPU here); the counts are logged, zeros included
    assert train[-1]["decode"] == {"nvjpeg_batched": 0, "nvjpeg_per_image": 0, "host": MICRO_BATCH,
                                   "host_fallback": 0, "failed": 0, "progressive": 0}
    assert train[-1]["data_wait_s_per_step"] >= 0 and train[-1]["prepare_s_per_step"] > 0


def test_a_worker_stuck_on_a_file_ends_the_run_with_one_line_within_the_loader_timeout(tmp_path):
    """A file that never finishes reading (a FIFO nobody writes, as a hung network file system behaves) blocks its
    worker for ever; the run must end with a one-line error naming the data set and --loader_timeout."""
    root = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "ssd_ds.data.synthetic", str(root), "--train", "40", "--val", "8",
                    "--min-size", "48", "--max-size", "64", "--workers", "1"],
                   cwd=REPO, env=env(), check=True, capture_output=True, timeout=120)
    stuck = sorted((root / "train2017").iterdir())[5]
    stuck.unlink()
    os.mkfifo(stuck)
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"train_batch_size": 4, "train_micro_batch_size_per_gpu": 4,
                                  "gradient_accumulation_steps": 1}))
    args = train_args(root, tmp_path / "run", "--input", "device", "--workers", "2", "--deepspeed_config",
                      str(config), "--epochs", "1", "--loader_timeout", "10")
    proc = limited([sys.executable, "-m", "ssd_ds.train", *args], timeout=240, MASTER_PORT=str(free_port()))
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {root}: no training batch from the loader workers in 10 s (--loader_timeout)"), last
    assert "Traceback" not in proc.stderr


def test_a_killed_worker_ends_the_run_with_one_line(tmp_path):
    """A loader worker killed mid-run (as the kernel's OOM killer does) ends the run at once with one line, wherever
    torch reports it: from the loader, or from its SIGCHLD handler in the middle of a step."""
    root = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "ssd_ds.data.synthetic", str(root), "--train", "40", "--val", "8",
                    "--min-size", "48", "--max-size", "64", "--workers", "1"],
                   cwd=REPO, env=env(), check=True, capture_output=True, timeout=120)
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"train_batch_size": 4, "train_micro_batch_size_per_gpu": 4,
                                  "gradient_accumulation_steps": 1}))
    run_dir = tmp_path / "run"
    args = train_args(root, run_dir, "--input", "device", "--workers", "2", "--deepspeed_config", str(config),
                      "--epochs", "50", "--log_every", "1")
    proc = subprocess.Popen([sys.executable, "-m", "ssd_ds.train", *args], cwd=REPO, env=env(),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        metrics_file, deadline = run_dir / "metrics.jsonl", time.monotonic() + 180
        while not (metrics_file.exists() and metrics_file.read_text().count('"loss"') >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, "the run never logged two iterations"
            time.sleep(0.5)
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert workers, "no loader worker found"
        os.kill(int(workers[0]), signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 2, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {root}: DataLoader worker (pid"), last
    assert f"pid(s) {workers[0]})" in last or f"pid {workers[0]})" in last, last

import multiprocessing as mp
import os
import signal
import time

import pytest

from ssd_ds import checkpoint


class FileWritingEngine:
    """Stands in for DeepSpeed's writer: writes its files into the tag directory, optionally very slowly."""

    def __init__(self, payload: bytes, slow: bool = False):
        self.payload = payload
        self.slow = slow

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        assert save_latest is False  # `latest` is ours to replace atomically
        os.makedirs(os.path.join(save_dir, tag), exist_ok=True)
        with open(os.path.join(save_dir, tag, "mp_rank_00_model_states.pt"), "wb") as f:
            f.write(self.payload[:10])
            f.flush()
            if self.slow:
                time.sleep(60)  # killed here, mid-write
            f.write(self.payload[10:])


def _save_slowly(ckpt_dir):
    checkpoint.save(FileWritingEngine(b"second checkpoint bytes", slow=True), ckpt_dir, "epoch002", {}, keep=2)


@pytest.mark.slow
def test_kill_during_save_leaves_previous_checkpoint_loadable(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    checkpoint.save(FileWritingEngine(b"first checkpoint bytes"), ckpt_dir, "epoch001", {}, keep=2)
    child = mp.get_context("spawn").Process(target=_save_slowly, args=(ckpt_dir,))
    child.start()
    partial = ckpt_dir / ".epoch002.partial" / "mp_rank_00_model_states.pt"
    deadline = time.time() + 60
    while not (partial.exists() and partial.stat().st_size == 10) and time.time() < deadline:
        time.sleep(0.05)
    assert partial.exists(), "the child never started writing"
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert (ckpt_dir / "latest").read_text() == "epoch001"
    where = checkpoint.find_resume("auto", ckpt_dir)
    assert where == (ckpt_dir, "epoch001")
    assert (ckpt_dir / "epoch001" / "mp_rank_00_model_states.pt").read_bytes() == b"first checkpoint bytes"
    assert not (ckpt_dir / "epoch002").exists()
    # The next save removes the killed save's partial directory and moves `latest` on.
    checkpoint.save(FileWritingEngine(b"third"), ckpt_dir, "epoch003", {}, keep=1)
    assert (ckpt_dir / "latest").read_text() == "epoch003"
    assert sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir()) == ["epoch003"]


def test_keep_prunes_oldest(tmp_path):
    for i in range(4):
        checkpoint.save(FileWritingEngine(b"x" * 20), tmp_path, f"tag{i}", {}, keep=2)
        time.sleep(0.01)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["tag2", "tag3"]

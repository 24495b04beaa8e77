"""The download scripts: syntax, and the offline failures they promise (no network is used)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "data"
# Nothing listens on the discard port of the loopback interface: a connection there is refused at once.
UNREACHABLE = "http://127.0.0.1:9"


def _run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPTS / script), *args], capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )


@pytest.mark.parametrize("script", ["download_dataset.sh", "download_resnet34.sh"])
def test_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_dataset_download_fails_clearly_without_network(tmp_path):
    result = _run("download_dataset.sh", str(tmp_path / "coco"), COCO_BASE_URL=UNREACHABLE)
    assert result.returncode == 1
    assert f"cannot reach {UNREACHABLE}" in result.stderr
    assert list((tmp_path / "coco").iterdir()) == []


def test_dataset_download_needs_a_directory():
    assert _run("download_dataset.sh").returncode == 2


def test_resnet34_download_fails_clearly_without_network(tmp_path):
    result = _run("download_resnet34.sh", str(tmp_path), RESNET34_URL=f"{UNREACHABLE}/resnet34-333f7ec4.pth")
    assert result.returncode == 1
    assert "cannot download" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_resnet34_with_the_wrong_hash_is_removed(tmp_path):
    fake = tmp_path / "fake.pth"
    fake.write_bytes(b"not the weights")
    dest = tmp_path / "checkpoints"
    result = _run("download_resnet34.sh", str(dest), RESNET34_URL=fake.as_uri())
    assert result.returncode == 1
    assert "expected 333f7ec4" in result.stderr
    assert list(dest.iterdir()) == []

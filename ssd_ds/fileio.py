"""Files that are either whole or absent, and JSON read with the file named in every error.

Everything the project writes for later (configs, checkpoints' `latest`, detections, evaluation results, annotation
copies, kernel reports) goes through `atomic_open`: a temporary file in the same directory, flushed to disk, then
`os.replace`d over the target, so a kill at any moment leaves the old file or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from ssd_ds.errors import BadInput, NotFound


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing ("w" or "wb"); on a clean exit it replaces `path`, on an error
    it is removed and `path` is untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the result should read like any other file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write `data` to `path` atomically (see the module docstring)."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def read_json(path: str | Path, what: str = "JSON file"):
    """The parsed JSON of `path`; a missing file or malformed JSON is an error naming the file (and `what` it is).

    Read as UTF-8 (RFC 8259), whatever the locale, so non-ASCII names read alike everywhere; a leading byte order
    mark, which Windows tools often write and Python's json refuses, is skipped (`utf-8-sig`)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except FileNotFoundError:
        raise NotFound(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: malformed JSON ({exc})") from None

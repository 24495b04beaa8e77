"""How every entry point ends: a user error as one `error: ...` line and exit status 2, a bug with its traceback.

`if __name__ == "__main__": run_cli(main)` at the bottom of each command-line module. A user error is an
`ssd_ds.errors.UserError`: raised by the checks that validate input and name the file or flag at fault
(`{root}: dataset directory not found`, `{path}: malformed JSON (...)`, `{path}: train_batch_size ...`), or when
the machine fails the run in a way the user mends (a loader worker stalled or was killed). Anything else keeps
Python's traceback: a `ValueError` from inside numpy or torch, one from a builtin called in our code (`int("x")`), a
`KeyError`, a `RuntimeError` (our invariant checks: replicas that differ, an evaluation that missed images).
`SSD_DS_DEBUG=1` shows the traceback of user errors too.

Under torch.distributed the traceback would come from every rank, each line prefixed `[rankN]:` (the
`sys.excepthook` that `init_process_group` installs); a user error is caught before that hook, prints one line per
rank (prefixed `[rankN]:` only when there are several) and destroys the process group, so that the rank exits
without waiting on its peers; DeepSpeed's launcher then ends the other ranks and exits non-zero.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn

from ssd_ds.errors import UserError

USER_ERROR_EXIT = 2  # as argparse exits on a bad flag


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> NoReturn:
    """Run `main(argv)` and exit: with its return value when that is an int (an exit status), else 0; with status 2
    and one `error: ...` line on stderr when it raises a UserError (see the module docstring)."""
    try:
        result = main(argv)
    except UserError as exc:
        if os.environ.get("SSD_DS_DEBUG") == "1":
            raise
        world = int(os.environ.get("WORLD_SIZE", "1"))
        prefix = f"[rank{os.environ.get('RANK', '?')}]: " if world > 1 else ""
        print(f"{prefix}error: {exc}", file=sys.stderr, flush=True)
        _destroy_process_group()
        sys.exit(USER_ERROR_EXIT)
    sys.exit(result if isinstance(result, int) else 0)


def _destroy_process_group() -> None:
    dist = sys.modules.get("torch.distributed")  # only if the program imported it: this module imports no torch
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

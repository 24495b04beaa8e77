"""The errors a user mends: a file or flag at fault, or a loader the machine failed. `ssd_ds.cli.run_cli` prints
them as one `error: ...` line; any other exception is a bug and keeps its traceback.

Each class is also the built-in error it stands for, so `except ValueError` and `except FileNotFoundError` catch
it as before. Raise these only where the message names what the user gave (`{path}: malformed JSON (...)`,
`--max_boxes must be in 1..256`); a broken invariant of our own code stays a plain `ValueError` or `RuntimeError`.
"""


class UserError(Exception):
    """An error in what the user gave or in the machine they run on, told in the message alone."""


class BadInput(UserError, ValueError):
    """A file's contents or a flag's value is wrong."""


class NotFound(UserError, FileNotFoundError):
    """A file or directory the user named is not there."""


class AlreadyExists(UserError, FileExistsError):
    """A directory the run would create holds something else."""


class LoaderStalled(UserError, TimeoutError):
    """No training batch came from the loader workers within --loader_timeout."""


class LoaderWorkerDied(UserError, ChildProcessError):
    """A loader worker process was killed (out of memory, a signal)."""

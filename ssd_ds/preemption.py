"""Stopping on a signal: a cluster's warning before it preempts a job or its time runs out.

Slurm sends SIGTERM (or the signal `sbatch --signal` names) some time before it kills a job. On one of the run's
`--stop_signals` (SIGTERM and SIGUSR1 by default) the handler only notes the signal; the training loop asks at its
sync point, every --log_every iterations, where the ranks already exchange one small tensor (rank 0's "target
reached"): the same all-reduce carries every rank's request (ssd_ds.distributed.agree), so a signal that reached one
rank of many stops all of them at the same iteration, for no extra collective. There the run saves a checkpoint at
that exact iteration (atomically, ssd_ds.checkpoint), ends its MLPerf segment with an `ssd_ds_preempted` record
instead of run_stop (ssd_ds.mlperf_log), and exits with PREEMPTED_EXIT: "preempted, resume me" (`--resume auto`
continues exactly; scripts/launch/run.sub requeues the job on this code).

Signals after the first are ignored, so a second SIGTERM cannot cut the save short. The first starts a watchdog: if
the process has not exited --stop_timeout seconds later (a save stuck on a file system, a peer that died), it exits
with PREEMPTED_EXIT anyway; `latest` then still names the last complete checkpoint, since a save moves it only once
complete.

A scheduler signals every process of a job step, loader workers and COCOeval processes included: they ignore the
stop signals (`ignore_signals`), since one of them killed would fail the run the trainer is stopping cleanly. So the
trainer's exit kills them (`kill_children_at_exit`): the SIGTERM multiprocessing would end them with is ignored.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # registers multiprocessing's exit hook before ours (hooks run last-registered first)
import os
import signal
import threading

PREEMPTED_EXIT = 75  # sysexits.h EX_TEMPFAIL: a temporary failure, the caller is invited to retry (here: resume)
NOT_STOP_SIGNALS = ("SIGKILL", "SIGSTOP")  # cannot be caught


def signal_number(name: str) -> int:
    """`SIGTERM`, `TERM` or `15` as a signal number; ValueError naming the signal when it is not one to catch."""
    text = name.strip().upper()
    if text.isdigit():
        try:
            text = signal.Signals(int(text)).name
        except ValueError:
            raise ValueError(f"no signal number {name}") from None
    if not text.startswith("SIG"):
        text = "SIG" + text
    if text in NOT_STOP_SIGNALS or not hasattr(signal.Signals, text):
        raise ValueError(f"{name!r} is not a signal a process can catch (e.g. SIGTERM, SIGUSR1, SIGUSR2)")
    return int(signal.Signals[text])


def ignore_signals(numbers: tuple[int, ...], worker_id: int | None = None) -> None:
    """In a child process: leave the stop signals to the trainer (bound to the numbers, a DataLoader's
    `worker_init_fn`, which is given the worker's id)."""
    for number in numbers:
        signal.signal(number, signal.SIG_IGN)


def kill_children_at_exit() -> None:
    """Make the trainer's exit kill its daemonic children (loader workers, COCOeval processes) rather than wait.

    They ignore the stop signals, SIGTERM among them, and SIGTERM is how multiprocessing ends daemonic children when
    the interpreter exits (its exit hook terminates them, then joins them): a trainer that exits while a DataLoader
    iterator is still alive would wait for its workers forever. Registered after multiprocessing's own hook, this one
    runs first and sends SIGKILL, which nothing ignores; what the children were doing was being ended anyway."""
    atexit.register(_kill_daemonic_children)


def _kill_daemonic_children() -> None:
    # torch's SIGCHLD handler raises when a DataLoader worker dies, which would cut this loop short at the first
    # child and leave the next one to a join that never ends: at exit, no child's death is news.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    children = [child for child in multiprocessing.active_children() if child.daemon]
    for child in children:
        child.kill()
    for child in children:
        child.join(5)


class StopSignals:
    """The handler of the run's stop signals: `received` is the first signal's number (None until one came),
    `agreed` whether the ranks agreed to stop (set by the loop), `ignored` how many came after the first."""

    def __init__(self, names: tuple[str, ...], timeout: float):
        self.numbers = tuple(dict.fromkeys(signal_number(n) for n in names))
        self.timeout = timeout
        self.received: int | None = None
        self.ignored = 0
        self.agreed = False
        self._pid = os.getpid()
        self._previous: dict[int, object] = {}
        self._watchdog: threading.Timer | None = None

    @property
    def name(self) -> str:
        """The signal this rank received, or what stopped it when another rank received one."""
        return signal.Signals(self.received).name if self.received is not None else "another rank's stop signal"

    def install(self) -> StopSignals:
        for number in self.numbers:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def uninstall(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()

    def _handle(self, number: int, frame) -> None:
        if os.getpid() != self._pid:  # a forked child before it set its own handlers: not its to act on
            return
        if self.received is not None:
            self.ignored += 1
            return
        self.received = number
        # No logging here: the handler runs between two bytecodes of the main thread, which may hold a stream's lock.
        os.write(2, f"ssd_ds: {signal.Signals(number).name} received: stopping at the next sync point, saving a "
                    f"checkpoint and exiting with code {PREEMPTED_EXIT} (resume with --resume auto); further stop "
                    f"signals are ignored; exit within {self.timeout:g} s (--stop_timeout) whatever happens\n".encode())
        self._watchdog = threading.Timer(self.timeout, self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _expire(self) -> None:
        os.write(2, f"ssd_ds: no clean stop within {self.timeout:g} s of {self.name} (--stop_timeout): exiting with "
                    f"code {PREEMPTED_EXIT}; the checkpoint `latest` names is the last complete one\n".encode())
        os._exit(PREEMPTED_EXIT)

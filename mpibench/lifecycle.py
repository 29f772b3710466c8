"""One object for what SIGINT and SIGTERM do to a rank, by the state the process is in.

States, in order (`Lifecycle.state`):

- BOOTING: before MPI is up. As one process a signal ends it at once with one line (exit
  130, nothing to undo yet); under a launcher the first signal is only noted (`early`):
  other ranks may already wait in MPI's start-up for this one, and a rank that exits
  before joining leaves them waiting for good. A second signal does not wait.
- PLAIN: a command without MPI (report, compare, s3-server): Python's default handling.
- WAITING: MPI is up, the run has not started (configuration, preflight). Rank 0 (or one
  process) raises KeyboardInterrupt, so that the preflight undoes what it created and the
  job ends as one. Another rank notes the first signal (`noted`) and goes on: the run
  takes it and stops at its first check; a second signal, or no run within
  RUN_STARTS_WITHIN_S (rank 0 stuck on a hung filesystem), ends the job.
- RUNNING: the run's graceful stop. The first signal marks the run context interrupted
  (the phase ends, cleanup runs, exit 130) and arms its watchdog; a second aborts the job.
  A signal before the context exists is kept for it (`pending`).
- FINISHING: what was measured is never lost to a late signal: signals are ignored while
  the results are written and MPI shuts down.

The run context's StopWatchdog (mpibench.context) is the one timer of the RUNNING state;
the deadline of a noted signal is the WAITING state's.
"""

from __future__ import annotations

import enum
import os
import signal
import sys
import threading
from typing import Any

from mpibench.errors import EXIT_INTERRUPTED

SIGNALS = (signal.SIGINT, signal.SIGTERM)
NOT_STARTED = "before the run started; nothing was measured"
RUN_STARTS_WITHIN_S = 20.0  # a rank that noted a signal before the run waits this long for it to start


class State(enum.Enum):
    """What a signal does now (see the module's docstring)."""

    BOOTING = "booting"
    PLAIN = "plain"
    WAITING = "waiting"
    RUNNING = "running"
    FINISHING = "finishing"


class Lifecycle:
    """The process's signal handling, its state and what a signal left to be acted on."""

    def __init__(self, state: State = State.BOOTING, rank_hint: int | None = None) -> None:
        self.state = state
        self.rank_hint = rank_hint  # the launcher's rank before MPI is up (None: one process)
        self.early: str | None = None  # a signal noted while MPI was starting (under a launcher)
        self.noted: str | None = None  # WAITING, rank > 0: the first signal, until the run takes it
        self._noted_ever = False
        self.comm: Any = None
        self.ctx: Any = None  # the run context (RunContext) once the run has one
        self.pending: str | None = None  # RUNNING: a signal before the context existed
        self._before_run = state
        self._lock = threading.Lock()

    # -- transitions ------------------------------------------------------------------------
    def boot(self) -> None:
        """BOOTING: the process's first act (see the module's docstring)."""
        self.state = State.BOOTING
        self._install(self._on_boot)

    def plain(self) -> None:
        """PLAIN: a command without MPI gets Python's own handling."""
        self.state = State.PLAIN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def wait_for_run(self, comm: Any) -> None:
        """WAITING: MPI is up; a signal noted while it started is raised now."""
        self.comm = comm
        self.state = State.WAITING
        sys.unraisablehook = redeliver_interrupt
        self._install(self._on_wait_deferred if comm.size > 1 and not comm.is_root else raise_interrupt)
        if self.early:
            raise KeyboardInterrupt(self.early)

    def start_run(self) -> dict[int, Any]:
        """RUNNING: the run's graceful stop; returns the handlers it replaced. A signal this
        rank noted while waiting is taken by the run (it stops at its first check)."""
        self.ctx = None
        self.pending = None
        self._before_run = self.state
        previous = self._install(self._on_run)
        self.state = State.RUNNING
        noted = self.take_noted()  # atomic: see _run_not_started
        if noted is not None and self.pending is None:
            self.pending = noted
        return previous

    def attach(self, ctx: Any) -> None:
        """The run context exists: a signal kept for it interrupts it now."""
        self.ctx = ctx
        if self.pending is not None:
            ctx.interrupted = self.pending
            ctx.watchdog.arm(self.pending)

    def finish(self) -> None:
        """FINISHING: signals are ignored from now on."""
        self.state = State.FINISHING
        self.ctx = None
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    def restore(self, previous: dict[int, Any]) -> None:
        """Put back the handlers start_run replaced, and the state before the run."""
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        self.state = self._before_run
        self.ctx = None

    def take_noted(self) -> str | None:
        """The signal noted while waiting, taken once (by the run or by the deadline)."""
        with self._lock:
            name, self.noted = self.noted, None
        return name

    # -- handlers ---------------------------------------------------------------------------
    def _install(self, handler: Any) -> dict[int, Any]:
        return {signum: signal.signal(signum, handler) for signum in SIGNALS}

    def _on_boot(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.rank_hint is not None and self.early is None:
            self.early = name
            return
        # os._exit, and os.write rather than print: the signal may land inside an import or a
        # write to stderr, and nothing of this process needs undoing yet.
        if not self.rank_hint:
            line = f"mpibench: error: interrupted by {name} {NOT_STARTED}\n"
            try:
                os.write(sys.stderr.fileno(), line.encode(errors="replace"))
            except (OSError, ValueError):
                pass
        os._exit(EXIT_INTERRUPTED)

    def _on_wait_deferred(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        with self._lock:
            first = not self._noted_ever
            if first:
                self._noted_ever = True
                self.noted = name
        if first:
            deadline = threading.Timer(RUN_STARTS_WITHIN_S, self._run_not_started, (name,))
            deadline.daemon = True  # a run that took the signal ends without waiting for it
            deadline.start()
            return
        raise KeyboardInterrupt(name, "again")

    def _run_not_started(self, name: str) -> None:
        """The deadline of a signal noted while waiting: unless the run took it (or the rank
        reported it), end the job with one line (a daemon timer's thread)."""
        if self.take_noted() is None:
            return
        comm = self.comm
        print(f"mpibench: error: rank {comm.rank}: interrupted by {name} and the run did not start within "
              f"{RUN_STARTS_WITHIN_S:.0f} s: aborting the job; the run directory may keep files, remove it by hand",
              file=sys.stderr, flush=True)
        comm.abort(EXIT_INTERRUPTED)

    def _on_run(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        ctx = self.ctx
        if ctx is None:  # raising here could leave other ranks in a collective: the run sees it first thing
            if self.pending is None:
                self.pending = name
            return
        if ctx.interrupted is not None:
            ctx.watchdog.abort(f"{name} during the graceful stop after {ctx.interrupted}")
            return
        ctx.interrupted = name
        ctx.watchdog.arm(name)


def raise_interrupt(signum: int, _frame: Any) -> None:
    """A handler: raise KeyboardInterrupt naming the signal."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def redeliver_interrupt(unraisable: Any) -> None:
    """sys.unraisablehook: a KeyboardInterrupt raised where Python cannot propagate it (a
    weakref callback of the import system, a __del__) would be printed with a traceback
    and lost; the signal is sent again instead, to be raised where the code handles it."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        name = unraisable.exc_value.args[0] if unraisable.exc_value.args else "SIGINT"
        threading.Timer(0.001, os.kill, (os.getpid(), signal.Signals[name])).start()
        return
    sys.__unraisablehook__(unraisable)

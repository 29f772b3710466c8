"""A fault-injecting wrapper around any backend, for the reliability tests.

When MPIBENCH_FAULT is set (mpibench/faults.py: the spec language), the registry hands out
a subclass of the configured backend made here, so the hot loop (engine.py, uring.py) and
the driver (run.py, context.py) carry no test hooks: a fault fires in the backend's own
calls, as a failing storage's would.

- `begin(step, rank)` (the run's steps: "start" when a rank sets up, "preflight" on rank
  0 once the run directory exists, then each phase's name) runs the pause and pids faults
  and arms the step's mid-phase fault;
- an armed raise/ioerror/sleep fault fires in the I/O call (or metadata operation) after
  `after_ops` operations;
- `fd_for` is None: every operation goes through the wrapped calls (threads, not io_uring).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from mpibench import faults
from mpibench.backends.base import Backend

_WRAPPED: dict[type[Backend], type[Backend]] = {}


def active() -> list[faults.Fault]:
    """The faults MPIBENCH_FAULT asks for (empty in a normal run)."""
    return faults.parse()


def wrap(cls: type[Backend]) -> type[Backend]:
    """A subclass of `cls` whose instances inject the faults of MPIBENCH_FAULT."""
    if cls not in _WRAPPED:
        _WRAPPED[cls] = type(f"Faulty{cls.__name__}", (_Faulty, cls), {"__module__": __name__})
    return _WRAPPED[cls]


class _Faulty(Backend):
    """The wrapper's methods, first in the MRO of wrap(cls): each calls the wrapped backend's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._faults = active()
        self._armed: faults.Fault | None = None
        self._ops = 0
        self._lock = threading.Lock()

    def begin(self, step: str, rank: int) -> None:
        super().begin(step, rank)
        if step == "start":
            faults.at_start(self._faults, rank)
            return
        faults.before_phase(self._faults, rank, step)
        with self._lock:
            self._armed = faults.mid_phase(self._faults, rank, step)
            self._ops = 0

    def _operation(self) -> None:
        """Count one operation; fire the armed fault once `after_ops` are done."""
        with self._lock:
            fault = self._armed
            if fault is not None and self._ops >= fault.after_ops:
                self._armed = None
            else:
                fault = None
            self._ops += 1
        if fault is not None:
            fault.trigger()

    def fd_for(self, handle: Any) -> int | None:
        return None

    # -- the metadata operations: each one operation ------------------------------------------
    def create_in(self, handle: Any, name: str, buf: memoryview, fsync: bool = False) -> int:
        self._operation()
        return super().create_in(handle, name, buf, fsync)

    def stat_in(self, handle: Any, name: str) -> int:
        self._operation()
        return super().stat_in(handle, name)

    def read_in(self, handle: Any, name: str, buf: memoryview) -> int:
        self._operation()
        return super().read_in(handle, name, buf)

    def rename_in(self, handle: Any, name: str, new_name: str) -> None:
        self._operation()
        super().rename_in(handle, name, new_name)

    def unlink_in(self, handle: Any, name: str, missing_ok: bool = False) -> None:
        self._operation()
        super().unlink_in(handle, name, missing_ok)

    def writer(self, handle: Any, view: memoryview) -> Callable[[int], int]:
        inner = super().writer(handle, view)

        def write(offset: int) -> int:
            self._operation()
            return inner(offset)

        return write

    def reader(self, handle: Any, view: memoryview, keep: bool = True) -> Callable[[int], int]:
        inner = super().reader(handle, view, keep)

        def read(offset: int) -> int:
            self._operation()
            return inner(offset)

        return read

"""Fault specs for the reliability tests, read from the MPIBENCH_FAULT variable (injected by
the backend wrapper mpibench/backends/faulty.py).

Never set in normal runs. Specs are separated by ';', fields by ':' after the action:

    raise:rank=1:phase=write:after_ops=3         raise an exception on rank 1 mid-phase
    ioerror:rank=1:phase=write:after_ops=3       raise an I/O error (BenchIOError) instead;
                                                 phase=start: as the rank sets up, before any phase
    sleep:rank=1:phase=write:after_ops=2:seconds=60  stall rank 1 mid-phase
                                                 (with dir=/tmp/x: creating /tmp/x/stalled first)
    pause:phase=read:dir=/tmp/x                  before the phase, rank 0 creates
                                                 /tmp/x/paused and waits for /tmp/x/resume
                                                 (phase=preflight: once the run directory exists)
    pids:dir=/tmp/x                              each rank writes /tmp/x/rank-<n>.pid at start
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

ENV = "MPIBENCH_FAULT"
PAUSE_LIMIT_S = 120.0


class InjectedFault(RuntimeError):
    """The exception a `raise` fault throws."""


@dataclass(frozen=True)
class Fault:
    """One parsed fault spec."""

    action: str
    rank: int | None = None
    phase: str | None = None
    after_ops: int = 0
    seconds: float = 0.0
    directory: str = ""

    def applies(self, rank: int, phase: str) -> bool:
        """True when this fault targets `rank` in `phase`."""
        return (self.rank is None or self.rank == rank) and (self.phase is None or self.phase == phase)

    def trigger(self) -> None:
        """Do the mid-phase fault (called once, when after_ops operations are done)."""
        if self.action == "raise":
            raise InjectedFault(f"injected fault in phase {self.phase}")
        if self.action == "ioerror":
            from mpibench.errors import BenchIOError

            raise BenchIOError(f"injected I/O error in phase {self.phase}", "a test asked for it")
        if self.action == "sleep":
            if self.directory:  # tells a test that the stall has begun
                open(os.path.join(self.directory, "stalled"), "w").close()
            time.sleep(self.seconds)


def parse(text: str | None = None) -> list[Fault]:
    """The faults in MPIBENCH_FAULT (or `text`)."""
    text = os.environ.get(ENV, "") if text is None else text
    faults = []
    for spec in filter(None, (s.strip() for s in text.split(";"))):
        action, *fields = spec.split(":")
        values = dict(f.split("=", 1) for f in fields if "=" in f)
        faults.append(Fault(
            action=action,
            rank=int(values["rank"]) if "rank" in values else None,
            phase=values.get("phase"),
            after_ops=int(values.get("after_ops", 0)),
            seconds=float(values.get("seconds", 0)),
            directory=values.get("dir", ""),
        ))
    return faults


def mid_phase(faults: list[Fault], rank: int, phase: str) -> Fault | None:
    """The raise/sleep fault for this rank and phase, if any."""
    return next((f for f in faults if f.action in ("raise", "ioerror", "sleep") and f.applies(rank, phase)),
                None)


def before_phase(faults: list[Fault], rank: int, phase: str) -> None:
    """Run the pause faults for this phase (rank 0 waits for the test to say resume)."""
    for fault in faults:
        if fault.action == "pause" and rank == 0 and fault.applies(rank, phase):
            open(os.path.join(fault.directory, "paused"), "w").close()
            deadline = time.monotonic() + PAUSE_LIMIT_S
            resume = os.path.join(fault.directory, "resume")
            while not os.path.exists(resume) and time.monotonic() < deadline:
                time.sleep(0.02)


def at_start(faults: list[Fault], rank: int) -> None:
    """Write this rank's pid where a `pids` fault asks for it; raise a phase=start fault."""
    for fault in faults:
        if fault.action == "pids":
            with open(os.path.join(fault.directory, f"rank-{rank}.pid"), "w", encoding="ascii") as handle:
                handle.write(str(os.getpid()))
        elif fault.action in ("raise", "ioerror") and fault.applies(rank, "start"):
            fault.trigger()

"""Progress of the current phase on rank 0, fed by a sampling thread (nothing per operation).

Two displays read the same sampling: a bar on a terminal (`ProgressBar`) and, where the
output is a pipe or a file (every launcher: mpiexec, srun), a plain line every few seconds
(`ProgressLines`). Both show the whole job's progress estimated as rank 0's bytes times the
number of ranks, which is exact for balanced phases.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

from tqdm import tqdm

from mpibench.units import MiB

LINE_PERIOD_S = 3.0  # a plain progress line this often (the issue asks for one at least every 5 s)


class _Sampler:
    """Reads a phase recorder's byte count every `period` seconds on a thread of its own."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, label: str, recorder: Any, ranks: int, expected_bytes: int | None) -> None:
        """Begin showing a phase whose rank-0 recorder is `recorder`."""
        self.stop()
        self._stop.clear()
        self.begin(label, expected_bytes)
        started = time.monotonic()

        def sample() -> None:
            while not self._stop.wait(self.period):
                self.update(recorder.bytes * ranks, time.monotonic() - started)

        self._thread = threading.Thread(target=sample, name="mpibench-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the display of the current phase."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.end()

    def begin(self, label: str, expected_bytes: int | None) -> None:
        """A phase starts (display-specific)."""

    def update(self, done_bytes: int, elapsed_s: float) -> None:
        """The job has moved about `done_bytes` in `elapsed_s` seconds (display-specific)."""

    def end(self) -> None:
        """The phase ended (display-specific)."""


class ProgressBar(_Sampler):
    """A tqdm bar on stderr, counted in MiB (1024-based, and labelled so)."""

    def __init__(self, period: float = 0.25) -> None:
        super().__init__(period)
        self._bar: Any = None
        self._shown = 0

    def begin(self, label: str, expected_bytes: int | None) -> None:
        """Open the bar of a phase."""
        self._shown = 0
        self._bar = tqdm(total=expected_bytes / MiB if expected_bytes else None, desc=label, unit="MiB",
                         bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} MiB [{elapsed}<{remaining}, {rate_fmt}]"
                         if expected_bytes else "{desc}: {n:.0f} MiB [{elapsed}, {rate_fmt}]",
                         leave=False, dynamic_ncols=True)

    def update(self, done_bytes: int, elapsed_s: float) -> None:
        """Advance the bar to `done_bytes`."""
        if done_bytes > self._shown:
            self._bar.update((done_bytes - self._shown) / MiB)
            self._shown = done_bytes

    def end(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def progress_line(label: str, done_bytes: int, expected_bytes: int | None, elapsed_s: float,
                  current_MiBps: float) -> str:
    """One plain progress line: phase, percent, current and average MiB/s, ETA."""
    average = done_bytes / MiB / elapsed_s if elapsed_s > 0 else 0.0
    if expected_bytes:
        pct = min(100.0, 100.0 * done_bytes / expected_bytes)
        left = max(0, expected_bytes - done_bytes)
        eta = f"ETA {left / MiB / average:.0f} s" if average > 0 else "ETA -"
        share = f"{pct:5.1f}%"
    else:
        share, eta = "    -%", "ETA -"
    return (f"progress: {label}: {share}, {done_bytes / MiB:.0f} MiB, {current_MiBps:.1f} MiB/s now, "
            f"{average:.1f} MiB/s average, {elapsed_s:.0f} s elapsed, {eta}")


class ProgressLines(_Sampler):
    """A plain line every `period` seconds on stderr: what a log file of a launcher can hold."""

    def __init__(self, period: float = LINE_PERIOD_S, stream: TextIO | None = None) -> None:
        super().__init__(period)
        self.stream = stream
        self._label = ""
        self._expected: int | None = None
        self._last = (0, 0.0)

    def begin(self, label: str, expected_bytes: int | None) -> None:
        """Remember the phase's name and size."""
        self._label, self._expected, self._last = label, expected_bytes, (0, 0.0)

    def update(self, done_bytes: int, elapsed_s: float) -> None:
        """Print the line (the current rate is over the last period)."""
        last_bytes, last_s = self._last
        current = (done_bytes - last_bytes) / MiB / (elapsed_s - last_s) if elapsed_s > last_s else 0.0
        self._last = (done_bytes, elapsed_s)
        print(progress_line(self._label, done_bytes, self._expected, elapsed_s, current),
              file=self.stream or sys.stderr, flush=True)

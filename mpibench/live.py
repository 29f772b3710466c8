"""What rank 0 prints while a run goes on: the header once the preflight passed, each
phase's row as the phase ends (as IOR does), and the progress of the current phase.

Everything is flushed at once, so a launcher that forwards output through a pipe
(mpiexec, srun) shows it live, not when the run ends.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from mpibench.progress import ProgressBar, ProgressLines
from mpibench.report import phase_head, phase_row, run_header

PROGRESS_MODES = ("auto", "bar", "lines", "off")


def progress_display(mode: str, stderr: TextIO | None = None) -> ProgressBar | ProgressLines | None:
    """The progress display `--progress` asks for: 'auto' is the bar on a terminal, plain
    lines elsewhere (a launcher's pipe, a batch job's log file)."""
    stream = stderr or sys.stderr
    if mode == "auto":
        mode = "bar" if stream.isatty() else "lines"
    if mode == "bar":
        return ProgressBar()
    if mode == "lines":
        return ProgressLines(stream=stream)
    return None


class LiveOutput:
    """Rank 0's live output; the driver calls run_started, start/stop per phase and phase_done."""

    def __init__(self, progress: ProgressBar | ProgressLines | None, stdout: TextIO | None = None) -> None:
        self.progress = progress
        self.stdout = stdout
        self.rows_printed = False
        self.header_printed = False
        self._storage = ""

    def _print(self, text: str) -> None:
        print(text, file=self.stdout or sys.stdout, flush=True)

    def run_started(self, document: dict[str, Any]) -> None:
        """Print the run's header and the phase table's head (the preflight passed)."""
        self._storage = str(((document.get("config") or {}).get("storage") or {}).get("type", ""))
        self._print(run_header(document))
        for warning in (document.get("preflight") or {}).get("warnings", []):
            self._print(f"warning: {warning}")
        self._print(phase_head())
        self.header_printed = True

    def start(self, label: str, recorder: Any, ranks: int, expected_bytes: int | None) -> None:
        """A phase begins: show its progress."""
        if self.progress is not None:
            self.progress.start(label, recorder, ranks, expected_bytes)

    def stop(self) -> None:
        """A phase's I/O is over on rank 0: stop showing its progress."""
        if self.progress is not None:
            self.progress.stop()

    def phase_done(self, phase: dict[str, Any]) -> None:
        """Print the row of a phase just reduced."""
        if self.header_printed:
            self._print(phase_row(phase))
            self.rows_printed = True

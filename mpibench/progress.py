"""A progress bar on rank 0's terminal, fed by a sampling thread (nothing per operation)."""

from __future__ import annotations

import threading
from typing import Any

from tqdm import tqdm


class ProgressBar:
    """Shows bytes, rate and ETA of the current phase for the whole job.

    Rank 0 sees only its own operations; the job's progress is estimated as rank 0's
    bytes times the number of ranks, which is exact for balanced phases.
    """

    def __init__(self, period: float = 0.25) -> None:
        self.period = period
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None

    def start(self, label: str, recorder: Any, ranks: int, expected_bytes: int | None) -> None:
        """Begin showing a phase whose rank-0 recorder is `recorder`."""
        self.stop()
        self._stop.clear()
        self._bar = tqdm(total=expected_bytes, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                         leave=False, dynamic_ncols=True)

        def sample() -> None:
            shown = 0
            while not self._stop.wait(self.period):
                done = recorder.bytes * ranks
                if done > shown:
                    self._bar.update(done - shown)
                    shown = done

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Remove the bar of the current phase."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

"""storage.type=null: every I/O succeeds at once and touches no storage (IOR's DUMMY, fio's
null engine). What a run on it measures is mpibench's own cost per operation: the loop,
the clock readings, the stamps of written data, the phase protocol."""

from __future__ import annotations

import functools
import operator
from typing import Any

from mpibench.backends.base import Backend
from mpibench.config import StorageConfig

#: what a phase's cache record and the preflight say about a run on null storage
NULL_NOTE = ("null storage: no I/O reaches any storage; the figures are mpibench's own cost "
             "per operation, not a storage's")


class NullBackend(Backend):
    """Writes and reads return the full length at once; nothing is kept, nothing is read.

    Reads leave the buffer as it was (so `verify` is refused in the configuration); the
    namespace (directories, removal, eviction) does nothing.
    """

    name = "null"
    direct = True  # no client cache either: eviction "works"

    def __init__(self, storage: StorageConfig) -> None:
        super().__init__(storage)

    @classmethod
    def preflight_storage(cls, config: Any, run_key: str, planned_bytes: int, layout: Any,
                          threads: int) -> dict[str, Any]:
        """Nothing to check; the run and its results say what null storage measures."""
        return {"checks": ["storage.type=null: every I/O returns at once, nothing is stored"],
                "warnings": [NULL_NOTE]}

    def open(self, key: str, mode: str) -> Any:
        return key

    def write_at(self, handle: Any, buf: memoryview, offset: int) -> int:
        return len(buf)

    def read_at(self, handle: Any, buf: memoryview, offset: int) -> int:
        return len(buf)

    def writer(self, handle: Any, view: memoryview) -> Any:
        # operator.length_hint(view, offset) is len(view): a builtin call, no Python frame,
        # so the engine's loop is measured with as little of the backend's own cost as
        # POSIX's os.pwrite adds.
        return functools.partial(operator.length_hint, view)

    def reader(self, handle: Any, view: memoryview, keep: bool = True) -> Any:
        return functools.partial(operator.length_hint, view)

    def close(self, handle: Any) -> None:
        pass

    def remove(self, key: str) -> None:
        pass

    def size_of(self, key: str) -> int:
        return 0  # nothing is stored

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "note": NULL_NOTE}

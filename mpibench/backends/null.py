"""storage.type=null: every I/O succeeds at once and touches no storage (IOR's DUMMY, fio's
null engine). What a run on it measures is mpibench's own cost per operation: the loop,
the clock readings, the stamps of written data, the phase protocol."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mpibench.backends.base import AccessHints, Backend, StoragePlan
from mpibench.config import StorageConfig

if TYPE_CHECKING:
    from mpibench.comm import NodeLayout
    from mpibench.config import Config

#: what a phase's cache record and the preflight say about a run on null storage
NULL_NOTE = ("null storage: no I/O reaches any storage; the figures are mpibench's own cost "
             "per operation, not a storage's")
#: a phase's cache record on null storage
NULL_CACHE = {"state": "none", "method": "null storage: no I/O reaches any storage; the figures are "
                                         "mpibench's own cost per operation"}


class NullBackend(Backend):
    """Writes and reads return the full length at once; nothing is kept, nothing is read.

    Reads leave the buffer as it was (so `verify` is refused in the configuration); the
    namespace (directories, removal, eviction) does nothing.
    """

    name = "null"
    direct = True  # no client cache either: eviction "works"
    preflight_checks = ("nothing: storage.type=null stores nothing and reads nothing",)

    def __init__(self, storage: StorageConfig) -> None:
        super().__init__(storage)

    @classmethod
    def preflight(cls, config: Config, run_key: str, planned_bytes: int, layout: NodeLayout,
                  hints: AccessHints, threads: int) -> StoragePlan:
        """Nothing to check; the run and its results say what null storage measures."""
        return StoragePlan(run_key=run_key,
                           checks=("storage.type=null: every I/O returns at once, nothing is stored",),
                           warnings=(NULL_NOTE,))

    @classmethod
    def default_io_depth(cls, layout: NodeLayout) -> int:
        """One operation at a time: what is measured is mpibench's own cost per operation."""
        return 1

    @classmethod
    def io_depth_reason(cls, cpus: int, ranks: int) -> str:
        return "null storage: one operation at a time, to measure mpibench's own cost per operation"

    def cache_state(self) -> dict[str, Any] | None:
        return dict(NULL_CACHE)

    def open(self, key: str, mode: str) -> Any:
        return key

    def write_at(self, handle: Any, buf: memoryview, offset: int) -> int:
        return len(buf)

    def read_at(self, handle: Any, buf: memoryview, offset: int) -> int:
        return len(buf)

    def writer(self, handle: Any, view: memoryview) -> Callable[[int], int]:
        # operator.length_hint(view, offset) is len(view): a builtin call, no Python frame,
        # so the engine's loop is measured with as little of the backend's own cost as
        # POSIX's os.pwrite adds.
        return functools.partial(operator.length_hint, view)

    def reader(self, handle: Any, view: memoryview, keep: bool = True) -> Callable[[int], int]:
        return functools.partial(operator.length_hint, view)

    def close(self, handle: Any) -> None:
        pass

    def remove(self, key: str) -> None:
        pass

    def size_of(self, key: str) -> int:
        return 0  # nothing is stored

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "note": NULL_NOTE}

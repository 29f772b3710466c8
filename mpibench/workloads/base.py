"""The steps every workload provides to the driver: one subclass per workload module."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mpibench.backends.base import AccessHints
from mpibench.config import Config

if TYPE_CHECKING:
    from mpibench.backends.base import Backend
    from mpibench.context import PreflightInfo, RunContext


class Workload:
    """The steps every workload provides to the driver (defaults do nothing)."""

    name = "abstract"
    #: True when describe_plan(rank=-1) gives the run's totals (`mpibench plan` shows them)
    describe_totals = False
    #: preallocates the files it writes when ctx.choices.preallocate says so (mpibench.choices)
    preallocates_writes = False

    def planned_bytes(self, config: Config, size: int) -> int:
        """Bytes the run will have on storage at its peak (checked against free space)."""
        return 0

    def buffer_bytes(self, config: Config, size: int, ranks_per_node: int, io_depth: int) -> tuple[int, str, str]:
        """Memory one rank allocates for its I/O buffers (at least), the settings that
        drive it, and how to lower it; checked against the node's memory in preflight."""
        return 0, "", ""

    def requests_in_flight(self, config: Config, io_depth: int) -> int:
        """The most storage requests one rank has in flight at once (`storage.threads: auto`
        gives s3dlio's runtime no more workers than that): by default each of io_depth
        streams may be a multipart upload with storage.parts_in_flight parts on the way."""
        return io_depth * config.storage.parts_in_flight

    def access_hints(self, config: Config) -> AccessHints:
        """How this workload uses the storage, for the backend's preflight and instance
        (shared file, random writes, transfer and object size): by default each rank
        writes its own files front to back."""
        return AccessHints()

    def check(self, config: Config, size: int, alignment: int) -> None:
        """Rank 0: rules that depend on the rank count or the storage's alignment."""

    def prepare(self, config: Config, size: int, backend: Backend, info: PreflightInfo) -> None:
        """Rank 0, in preflight: create the directories the ranks will write into."""

    def run(self, ctx: RunContext) -> None:
        """Every rank: the measured phases (each through ctx.phase)."""
        raise NotImplementedError

    def cleanup(self, ctx: RunContext) -> None:
        """Every rank: remove the files this rank created."""

    def cleanup_shared(self, ctx: RunContext) -> None:
        """Rank 0, after every rank's cleanup: remove shared files."""

    def summarize(self, ctx: RunContext) -> dict[str, Any]:
        """Rank 0: workload-specific figures added to the results document."""
        return {}

    def report_lines(self, document: dict[str, Any]) -> list[str]:
        """Lines printed after the phase table (workload figures such as AU% or files/s)."""
        return []

    def csv_columns(self) -> list[str]:
        """Columns this workload adds to every CSV row (after the common ones)."""
        return []

    def csv_values(self, document: dict[str, Any], phase: dict[str, Any]) -> list[Any]:
        """The values of csv_columns for one phase."""
        return []


    def describe_plan(self, config: Config, size: int, rank: int, ranks_per_node: int,
                      num_nodes: int) -> dict[str, Any]:
        """What `rank` would do, without I/O (for `mpibench plan`)."""
        return {}

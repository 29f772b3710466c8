"""What a recorded phase says about itself: whether it writes, what its block devices
counted, and the warning of a buffered write that may have stayed in the page cache.
Read from the phase record alone (results, the loader's migrations and the reports use it)."""

from __future__ import annotations

from typing import Any

WRITE_PHASES = ("write", "datagen")  # phase names that write (a phase recording `fsync` writes too)
FSYNC_KEYS = {"bandwidth": "bandwidth.fsync", "checkpoint": "checkpoint.fsync", "metadata": "metadata.fsync"}


def phase_writes(phase: dict[str, Any]) -> bool:
    """True for a phase that writes (bandwidth and checkpoint writes, datagen), False for one that reads."""
    return phase.get("name") in WRITE_PHASES or "fsync" in phase


def device_bytes(phase: dict[str, Any]) -> tuple[int, int] | None:
    """(read, written) bytes of the block devices under the root during the phase, summed over
    hosts (per node and counting every process of the node), or None when unknown."""
    devices = [h["block_device"] for h in phase.get("hosts") or [] if h.get("block_device")]
    if not devices:
        return None
    return (sum(int(d.get("read_bytes", 0)) for d in devices), sum(int(d.get("write_bytes", 0)) for d in devices))


def unsynced_write(phase: dict[str, Any], buffered: bool) -> bool:
    """A write phase whose data may still sit in the page cache when it ends: buffered
    storage (a client page cache) and not fsynced. /proc/self/io write_bytes counts its
    pages when they are dirtied, not when they reach the device."""
    state = (phase.get("cache") or {}).get("state")
    return buffered and phase_writes(phase) and phase.get("fsync") is False and state in (None, "buffered")


def write_cache_warning(phase: dict[str, Any], buffered: bool, workload: str) -> str | None:
    """Why a write phase's bandwidth may be the page cache's (written without fsync), or None."""
    if not unsynced_write(phase, buffered):
        return None
    requested = int(phase.get("bytes", 0))
    device = device_bytes(phase)
    if device is None:
        verb, seen = "may include", "the block device's own counter is not available here"
    else:
        verb = "includes" if device[1] < requested else "may include"
        seen = (f"{device[1]} of {requested} bytes reached the device during the phase, by the device's own "
                "counter: per node, every process")
    return (f"write phase on local_fs without fsync: the figure {verb} data left in the page cache ({seen}); "
            f"set {FSYNC_KEYS.get(workload, 'fsync')}=true to measure the storage")

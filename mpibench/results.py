"""Reduction of per-rank values into phase figures, and the versioned results document.

Every figure in a results file is recomputable from the per-rank values it holds:
phase bandwidth = sum of rank bytes / (latest rank end - earliest rank start), as IOR
defines it (MPI_MIN over starts, MPI_MAX over ends).
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import tempfile
import warnings
from typing import Any

import numpy as np

from mpibench.errors import ResultsError
from mpibench.metrics import LatencyHistogram
from mpibench.phase_notes import (  # noqa: F401  (names the readers take from here)
    FSYNC_KEYS,
    WRITE_PHASES,
    device_bytes,
    phase_writes,
    unsynced_write,
    write_cache_warning,
)
from mpibench.schema_versions import SCHEMA_VERSION, migrate
from mpibench.units import GiB, MiB

KNOWN_SCHEMA_VERSIONS = tuple(range(1, SCHEMA_VERSION + 1))  # every one is migrated on load
FRESH_NAME_TRIES = 1000  # names tried beside a results file that appeared during the run


def phase_bandwidth(ranks: list[dict[str, Any]]) -> tuple[int, float, float, float]:
    """(total bytes, earliest start, latest end, MiB/s) over the per-rank records."""
    total = sum(int(r["bytes"]) for r in ranks)
    start = min(float(r["start"]) for r in ranks)
    end = max(float(r["end"]) for r in ranks)
    seconds = end - start
    return total, start, end, (total / MiB / seconds if seconds > 0 else 0.0)


def rank_spread(ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-rank bandwidth spread and the straggler (the rank that finished last)."""
    bws = sorted(float(r["bandwidth_MiBps"]) for r in ranks)
    median = statistics.median(bws)
    slowest = min(ranks, key=lambda r: float(r["bandwidth_MiBps"]))
    last = max(ranks, key=lambda r: float(r["end"]))
    first_end = min(float(r["end"]) for r in ranks)
    return {
        "min_MiBps": bws[0],
        "median_MiBps": median,
        "max_MiBps": bws[-1],
        "slowest_rank": int(slowest["rank"]),
        "slowest_host": slowest.get("host", ""),
        "slowest_over_median": (float(slowest["bandwidth_MiBps"]) / median) if median > 0 else 0.0,
        "last_rank": int(last["rank"]),
        "last_host": last.get("host", ""),
        "last_behind_first_s": float(last["end"]) - first_end,
    }


def host_bandwidth(ranks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bandwidth of each host (its ranks' bytes over its own span), slowest first."""
    hosts: dict[str, list[dict[str, Any]]] = {}
    for record in ranks:
        hosts.setdefault(str(record.get("host", "")), []).append(record)
    rows = []
    for host, group in hosts.items():
        total, start, end, bw = phase_bandwidth(group)
        device = next((r["block_device"] for r in group if r.get("block_device")), None)
        rows.append({"host": host, "ranks": len(group), "bytes": total, "start": start, "end": end,
                     "bandwidth_MiBps": bw, "block_device": device})
    return sorted(rows, key=lambda row: row["bandwidth_MiBps"])


def client_cpu(ranks: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """{"client_cpu": ...}: the CPU the ranks' processes used during the phase (all their
    threads), or {} for rank records without it."""
    if not ranks or any("cpu_user_s" not in r for r in ranks):
        return {}
    user = sum(float(r["cpu_user_s"]) for r in ranks)
    system = sum(float(r["cpu_system_s"]) for r in ranks)
    busiest = max(ranks, key=lambda r: (float(r["cpu_user_s"]) + float(r["cpu_system_s"]))
                  / max(float(r["end"]) - float(r["start"]), 1e-9))
    span = float(busiest["end"]) - float(busiest["start"])
    return {"client_cpu": {
        "user_s": user,
        "system_s": system,
        "cores": (user + system) / seconds if seconds > 0 else 0.0,
        "busiest_rank": int(busiest["rank"]),
        "busiest_rank_cores": (float(busiest["cpu_user_s"]) + float(busiest["cpu_system_s"])) / span
        if span > 0 else 0.0,
    }}


def summarize_phase(name: str, iteration: int, ranks: list[dict[str, Any]],
                    hist: LatencyHistogram, **meta: Any) -> dict[str, Any]:
    """One phase's record: totals, IOR bandwidth, latency, spread and the raw rank values."""
    total, start, end, bw = phase_bandwidth(ranks)
    seconds = end - start
    ops = sum(int(r["ops"]) for r in ranks)
    io_read = sum(int(r.get("proc_io", {}).get("read_bytes", 0)) for r in ranks)
    io_write = sum(int(r.get("proc_io", {}).get("write_bytes", 0)) for r in ranks)
    return {
        "name": name,
        "iteration": iteration,
        "bytes": total,
        "start": start,
        "end": end,
        "seconds": seconds,
        "bandwidth_MiBps": bw,
        "bandwidth_GiBps": total / GiB / seconds if seconds > 0 else 0.0,
        "bandwidth_GBps": total / 1e9 / seconds if seconds > 0 else 0.0,
        "ops": ops,
        "ops_per_s": ops / seconds if seconds > 0 else 0.0,
        "latency": hist.summary(),
        "latency_histogram": hist.to_sparse(),
        "spread": rank_spread(ranks),
        "hosts": host_bandwidth(ranks),
        "storage_bytes": {"read_bytes": io_read, "write_bytes": io_write},
        **client_cpu(ranks, seconds),
        "stonewalled": any(r.get("stonewalled") for r in ranks),
        **meta,
        "ranks": ranks,
    }


def annotate_storage(phase: dict[str, Any], buffered: bool, workload: str) -> None:
    """A write phase left in the page cache of buffered storage gets
    `cache.device_write_bytes` (the device's counter, or null) and a warning. (What the
    cache means on other storage is the backend's cache_state, recorded by the workload.)
    Every phase with device counters gets its amplification (annotate_amplification)."""
    annotate_amplification(phase)
    warning = write_cache_warning(phase, buffered, workload)
    if warning is None:
        return
    device = device_bytes(phase)
    cache = dict(phase.get("cache") or {"state": "buffered", "method": "page cache"})
    cache["device_write_bytes"] = device[1] if device is not None else None
    cache["warning"] = warning
    phase["cache"] = cache


def annotate_amplification(phase: dict[str, Any]) -> None:
    """`device_per_payload`: the block device's bytes in the phase's direction (written for a
    write phase, read for a read) per byte the phase moved; more than 1 is write or read
    amplification (padding to the alignment, metadata, journal, read-ahead), less than 1 data
    the page cache kept or served. Absent where the device's counters are unknown (S3, no
    block device). The counters count every process of the node, so a busy device
    shows its other work too."""
    device = device_bytes(phase)
    payload = int(phase.get("bytes", 0))
    if device is None or payload <= 0:
        return
    phase["device_per_payload"] = (device[1] if phase_writes(phase) else device[0]) / payload


def summarize_repetitions(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median, min, max and spread of bandwidth for each phase name over its iterations."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for phase in phases:
        by_name.setdefault(phase["name"], []).append(phase)
    rows = []
    for name, group in by_name.items():
        bws = [p["bandwidth_MiBps"] for p in group]
        med = statistics.median(bws)
        rows.append({
            "name": name,
            "iterations": len(group),
            "median_MiBps": med,
            "min_MiBps": min(bws),
            "max_MiBps": max(bws),
            "spread_pct": (max(bws) - min(bws)) / med * 100 if med > 0 else 0.0,
            "mean_MiBps": statistics.fmean(bws),
            "stdev_MiBps": statistics.stdev(bws) if len(bws) > 1 else 0.0,
            "bytes": sum(p["bytes"] for p in group),
        })
    return rows


def _umask_mode() -> int:
    """0o666 less the process umask: what open() would have given a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_json_atomic(path: str, document: dict[str, Any], force: bool = False) -> str:
    """Write a JSON document via a temporary file and rename; return the path written.

    Without `force` an existing file is never replaced: measured results go to a fresh
    name beside it instead (see `write_new_text`).
    """
    text = json.dumps(document, indent=1, default=_json_default) + "\n"
    if force:
        write_text_atomic(path, text)
        return path
    return write_new_text(path, text, str(document.get("run_id") or "results"))


def write_text_atomic(path: str, text: str) -> None:
    """Write a text file durably via a temporary file and rename (readers never see half)."""
    tmp = _write_temporary(path, text)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def write_new_text(path: str, text: str, run_id: str) -> str:
    """Write a text file durably without replacing anything; return the path written.

    A file that appeared at `path` since the pre-run check (someone else's) is left as it
    is and the text goes to `<stem>-<run_id><ext>` beside it (`-2`, `-3`, ... appended
    while that is taken too), so measured results are never lost nor overwrite anything.
    """
    tmp = _write_temporary(path, text)
    try:
        stem, ext = os.path.splitext(path)
        candidates = itertools.chain([path, f"{stem}-{run_id}{ext}"],
                                     (f"{stem}-{run_id}-{n}{ext}" for n in range(2, FRESH_NAME_TRIES + 1)))
        for candidate in candidates:
            if _publish(tmp, candidate):
                if candidate != path:
                    warnings.warn(f"{path} appeared during the run and is left as it is; "
                                  f"wrote {candidate} instead", stacklevel=2)
                return candidate
        raise ResultsError(f"{path} and {FRESH_NAME_TRIES} fresh names beside it are taken",
                           "remove old results beside it")
    finally:
        _unlink_quietly(tmp)


def _publish(tmp: str, path: str) -> bool:
    """Give the written temporary file the name `path` unless that exists (False then)."""
    try:
        os.link(tmp, path)  # atomic, and fails if anything (even a dangling link) has the name
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links on this filesystem: check, then rename
        if os.path.lexists(path):
            return False
        os.rename(tmp, path)
        return True


def _write_temporary(path: str, text: str) -> str:
    """A hidden temporary file beside `path` holding `text`, flushed to the disk."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".mpibench-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _umask_mode())
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def check_output_path(path: str, force: bool, option: str = "--output") -> None:
    """Fail before any I/O when the file `option` names could not be written at the end.

    The directory is proven writable by creating and removing a file in it: permission
    bits say nothing for root, and some directories (/proc, /sys) refuse new files anyway.
    """
    what = "results file" if option == "--output" else "CSV file"
    if not path:
        raise ResultsError(f"{option} is empty", f"give a file name, e.g. {option} {_EXAMPLES[option]}")
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise ResultsError(f"{what} {path} is a directory", f"give a file name, e.g. {option} {_EXAMPLES[option]}")
    if os.path.lexists(path) and not force:
        raise ResultsError(f"{what} {path} already exists", f"choose another {option} or pass --force")
    if not os.path.isdir(directory):
        raise ResultsError(f"directory of {what} {path} does not exist", f"create {directory} first")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ResultsError(f"cannot write {what} {path}: directory {directory} is not writable",
                           f"choose a writable {option}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".mpibench-", suffix=".probe", dir=directory)
    except OSError as exc:
        raise ResultsError(f"cannot write {what} {path}: no file can be created in {directory} "
                           f"({exc.strerror or exc})", f"choose a writable {option}") from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError as exc:
        raise ResultsError(f"cannot remove the test file {probe} ({exc.strerror or exc})",
                           f"remove it by hand and choose another {option}") from None


_EXAMPLES = {"--output": "result.json", "--csv": "result.csv"}


def load_results(path: str) -> dict[str, Any]:
    """Read a results file, refusing schema versions this mpibench does not know, and bring
    an older one to the current version (schema_versions.migrate)."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except FileNotFoundError:
        raise ResultsError(f"results file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ResultsError(f"cannot read results file {path}: {exc}") from None
    if not isinstance(document, dict) or "schema_version" not in document:
        raise ResultsError(f"{path} is not an mpibench results file (no schema_version)")
    version = document["schema_version"]
    if version not in KNOWN_SCHEMA_VERSIONS:
        raise ResultsError(
            f"{path} has results schema version {version}, this mpibench reads {', '.join(map(str, KNOWN_SCHEMA_VERSIONS))}",
            "use the mpibench version that wrote it",
        )
    return migrate(document)

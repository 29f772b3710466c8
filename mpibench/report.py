"""Text tables of a results document (what rank 0 prints at the end of a run)."""

from __future__ import annotations

import statistics
from typing import Any

from mpibench.results import phase_writes
from mpibench.units import format_size


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def phase_table(document: dict[str, Any]) -> str:
    """One row per phase and iteration, then median/min/max over iterations."""
    lines = []
    header = (f"{'phase':<10}{'iter':>5}{'bytes':>14}{'seconds':>10}{'MiB/s':>11}{'GB/s':>8}"
              f"{'ops/s':>11}{'lat mean ms':>12}{'p50 ms':>9}{'p99 ms':>9}  {'slowest rank':<14}{'cache':<8}"
              f"{'device/payload':>15}")
    lines.append(header)
    lines.append("-" * len(header))
    warnings = []
    for phase in document.get("phases", []):
        lat = phase.get("latency", {})
        spread = phase.get("spread", {})
        slow = f"{spread.get('slowest_rank', '-')} ({spread.get('slowest_over_median', 0):.2f}x)"
        flag = ("*" if phase.get("stonewalled") else "") + ("!" if phase.get("complete") is False else "")
        lines.append(
            f"{phase['name'] + flag:<10}{phase['iteration']:>5}{phase['bytes']:>14}{phase['seconds']:>10.3f}"
            f"{phase['bandwidth_MiBps']:>11.1f}{phase['bandwidth_GBps']:>8.3f}{phase['ops_per_s']:>11.0f}"
            f"{_ms(lat.get('mean_s', 0)):>12}{_ms(lat.get('p50_s', 0)):>9}{_ms(lat.get('p99_s', 0)):>9}  "
            f"{slow:<14}{cache_state(phase):<8}{amplification(phase):>15}"
        )
        warning = phase_warning(phase, document)
        if warning:
            warnings.append(f"warning: {phase['name']} iteration {phase['iteration']}: {warning}")
    summary = document.get("summary", [])
    if summary:
        lines.append("")
        lines.append(f"{'phase':<10}{'iters':>6}{'median MiB/s':>14}{'min MiB/s':>11}{'max MiB/s':>11}{'spread %':>10}"
                     f"{'client CPU cores':>18}")
        for row in summary:
            lines.append(f"{row['name']:<10}{row['iterations']:>6}{row['median_MiBps']:>14.1f}"
                         f"{row['min_MiBps']:>11.1f}{row['max_MiBps']:>11.1f}{row['spread_pct']:>10.1f}"
                         f"{client_cores(document, row['name']):>18}")
    if any("device_per_payload" in p for p in document.get("phases", [])):
        lines.append("device/payload: bytes the block device under storage.root wrote (write phases) or read "
                     "(reads) per byte moved, every process of the node counted")
    if any(p.get("stonewalled") for p in document.get("phases", [])):
        lines.append("* stonewalled: ranks stopped at the deadline; bytes are those moved by then")
    if any(p.get("complete") is False for p in document.get("phases", [])):
        lines.append("! incomplete: the phase was stopped by an error or a signal; figures cover what was done")
    lines.extend(warnings)
    note = ((document.get("environment") or {}).get("backend") or {}).get("note")
    if note:  # what the backend says its figures are (null storage: mpibench's own cost)
        lines.append(f"note: {note}")
    lines.extend(upload_notes(document))
    lines.extend(workload_lines(document))
    return "\n".join(lines)


def amplification(phase: dict[str, Any]) -> str:
    """The phase's device bytes per payload byte as "1.02x", or "-" where unknown."""
    ratio = phase.get("device_per_payload")
    return "-" if ratio is None else f"{ratio:.2f}x"


def client_cores(document: dict[str, Any], name: str) -> str:
    """The median over a phase name's iterations of the cores its ranks kept busy (all
    ranks together), or "-" for results without it."""
    cores = [p["client_cpu"]["cores"] for p in document.get("phases", [])
             if p.get("name") == name and p.get("client_cpu")]
    return f"{statistics.median(cores):.2f}" if cores else "-"


def storage_type(document: dict[str, Any]) -> str:
    """The run's storage.type (local_fs, direct_fs, s3, null), for display."""
    return str(((document.get("config") or {}).get("storage") or {}).get("type", ""))


def backend_record(document: dict[str, Any]) -> dict[str, Any]:
    """What the run recorded about its storage (environment.backend; the loader migrates
    older versions, so its traits are always there)."""
    return dict((document.get("environment") or {}).get("backend") or {})


def cache_state(phase: dict[str, Any]) -> str:
    """The phase's cache state as recorded (direct, buffered, cold, warm, object, none)."""
    return str((phase.get("cache") or {}).get("state", "-"))


def phase_warning(phase: dict[str, Any], document: dict[str, Any]) -> str | None:
    """The phase's recorded cache warning (a buffered write that may be the page cache's)."""
    warning = (phase.get("cache") or {}).get("warning")
    return str(warning) if warning else None


def upload_at_close(phase: dict[str, Any], document: dict[str, Any]) -> bool:
    """A write phase on storage that uploads at close (S3 multipart uploads fed transfer_size
    pieces): a write call hands a buffer over, and most of the upload happens at close."""
    return bool(backend_record(document).get("uploads_at_close")) and phase_writes(phase)


def huge_page_notes(document: dict[str, Any]) -> list[str]:
    """A warning when ranks asked for huge-page buffers and the kernel granted fewer."""
    bufs = (document.get("environment") or {}).get("io_buffers") or {}
    requested, granted = int(bufs.get("huge_requested_bytes") or 0), int(bufs.get("huge_granted_bytes") or 0)
    if not bufs.get("huge_pages") or granted >= requested:
        return []
    return [f"warning: huge_pages: the kernel granted {format_size(granted)} of the {format_size(requested)} "
            "of I/O buffers asked for in huge pages; the rest are 4 KiB pages (memory too fragmented: "
            "compact it with echo 1 > /proc/sys/vm/compact_memory, or reserve memory earlier)"]


def upload_notes(document: dict[str, Any]) -> list[str]:
    """One line per S3 write phase name whose operation latencies are buffer hand-offs."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for phase in document.get("phases", []):
        if upload_at_close(phase, document):
            groups.setdefault(phase["name"], []).append(phase)
    lines = []
    for name, group in groups.items():
        ranks = [r for p in group for r in p.get("ranks", [])]
        close = max((float(r.get("close_s", 0.0)) for r in ranks), default=0.0)
        transfer = max((float(r.get("transfer_s", 0.0)) for r in ranks), default=0.0)
        size = group[0].get("transfer_size")
        how = (f"S3 multipart upload (each object written in {format_size(int(size))} pieces)" if size
               else "S3 objects uploaded at close")
        lines.append(f"note: {name}: {how}: an operation's latency is "
                     f"the hand-off of its buffer to the upload, which happens mostly at close (close up to "
                     f"{close:.3f} s, transfers up to {transfer:.3f} s per rank); the bandwidth includes the close")
    return lines


def workload_lines(document: dict[str, Any]) -> list[str]:
    """The workload's own summary lines (AU%, files/s, checkpoint GiB/s), if it has any."""
    from mpibench.errors import MpibenchError
    from mpibench.workloads import get_workload

    try:
        workload = get_workload(document.get("config", {}).get("workload", ""))
    except MpibenchError:
        return []
    return workload.report_lines(document)


def run_header(document: dict[str, Any]) -> str:
    """Who ran what, where: the lines printed before the table."""
    env = document.get("environment", {})
    cfg = document.get("config", {})
    storage = cfg.get("storage", {})
    fs = env.get("filesystem", {})
    backend = env.get("backend", {})
    if backend.get("object_store"):
        endpoints = storage.get("endpoints") or []
        where = (f", endpoints {', '.join(map(str, endpoints))} (spread over the ranks)" if len(endpoints) > 1
                 else f", endpoint {backend.get('endpoint') or fs.get('source') or '(AWS default)'}")
        where += f", bucket {backend.get('bucket') or str(storage.get('root', '')).removeprefix('s3://').split('/')[0]}"
    else:
        where = ((f", {fs.get('fstype')} on {fs.get('device')}" if fs.get("fstype") else "")
                 + (f", direct-I/O alignment {env.get('direct_io_alignment')} B" if backend.get("direct") else ""))
    parts = [
        f"mpibench {env.get('versions', {}).get('mpibench', '?')}  run {document.get('run_id')}  "
        f"workload {cfg.get('workload')}",
        f"ranks {env.get('world_size')} on {env.get('num_nodes')} node(s) "
        f"({', '.join(map(str, env.get('ranks_per_node', [])))} per node), launcher {env.get('launcher', {}).get('kind')}",
        f"storage {storage.get('type')} ({backend.get('backend')}) at {storage.get('root')}{where}",
    ]
    bufs = env.get("io_buffers") or {}
    if bufs.get("huge_pages"):
        parts.append(f"I/O buffers in 2 MiB huge pages: {format_size(int(bufs.get('huge_granted_bytes') or 0))} "
                     f"of {format_size(int(bufs.get('huge_requested_bytes') or 0))} granted")
    if cfg.get("workload") == "bandwidth":
        bw = cfg.get("bandwidth", {})
        depth = f"io_depth {env.get('io_depth')}"
        if env.get("io_engine") in ("io_uring", "threads") and (env.get("io_depth") or 1) > 1:
            depth += f" ({env['io_engine']})"
        depth += auto_choices_note(document.get("auto_choices") or {})
        parts.append(
            f"transfer {format_size(bw.get('transfer_size', 0))}, block {format_size(bw.get('block_size', 0))} per rank, "
            f"{bw.get('file_mode')}, {depth}, {bw.get('access')}, " + ("" if backend.get("object_store") else f"fsync {bw.get('fsync')}, ")
            + f"reorder_reads {bw.get('reorder_reads')}"
        )
    return "\n".join(parts)


def auto_choices_note(choices: dict[str, Any]) -> str:
    """What the header adds for the automatic write choices (mpibench.choices)."""
    write = (choices.get("write_io_depth") or {}).get("value")
    read = (choices.get("read_io_depth") or {}).get("value")
    if (choices.get("preallocate") or {}).get("value"):
        return ", writes into preallocated files (not timed)"
    if write is not None and read is not None and write != read:
        return f", writes at depth {write} (they extend files)"
    return ""

"""The `report` command: a text summary of a results file, its figures (matplotlib, Agg)
and one self-contained HTML page.

Every number shown is read from, or recomputed from, the per-rank values in the file:
phase bandwidth = sum of rank bytes / (latest rank end - earliest rank start), the time
series from each rank's `series_bytes`, latency percentiles from the merged histogram.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import os
import statistics
import sys
from typing import TYPE_CHECKING, Any

from mpibench.errors import MpibenchError, ResultsError
from mpibench.metrics import LatencyHistogram
from mpibench.report import (
    backend_record,
    cache_state,
    huge_page_notes,
    phase_warning,
    run_header,
    upload_notes,
    workload_lines,
)
from mpibench.results import (
    device_bytes,
    load_results,
    phase_bandwidth,
    phase_writes,
    summarize_repetitions,
    unsynced_write,
    write_text_atomic,
)
from mpibench.schema import validate_document
from mpibench.units import MiB, format_size

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STRAGGLER_RATIO = 0.9  # a rank below this fraction of the median rank is drawn and listed as a straggler
SHORT_TAIL = 0.25  # a last interval shorter than this fraction of interval_s is folded into the one before
MAX_ITERATION_PANELS = 3  # iterations drawn per phase: all up to this, else the slowest, median and fastest
MAX_RANK_BARS = 128  # above this many ranks the per-rank figure draws dots instead of bars
MAX_RANK_LINES = 16  # above this many ranks the time series shows the min-max band of the ranks instead
SCHEMA_SAMPLE_RANKS = 16  # rank records per phase checked against the schema on load (all: mpibench.schema)
MATCH_TOLERANCE = 1e-9  # relative difference allowed between a stored and a recomputed bandwidth
# Block-device filesystems, whose reads /proc/self/io read_bytes counts.
LOCAL_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs", "vfat"})

FIGURES = {
    "bandwidth_over_time.png": "Bandwidth over time",
    "latency_cdf.png": "Latency distribution",
    "rank_bandwidth.png": "Bandwidth per rank",
}
KVCACHE_FIGURE = "kvcache_users.png"  # a kvcache run's figure beside the three every run has
MODELLOAD_FIGURE = "modelload_cold_warm.png"  # a modelload run's cold and warm loads
READERS_FIGURE = "modelload_readers.png"  # several modelload runs: cold vs warm per reader
TITLES = {**FIGURES, KVCACHE_FIGURE: "kvcache: read latency and throughput against users",
          MODELLOAD_FIGURE: "modelload: cold and warm loads", READERS_FIGURE: "modelload: cold vs warm per reader"}

REPORT_EXAMPLES = """\
examples:
  mpibench report result.json
  mpibench report result.json --png figures/ --html report.html
  mpibench report mmap.json read.json direct.json --html readers.html   # modelload: cold vs warm per reader
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `mpibench report` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "report", help="summarise a results file as text, figures and an HTML page",
        description="Print a summary of a results file (bandwidth, IOPS, latency percentiles, stragglers, "
                    "cache state, repetitions) and optionally draw its figures.",
        epilog=REPORT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", metavar="RESULT.json", nargs="+",
                        help="results file written by `mpibench run`; several modelload files (one per reader) "
                             "give one cold-vs-warm view per reader across them")
    parser.add_argument("--html", metavar="REPORT.html", help="write one self-contained HTML page")
    parser.add_argument("--png", metavar="DIR", help="write the figures as PNG files into DIR (created if missing)")
    parser.add_argument("--force", action="store_true", help="overwrite existing HTML and PNG files")
    parser.set_defaults(handler=run_report)
    return parser


def run_report(args: argparse.Namespace) -> int:
    """Handle `mpibench report`: print the summary, write the requested figures and page."""
    if len(args.result) > 1:
        return _report_readers(args)
    args.result = args.result[0]
    try:
        document = load_document(args.result)
        if args.html:
            _check_target(args.html, args.force)
        png_paths = _png_targets(args.png, args.force, figure_names(document)) if args.png else []
        try:
            text = summary_text(document)
            print(text, flush=True)
            figures = render_figures(document) if png_paths or args.html else {}
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise malformed(args.result, exc) from None
        try:
            for path, name in png_paths:
                _write_bytes(path, figures[name])
                print(f"figure written to {path}")
            if args.html:
                write_text_atomic(args.html, html_page(document, text, figures))
                print(f"report written to {args.html}")
        except OSError as exc:
            raise ResultsError(f"cannot write {exc.filename or 'the report'}: {exc.strerror}",
                               "choose a writable place") from None
    except MpibenchError as exc:
        print(f"mpibench: error: {exc.line()}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


def _report_readers(args: argparse.Namespace) -> int:
    """`mpibench report` of several modelload results: one cold-vs-warm table per reader across
    them and one figure (READERS_FIGURE), as text, PNG and a page."""
    from mpibench.workloads.modelload import check_comparable, figure_readers, readers_text

    try:
        documents = [(path, load_document(path)) for path in args.result]
        check_comparable(documents)
        if args.html:
            _check_target(args.html, args.force)
        png_paths = _png_targets(args.png, args.force, [READERS_FIGURE]) if args.png else []
        try:
            text = readers_text(documents)
            print(text, flush=True)
            figures = ({READERS_FIGURE: figure_png(figure_readers(documents, _new_figure(9.0, 4.0)))}
                       if png_paths or args.html else {})
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ResultsError(f"a modelload results file is malformed ({type(exc).__name__}: {exc})",
                               "python -m mpibench.schema FILE lists every place it breaks the results "
                               "schema") from None
        try:
            for path, name in png_paths:
                _write_bytes(path, figures[name])
                print(f"figure written to {path}")
            if args.html:
                runs = ", ".join(str(doc.get("run_id")) for _, doc in documents)
                write_text_atomic(args.html, _page(f"mpibench report: modelload runs {runs}", text, figures, ""))
                print(f"report written to {args.html}")
        except OSError as exc:
            raise ResultsError(f"cannot write {exc.filename or 'the report'}: {exc.strerror}",
                               "choose a writable place") from None
    except MpibenchError as exc:
        print(f"mpibench: error: {exc.line()}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


def load_document(path: str) -> dict[str, Any]:
    """Read a results file (migrated to the current version) and check it against the schema."""
    document = load_results(path)
    try:
        validate_document(document, ranks_per_phase=SCHEMA_SAMPLE_RANKS)
    except ResultsError as exc:
        raise ResultsError(f"{path}: {exc.message}", exc.hint) from None
    return document


def malformed(path: str, exc: Exception) -> ResultsError:
    """The error for a results file whose values the schema check did not sample and that break."""
    return ResultsError(f"{path} is malformed ({type(exc).__name__}: {exc})",
                        f"python -m mpibench.schema {path} lists every place it breaks the results schema")


def _check_target(path: str, force: bool) -> None:
    if os.path.isdir(path):
        raise ResultsError(f"{path} is a directory", "give a file name, e.g. --html report.html")
    if os.path.exists(path) and not force:
        raise ResultsError(f"{path} already exists", "choose another name or pass --force")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) and not os.path.isdir(os.path.dirname(directory)):
        raise ResultsError(f"directory of {path} does not exist", f"create {directory} first")


def figure_names(document: dict[str, Any]) -> list[str]:
    """The figures a results document has: FIGURES, KVCACHE_FIGURE for a kvcache run and
    MODELLOAD_FIGURE for a modelload run."""
    return [*FIGURES, *([KVCACHE_FIGURE] if (document.get("kvcache") or {}).get("steps") else []),
            *([MODELLOAD_FIGURE] if (document.get("modelload") or {}).get("loads") else [])]


def _png_targets(directory: str, force: bool, names: list[str]) -> list[tuple[str, str]]:
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ResultsError(f"--png {directory} is not a directory", "give a directory for the figures")
    parent = os.path.dirname(os.path.abspath(directory))
    if not os.path.isdir(parent):
        raise ResultsError(f"cannot create {directory}: {parent} does not exist", f"create {parent} first")
    targets = [(os.path.join(directory, name), name) for name in names]
    for path, _ in targets:
        _check_target(path, force)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise ResultsError(f"cannot create {directory}: {exc.strerror}", "choose a writable --png directory") from None
    return targets


def _write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- arithmetic


def interval_rates(series_bytes: list[int], interval_s: float,
                   elapsed_s: float) -> tuple[list[float], list[float], list[float]]:
    """(left edges s, widths s, MiB/s) of each interval of a `series_bytes` list.

    Interval i covers [i * interval_s, (i + 1) * interval_s) after the rank's (or phase's)
    start; the last one ends at `elapsed_s`, and is folded into the one before when it is
    shorter than a quarter interval (a few operations over a sliver of time would read as
    a spike).
    """
    count = len(series_bytes)
    if count == 0 or interval_s <= 0:
        return [], [], []
    moved = [float(b) for b in series_bytes]
    lefts = [i * interval_s for i in range(count)]
    widths = [interval_s] * count
    tail = elapsed_s - lefts[-1]
    if 0 < tail <= interval_s:
        widths[-1] = tail
    if count > 1 and widths[-1] < SHORT_TAIL * interval_s:
        last_bytes, last_width = moved.pop(), widths.pop()
        moved[-1] += last_bytes
        widths[-1] += last_width
        lefts.pop()
    rates = [b / MiB / w for b, w in zip(moved, widths, strict=True)]
    return lefts, widths, rates


def aggregate_series(phase: dict[str, Any]) -> list[int]:
    """Bytes completed by all ranks in each interval of a phase (ranks summed index by index)."""
    total: list[int] = []
    for rank in phase.get("ranks", []):
        series = rank.get("series_bytes") or []
        if len(series) > len(total):
            total.extend([0] * (len(series) - len(total)))
        for i, moved in enumerate(series):
            total[i] += int(moved)
    return total


def merged_histogram(phases: list[dict[str, Any]]) -> LatencyHistogram:
    """The exact merge of the latency histograms of several phase records."""
    merged = LatencyHistogram()
    for phase in phases:
        sparse = phase.get("latency_histogram")
        if sparse and sparse.get("buckets"):
            merged.merge(LatencyHistogram.from_sparse(sparse))
    return merged


def latency_cdf(hist: LatencyHistogram) -> tuple[list[float], list[float]]:
    """(latency ms, fraction of operations at or below it) at the edges of the non-empty buckets.

    Bucket i covers [growth**i, growth**(i+1)) ns; the first edge is clipped to the
    smallest sample and the last to the largest, which the histogram keeps exactly.
    """
    if hist.count == 0:
        return [], []
    buckets = [int(i) for i in range(hist.NBUCKETS) if hist.counts[i] > 0]
    low = max(float(hist.min_ns), hist.GROWTH ** buckets[0])
    xs = [min(low, float(hist.max_ns)) / 1e6]
    fractions = [0.0]
    cumulative = 0
    for i in buckets:
        cumulative += int(hist.counts[i])
        upper = min(hist.GROWTH ** (i + 1), float(hist.max_ns))
        xs.append(max(upper, xs[-1] * 1e6) / 1e6)
        fractions.append(cumulative / hist.count)
    return xs, fractions


def group_by_name(phases: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Phase records by phase name, in the order the names first appear."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for phase in phases:
        groups.setdefault(phase["name"], []).append(phase)
    return groups


def stragglers(ranks: list[dict[str, Any]], ratio: float = STRAGGLER_RATIO) -> list[dict[str, Any]]:
    """The rank records of one phase whose bandwidth is below `ratio` x the median rank's."""
    if not ranks:
        return []
    middle = statistics.median(float(r["bandwidth_MiBps"]) for r in ranks)
    return [r for r in ranks if float(r["bandwidth_MiBps"]) < ratio * middle]


def recompute_mismatches(document: dict[str, Any]) -> list[str]:
    """Phases whose stored bytes, times or bandwidth differ from a recomputation from their ranks."""
    problems = []
    for phase in document.get("phases", []):
        ranks = phase.get("ranks") or []
        label = f"{phase['name']} iteration {phase['iteration']}"
        if not ranks:
            problems.append(f"{label} has no per-rank values")
            continue
        total, start, end, bandwidth = phase_bandwidth(ranks)
        stored = float(phase["bandwidth_MiBps"])
        if total != int(phase["bytes"]) or not math.isclose(stored, bandwidth, rel_tol=MATCH_TOLERANCE,
                                                            abs_tol=1e-12):
            problems.append(f"{label}: stored {stored:.6g} MiB/s over {phase['bytes']} bytes, per-rank values "
                            f"give {bandwidth:.6g} MiB/s over {total} bytes")
    return problems


def cache_warning(phase: dict[str, Any], fstype: str = "", document: dict[str, Any] | None = None) -> str | None:
    """Why a phase's bandwidth may be the page cache's, or None.

    The states `cold` and `warm` describe reads through the page cache; for them the
    bytes the kernel read from storage (/proc/self/io read_bytes) are compared with
    the bytes requested. A write phase on local_fs without fsync may have left its data
    in the page cache (see mpibench.results.write_cache_warning).
    """
    cache = phase.get("cache") or {}
    warning = phase_warning(phase, document or {})
    if warning:
        return warning
    state = cache.get("state")
    if state not in ("cold", "warm"):
        return None
    requested = int(phase.get("bytes", 0))
    storage = int((phase.get("storage_bytes") or {}).get("read_bytes", 0))
    if requested <= 0 or storage >= 0.5 * requested:
        return None
    if fstype and fstype not in LOCAL_FILESYSTEMS:
        return (f"buffered read on {fstype}: the kernel counted {storage} of {requested} bytes read from "
                "storage, but network filesystems may not count theirs; cache state unconfirmed")
    return (f"buffered read: requested {requested} bytes, storage read {storage}: "
            f"{(1 - storage / requested) * 100:.0f}% served from the page cache")


# ---------------------------------------------------------------------------- text


def _ms(seconds: Any) -> str:
    return f"{float(seconds) * 1e3:.3f}" if seconds is not None else "-"


def text_table(header: list[str], rows: list[list[str]], left: tuple[int, ...] = (0,)) -> list[str]:
    """Columns padded to their widest cell; numbers right-aligned, the `left` columns left-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).ljust(w) if i in left else str(c).rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return lines


def _label(phase: dict[str, Any]) -> str:
    """The phase name with its flags: * stonewalled, ! did not complete."""
    return (phase["name"] + ("*" if phase.get("stonewalled") else "")
            + ("!" if phase.get("complete") is False else ""))


def summary_text(document: dict[str, Any]) -> str:
    """The text report: run header, then per phase bandwidth, latency, ranks, hosts, cache; then repetitions."""
    phases = document.get("phases", [])
    lines = [run_header(document)]
    state = "complete" if document.get("complete") else f"INCOMPLETE: {document.get('incomplete_reason')}"
    lines.append(f"started {document.get('started_at')}, {state}")
    note = ((document.get("environment") or {}).get("backend") or {}).get("note")
    if note:  # what the backend says its figures are (null storage: mpibench's own cost)
        lines.append(f"note: {note}")
    if not phases:
        lines += ["", "no phases were measured"]
        return "\n".join(lines)
    fstype = str((document.get("environment") or {}).get("filesystem", {}).get("fstype", ""))
    for section in (_bandwidth_section, _latency_section, _ranks_section, _hosts_section,
                    lambda ps: _cache_section(ps, document), _repetitions_section):
        part = section(phases)
        if part:
            lines += ["", *part]
    headline = workload_lines(document)
    if headline:
        lines += headline
    lines.append("")
    if any(p.get("stonewalled") for p in phases):
        lines.append("* stonewalled: ranks stopped at the deadline; bytes are those moved by then")
    if any(p.get("complete") is False for p in phases):
        lines.append("! the phase did not complete (a rank failed or the run was interrupted)")
    warnings = []
    for p in phases:
        warning = cache_warning(p, fstype, document)
        if warning:
            warnings.append(f"warning: {p['name']} iteration {p['iteration']}: {warning}")
        elif (p.get("cache") or {}).get("state") == "warm":
            warnings.append(f"note: {p['name']} iteration {p['iteration']}: warm cache, reads may be served "
                            "from the page cache")
    warnings += upload_notes(document) + huge_page_notes(document)
    mismatches = recompute_mismatches(document)
    if mismatches:
        warnings += [f"warning: figure does not match its per-rank values: {m}" for m in mismatches]
    else:
        lines.append(f"every phase bandwidth recomputed from its per-rank values: matches ({len(phases)} phases)")
    return "\n".join(lines + warnings)


def _bandwidth_section(phases: list[dict[str, Any]]) -> list[str]:
    rows = [[_label(p), str(p["iteration"]), format_size(p["bytes"]), f"{p['seconds']:.3f}",
             f"{p['bandwidth_MiBps']:.1f}", f"{p['bandwidth_GBps']:.3f}", f"{p['ops_per_s']:.0f}", str(p["ops"]),
             f"{p['client_cpu']['cores']:.2f}" if p.get("client_cpu") else "-"]
            for p in phases]
    return ["Bandwidth = sum of rank bytes / (last rank end - first rank start); MiB/s = 2^20 B/s, "
            "GB/s = 10^9 B/s; client cores = CPU seconds of the ranks (every thread) / seconds",
            *text_table(["phase", "iter", "bytes", "seconds", "MiB/s", "GB/s", "IOPS", "ops", "client cores"], rows)]


def _latency_section(phases: list[dict[str, Any]]) -> list[str]:
    rows = []
    for p in phases:
        lat = p.get("latency") or {}
        if not lat.get("count"):
            rows.append([_label(p), str(p["iteration"]), "0", "-", "-", "-", "-", "-", "-"])
            continue
        rows.append([_label(p), str(p["iteration"]), str(lat["count"]), _ms(lat.get("mean_s")),
                     _ms(lat.get("p50_s")), _ms(lat.get("p90_s")), _ms(lat.get("p99_s")), _ms(lat.get("p999_s")),
                     _ms(lat.get("max_s"))])
    return [f"Latency per operation, ms (histogram percentiles, within "
            f"{LatencyHistogram.RELATIVE_ERROR * 100:.0f}%)",
            *text_table(["phase", "iter", "ops", "mean", "p50", "p90", "p99", "p99.9", "max"], rows)]


def _ranks_section(phases: list[dict[str, Any]]) -> list[str]:
    rows = []
    for p in phases:
        spread = p.get("spread") or {}
        ratio = float(spread.get("slowest_over_median", 0.0))
        slowest = f"{spread.get('slowest_rank', '-')} on {spread.get('slowest_host') or '?'}"
        rows.append([_label(p), str(p["iteration"]), f"{spread.get('min_MiBps', 0):.1f}",
                     f"{spread.get('median_MiBps', 0):.1f}", f"{spread.get('max_MiBps', 0):.1f}", slowest,
                     f"{ratio:.2f}" + (" straggler" if ratio < STRAGGLER_RATIO else ""),
                     f"{spread.get('last_behind_first_s', 0) * 1e3:.1f}"])
    return [f"Ranks: per-rank MiB/s; a straggler is below {STRAGGLER_RATIO:.1f}x the median rank",
            *text_table(["phase", "iter", "min", "median", "max", "slowest rank", "slowest/median",
                         "last end behind first, ms"], rows, left=(0, 5, 6))]


def _hosts_section(phases: list[dict[str, Any]]) -> list[str]:
    """Per-host bandwidth (each host's bytes over its own span), only when there are several hosts."""
    if all(len(p.get("hosts") or []) < 2 for p in phases):
        return []
    rows = []
    for p in phases:
        hosts = p.get("hosts") or []
        if not hosts:
            continue
        values = [float(h["bandwidth_MiBps"]) for h in hosts]
        middle = statistics.median(values)
        slowest = min(hosts, key=lambda h: float(h["bandwidth_MiBps"]))
        ratio = float(slowest["bandwidth_MiBps"]) / middle if middle > 0 else 0.0
        rows.append([_label(p), str(p["iteration"]), str(len(hosts)), f"{min(values):.1f}", f"{middle:.1f}",
                     f"{max(values):.1f}", f"{slowest['host']} ({slowest.get('ranks', '?')} ranks)",
                     f"{ratio:.2f}" + (" straggler" if ratio < STRAGGLER_RATIO else "")])
    return ["Hosts: per-host MiB/s (a host's bytes over its own first start to last end)",
            *text_table(["phase", "iter", "hosts", "min", "median", "max", "slowest host", "slowest/median"],
                        rows, left=(0, 6, 7))]


def _reached(phase: dict[str, Any], backend: dict[str, Any], fstype: str) -> str:
    """The share of the requested bytes that reached storage during the phase, in the phase's direction.

    Reads: /proc/self/io read_bytes. Writes: /proc/self/io write_bytes when the data was
    written with O_DIRECT or fsynced before the phase ended; a buffered write without fsync
    is only dirtied in the page cache, so its share is the block device's own counter
    ('device', per node and counting every process on it; '?' where unknown). '-': none
    counted by design (S3, network filesystems).
    """
    requested = int(phase["bytes"])
    if not backend.get("kernel_counted") or requested <= 0:
        return "-"
    if phase_writes(phase) and unsynced_write(phase, not backend.get("direct")):
        device = device_bytes(phase)
        return f"{device[1] / requested * 100:.0f}% device" if device is not None else "? no fsync"
    stored = phase.get("storage_bytes") or {}
    counted = int(stored.get("write_bytes" if phase_writes(phase) else "read_bytes", 0))
    if counted == 0 and fstype and fstype not in LOCAL_FILESYSTEMS:
        return "-"
    return f"{counted / requested * 100:.0f}%"


def _cache_section(phases: list[dict[str, Any]], document: dict[str, Any]) -> list[str]:
    backend = backend_record(document)
    fstype = str((document.get("environment") or {}).get("filesystem", {}).get("fstype", ""))
    with_device = any(device_bytes(p) is not None for p in phases)
    rows = []
    for p in phases:
        cache = p.get("cache") or {}
        stored = p.get("storage_bytes") or {}
        row = [_label(p), str(p["iteration"]), cache_state(p), format_size(p["bytes"]),
               format_size(stored.get("read_bytes", 0)), format_size(stored.get("write_bytes", 0)),
               _reached(p, backend, fstype)]
        if with_device:
            device = device_bytes(p)
            row += [format_size(device[0]), format_size(device[1])] if device else ["-", "-"]
        how = str(cache.get("method", ""))
        if unsynced_write(p, not backend.get("direct")):
            how += "; no fsync: data may still be in the page cache"
        rows.append([*row, how])
    header = ["phase", "iter", "cache", "requested", "storage read", "kernel written", "reached"]
    header += ["device read", "device written"] if with_device else []
    lines = ["Cache; per /proc/self/io summed over ranks: storage read = bytes read from storage; kernel written = "
             "bytes written or dirtied in the page cache (on the device only with O_DIRECT or fsync)",
             "reached: the requested bytes that reached storage during the phase (reads: storage read; writes: "
             "kernel written, or without fsync the device's own counter, 'device'); '-': not counted (S3, "
             "network filesystems)"]
    if with_device:
        lines.append("device: the block device under storage.root, all its I/O during the phase by every process "
                     "of its node, summed over hosts")
    return [*lines, *text_table([*header, "how"], rows, left=(0, 2, len(header)))]


def _repetitions_section(phases: list[dict[str, Any]]) -> list[str]:
    finished = [p for p in phases if p.get("complete") is not False]
    if not finished:
        return []
    rows = []
    for row, group in zip(summarize_repetitions(finished), group_by_name(finished).values(), strict=True):
        iops = statistics.median(float(p["ops_per_s"]) for p in group)
        p99s = [float(p["latency"]["p99_s"]) for p in group if (p.get("latency") or {}).get("count")]
        rows.append([row["name"], str(row["iterations"]), f"{row['median_MiBps']:.1f}", f"{row['min_MiBps']:.1f}",
                     f"{row['max_MiBps']:.1f}", f"{row['spread_pct']:.1f}", f"{iops:.0f}",
                     _ms(statistics.median(p99s)) if p99s else "-"])
    left_out = " (phases that did not complete left out)" if len(finished) < len(phases) else ""
    return [f"Over iterations (per phase name){left_out}",
            *text_table(["phase", "iters", "median MiB/s", "min MiB/s", "max MiB/s", "spread %", "median IOPS",
                         "median p99 ms"], rows)]


# ---------------------------------------------------------------------------- figures


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    # A bare Figure renders with the Agg canvas and touches no pyplot or global backend state.
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def figure_png(figure: Figure) -> bytes:
    """The figure as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _selected_iterations(group: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """All iterations when few, else the slowest, median and fastest, each with a caption."""
    if len(group) <= MAX_ITERATION_PANELS:
        return [("", p) for p in group]
    ordered = sorted(group, key=lambda p: p["bandwidth_MiBps"])
    picks = [("slowest", ordered[0]), ("median", ordered[len(ordered) // 2]), ("fastest", ordered[-1])]
    return sorted(picks, key=lambda pick: pick[1]["iteration"])


def _panel_title(phase: dict[str, Any], caption: str) -> str:
    notes = [caption] if caption else []
    notes += ["did not complete"] if phase.get("complete") is False else []
    notes += ["stonewalled"] if phase.get("stonewalled") else []
    return f"{phase['name']} iteration {phase['iteration']}" + (f" ({', '.join(notes)})" if notes else "")


def _step(axes: Any, lefts: list[float], widths: list[float], rates: list[float], **style: Any) -> Any:
    if not rates:
        return None
    xs = [*lefts, lefts[-1] + widths[-1]]
    return axes.stairs(rates, xs, baseline=None, **style)


def figure_bandwidth_over_time(document: dict[str, Any]) -> Figure:
    """Aggregate and per-rank MiB/s per interval, one panel per phase name and iteration."""
    groups = group_by_name(document.get("phases", []))
    columns = max((len(_selected_iterations(g)) for g in groups.values()), default=1)
    figure = _new_figure(max(7.0, 4.2 * columns + 1.2), 2.9 * max(1, len(groups)) + 0.4)
    figure.suptitle(f"Bandwidth over time, run {document.get('run_id')}\nMiB/s per metrics.interval, "
                    "from each rank's series_bytes", fontsize=11)
    grid = figure.subplots(max(1, len(groups)), columns, squeeze=False)
    handles: list[Any] = []
    for axes, caption, phase in _iteration_panels(grid, groups, columns):
        drawn = _draw_time_panel(axes, phase, caption)
        if len(drawn) > len(handles):
            handles = drawn
    if handles:
        figure.legend(handles=handles, loc="outside lower center", ncol=len(handles) if columns > 1 else 2,
                      fontsize=9, frameon=False)
    return figure


def _draw_time_panel(axes: Any, phase: dict[str, Any], caption: str) -> list[Any]:
    """Draw one phase's time series; return the legend handles."""
    interval = float(phase.get("interval_s") or 0.0)
    ranks = phase.get("ranks", [])
    nranks = max(1, len(ranks))
    lefts, widths, rates = interval_rates(aggregate_series(phase), interval, float(phase["seconds"]))
    series = [interval_rates(r.get("series_bytes") or [], interval, float(r["end"]) - float(r["start"]))
              for r in ranks]
    peaks = [(max(s[2]), int(r["rank"])) for s, r in zip(series, ranks, strict=True) if s[2]]
    highest = max([*rates, float(phase["bandwidth_MiBps"])], default=0.0)
    # The right axis is the left divided by the number of ranks, so balanced ranks lie on the
    # aggregate line; it stretches for a rank above its share (one left alone at the end of a
    # phase runs faster), up to twice the aggregate's scale, beyond which the peak is named.
    rank_peak = max(peaks)[0] if peaks else 0.0
    top = max(highest, min(rank_peak * nranks, 2 * highest)) * 1.12 or 1.0
    title = _panel_title(phase, caption) + f": {phase['bandwidth_MiBps']:.0f} MiB/s"
    if peaks and rank_peak > top / nranks:
        value, rank_id = max(peaks)
        title += f"\nrank {rank_id} peaks off scale at {value:.0f} MiB/s"
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("seconds since phase start")
    axes.set_ylabel("aggregate MiB/s", color="tab:blue")
    handles = []
    agg = _step(axes, lefts, widths, rates, color="tab:blue", linewidth=2.2, label="aggregate (left axis)")
    if agg is not None:
        handles.append(agg)
    handles.append(axes.axhline(phase["bandwidth_MiBps"], color="tab:blue", linestyle=":", linewidth=1.2,
                                label="phase bandwidth (bytes / phase seconds)"))
    axes.set_ylim(0, top)
    axes.set_xlim(0, max(float(phase["seconds"]), interval) * 1.02)
    axes.tick_params(axis="y", labelcolor="tab:blue")
    axes.grid(True, alpha=0.3)
    per_rank = axes.twinx()
    per_rank.set_ylim(0, top / nranks)
    per_rank.set_ylabel(f"per-rank MiB/s (left / {nranks})", color="tab:orange")
    per_rank.tick_params(axis="y", labelcolor="tab:orange")
    if len(ranks) <= MAX_RANK_LINES:
        for i, (r_lefts, r_widths, r_rates) in enumerate(series):
            line = _step(per_rank, r_lefts, r_widths, r_rates, color="tab:orange", linewidth=0.9, alpha=0.7,
                         label=f"each of {len(ranks)} ranks (right axis)")
            if line is not None and i == 0:
                handles.append(line)
    else:
        _draw_rank_band(per_rank, series, interval, handles)
    if len(lefts) <= 1:
        axes.text(0.5, 0.5, f"one interval only: the phase is shorter than\nmetrics.interval = {interval:g} s; "
                  "lower it for a time series", transform=axes.transAxes, ha="center", va="center",
                  fontsize=8, color="dimgray")
    return handles


def _draw_rank_band(axes: Any, series: list[tuple[list[float], list[float], list[float]]], interval: float,
                    handles: list[Any]) -> None:
    """Min-max band and median of the per-rank rates per interval (for many ranks)."""
    length = max((len(s[2]) for s in series), default=0)
    if length == 0:
        return
    lows, mids, highs = [], [], []
    for i in range(length):
        values = [s[2][i] for s in series if i < len(s[2])]
        lows.append(min(values))
        mids.append(statistics.median(values))
        highs.append(max(values))
    edges = [i * interval for i in range(length + 1)]
    band = axes.stairs(highs, edges, baseline=lows, fill=True, color="tab:orange", alpha=0.25,
                       label="ranks min-max (right axis)")
    median = axes.stairs(mids, edges, baseline=None, color="tab:orange", linewidth=1.2,
                         label="median rank (right axis)")
    handles.extend([band, median])


def figure_latency_cdf(document: dict[str, Any]) -> Figure:
    """Latency CDF (left) and tail (right, log scale) per phase name, iterations merged."""
    figure = _new_figure(11, 4.2)
    figure.suptitle(f"Latency per operation, run {document.get('run_id')} (iterations merged)", fontsize=11)
    left, right = figure.subplots(1, 2)
    drawn = False
    for name, group in group_by_name(document.get("phases", [])).items():
        hist = merged_histogram(group)
        xs, fractions = latency_cdf(hist)
        if not xs:
            continue
        drawn = True
        label = (f"{name}: p50 {hist.percentile(50) / 1e6:.3g}, p99 {hist.percentile(99) / 1e6:.3g}, "
                 f"max {hist.max_ns / 1e6:.3g} ms")
        (line,) = left.plot(xs, fractions, linewidth=1.8, label=label)
        tail = [1.0 - f for f in fractions]
        keep = [i for i, t in enumerate(tail) if t > 0]
        right.plot([xs[i] for i in keep], [tail[i] for i in keep], color=line.get_color(), linewidth=1.8,
                   label=name)
    for axes in (left, right):
        _log_ms_axis(axes)
    left.set_ylabel("fraction of operations <= latency")
    left.set_ylim(0, 1.02)
    left.set_title("CDF", fontsize=10)
    right.set_yscale("log")
    right.set_ylabel("fraction of operations > latency")
    right.set_title("tail (p90, p99, p99.9 at 0.1, 0.01, 0.001)", fontsize=10)
    for level, name in ((0.1, "p90"), (0.01, "p99"), (0.001, "p99.9")):
        right.axhline(level, color="gray", linewidth=0.8, linestyle="--")
        right.text(0.01, level, name, transform=right.get_yaxis_transform(), va="bottom", fontsize=8,
                   color="dimgray")
    if drawn:
        left.legend(loc="lower right", fontsize=8)
        right.legend(loc="upper right", fontsize=8)
    else:
        left.text(0.5, 0.5, "no operations recorded", transform=left.transAxes, ha="center")
    return figure


def _log_ms_axis(axes: Any) -> None:
    """A log x axis of milliseconds labelled 0.5, 1, 2, 5, 10 rather than in powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axes.set_xscale("log")
    axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("latency per operation, ms (log scale)")
    axes.grid(True, which="major", alpha=0.4)
    axes.grid(True, which="minor", alpha=0.15)


def figure_rank_bandwidth(document: dict[str, Any]) -> Figure:
    """Per-rank MiB/s bars, one panel per phase name and iteration, stragglers in red."""
    groups = group_by_name(document.get("phases", []))
    columns = max((len(_selected_iterations(g)) for g in groups.values()), default=1)
    nranks = max((len(p.get("ranks", [])) for p in document.get("phases", [])), default=1)
    panel_width = min(16.0 / columns, 9.0, max(3.6, 0.12 * nranks + 2.8))
    figure = _new_figure(panel_width * columns + 0.6, 2.9 * max(1, len(groups)))
    figure.suptitle(f"Bandwidth per rank, run {document.get('run_id')}\nred: below "
                    f"{STRAGGLER_RATIO:.1f}x the median rank of the same phase", fontsize=11)
    grid = figure.subplots(max(1, len(groups)), columns, squeeze=False)
    for axes, caption, phase in _iteration_panels(grid, groups, columns):
        _draw_rank_panel(axes, phase, caption)
    return figure


def _iteration_panels(grid: Any, groups: dict[str, Any], columns: int) -> Any:
    """(axes, caption, phase) for each iteration shown, a row per phase name; spare axes hidden."""
    for row, group in enumerate(groups.values()):
        picks = _selected_iterations(group)
        for col in range(columns):
            axes = grid[row][col]
            if col >= len(picks):
                axes.set_visible(False)
                continue
            caption, phase = picks[col]
            yield axes, caption, phase


def _draw_rank_panel(axes: Any, phase: dict[str, Any], caption: str) -> None:
    ranks = sorted(phase.get("ranks", []), key=lambda r: int(r["rank"]))
    slow = stragglers(ranks)
    slow_ids = {int(r["rank"]) for r in slow}
    values = [float(r["bandwidth_MiBps"]) for r in ranks]
    middle = statistics.median(values) if values else 0.0
    labels = [int(r["rank"]) for r in ranks]
    colors = ["tab:red" if i in slow_ids else "tab:blue" for i in labels]
    if len(ranks) <= MAX_RANK_BARS:
        axes.bar(range(len(ranks)), values, color=colors, width=0.8)
    else:  # bars thinner than a pixel would hide the red ones: one dot per rank instead
        axes.scatter(range(len(ranks)), values, c=colors, s=6)
    axes.axhline(middle, color="black", linestyle="--", linewidth=1, label=f"median rank {middle:.0f} MiB/s")
    axes.axhline(STRAGGLER_RATIO * middle, color="tab:red", linestyle=":", linewidth=1.2,
                 label=f"{STRAGGLER_RATIO:.1f}x median")
    named = ", ".join(f"{r['rank']} ({r.get('host', '?')})" for r in slow[:3]) + (", ..." if len(slow) > 3 else "")
    title = _panel_title(phase, caption)
    axes.set_title(f"{title}\n{len(slow)} straggler{'' if len(slow) == 1 else 's'}"
                   + (f": rank {named}" if slow else ""), fontsize=10)
    axes.set_xlabel("rank")
    axes.set_ylabel("MiB/s")
    if len(ranks) <= 32:
        axes.set_xticks(range(len(ranks)), [str(i) for i in labels])
    axes.set_ylim(0, max([*values, 1.0]) * 1.45)  # room for the legend above the bars
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(loc="upper right", fontsize=8)


def render_figures(document: dict[str, Any]) -> dict[str, bytes]:
    """The figures of a results document as PNG bytes, by file name."""
    figures = {
        "bandwidth_over_time.png": figure_png(figure_bandwidth_over_time(document)),
        "latency_cdf.png": figure_png(figure_latency_cdf(document)),
        "rank_bandwidth.png": figure_png(figure_rank_bandwidth(document)),
    }
    if KVCACHE_FIGURE in figure_names(document):
        from mpibench.workloads.kvcache import figure_users

        figures[KVCACHE_FIGURE] = figure_png(figure_users(document, _new_figure(8.0, 4.0)))
    if MODELLOAD_FIGURE in figure_names(document):
        from mpibench.workloads.modelload import figure_cold_warm

        figures[MODELLOAD_FIGURE] = figure_png(figure_cold_warm(document, _new_figure(8.0, 3.5)))
    return figures


# ---------------------------------------------------------------------------- HTML


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Dotted key, JSON-ish value pairs of a nested mapping (lists kept whole)."""
    if isinstance(value, dict) and value:
        pairs: list[tuple[str, str]] = []
        for key, item in value.items():
            pairs.extend(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return pairs
    text = value if isinstance(value, str) else json.dumps(value)
    return [(prefix, text)]


def _html_table(pairs: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in pairs)
    return f"<table>{rows}</table>"


def html_page(document: dict[str, Any], text: str, figures: dict[str, bytes]) -> str:
    """One self-contained HTML page: summary, figures (inline PNG), config, environment, preflight."""
    preflight = document.get("preflight") or {}
    checks = "".join(f"<li>{html.escape(str(c))}</li>" for c in preflight.get("checks", []))
    checks += "".join(f"<li class=\"warn\">warning: {html.escape(str(w))}</li>" for w in preflight.get("warnings", []))
    status = "complete" if document.get("complete") else f"INCOMPLETE: {document.get('incomplete_reason')}"
    lead = f"""<p>{html.escape(status)}; started {html.escape(str(document.get('started_at')))};
results schema version {html.escape(str(document.get('schema_version')))}</p>
"""
    tail = f"""<h2>Configuration</h2>
{_html_table(flatten(document.get('config') or {}))}
<h2>Environment</h2>
{_html_table(flatten(document.get('environment') or {}))}
<h2>Preflight</h2>
<ul>{checks}</ul>
"""
    return _page(f"mpibench report: run {document.get('run_id')}", text, figures, tail, lead)


def _page(title: str, text: str, figures: dict[str, bytes], tail: str, lead: str = "") -> str:
    """The self-contained HTML page around a summary text and its figures (inline PNG)."""
    images = "".join(
        f"<h2>{html.escape(TITLES.get(name, name))}</h2>"
        f"<img alt=\"{html.escape(TITLES.get(name, name))}\" src=\"data:image/png;base64,"
        f"{base64.b64encode(data).decode('ascii')}\">"
        for name, data in figures.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
pre {{ background: #f6f8fa; padding: 1em; overflow-x: auto; font-size: 13px; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ddd; padding: 2px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f6f8fa; font-weight: 600; }}
.warn {{ color: #a00; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{lead}<h2>Summary</h2>
<pre>{html.escape(text)}</pre>
{images}
{tail}</body></html>
"""

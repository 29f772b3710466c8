"""CSV export: one row per phase and iteration."""

from __future__ import annotations

import csv
import io
from typing import Any

from mpibench.redact import redact
from mpibench.results import replaceable, write_new_text, write_text_atomic

COLUMNS = ["run_id", "workload", "phase", "iteration", "ranks", "bytes", "seconds", "bandwidth_MiBps",
           "bandwidth_GBps", "ops", "ops_per_s", "latency_mean_s", "latency_p50_s", "latency_p99_s",
           "latency_max_s", "slowest_rank", "slowest_over_median", "cache", "stonewalled", "client_cpu_cores"]


def _workload(document: dict[str, Any]) -> Any:
    """The document's workload (for the columns it adds), or None when unknown."""
    from mpibench.errors import MpibenchError
    from mpibench.workloads import get_workload

    try:
        return get_workload(document.get("config", {}).get("workload", ""))
    except MpibenchError:
        return None


def write_csv(path: str, document: dict[str, Any], force: bool = False) -> str:
    """Write the phases of a results document as CSV (atomically); return the path written.

    Without `force` an existing file is kept and the CSV goes to a fresh name beside it.
    """
    out = io.StringIO()
    writer = csv.writer(out)
    workload = _workload(document)
    writer.writerow(COLUMNS + (workload.csv_columns() if workload else []))
    for p in document.get("phases", []):
        lat = p.get("latency", {})
        writer.writerow([
            document.get("run_id"), document.get("config", {}).get("workload"), p["name"], p["iteration"],
            len(p.get("ranks", [])), p["bytes"], f"{p['seconds']:.6f}", f"{p['bandwidth_MiBps']:.3f}",
            f"{p['bandwidth_GBps']:.6f}", p["ops"], f"{p['ops_per_s']:.3f}", lat.get("mean_s", ""),
            lat.get("p50_s", ""), lat.get("p99_s", ""), lat.get("max_s", ""),
            p.get("spread", {}).get("slowest_rank", ""), p.get("spread", {}).get("slowest_over_median", ""),
            (p.get("cache") or {}).get("state", ""), p.get("stonewalled", False),
            f"{p['client_cpu']['cores']:.3f}" if p.get("client_cpu") else "",
            *(workload.csv_values(document, p) if workload else []),
        ])
    text = redact(out.getvalue())
    if force and replaceable(path):
        write_text_atomic(path, text)
        return path
    return write_new_text(path, text, str(document.get("run_id") or "results"))

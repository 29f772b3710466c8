"""CSV export: one row per phase and iteration, with the settings a sweep varies."""

from __future__ import annotations

import csv
import io
from typing import Any

from mpibench.redact import redact
from mpibench.results import phase_au_pct, phase_samples_per_s, replaceable, write_new_text, write_text_atomic

COLUMNS = ["run_id", "workload", "phase", "iteration", "ranks", "nodes", "storage_type", "file_mode",
           "transfer_size", "block_size", "io_depth", "access", "bytes", "seconds", "bandwidth_MiBps",
           "bandwidth_GBps", "ops", "ops_per_s", "latency_mean_s", "latency_p50_s", "latency_p99_s",
           "latency_max_s", "slowest_rank", "slowest_over_median", "cache", "stonewalled", "client_cpu_cores",
           "samples_per_s", "au_pct"]


def _setting(phase: dict[str, Any], document: dict[str, Any], key: str) -> Any:
    """A configuration value the phase ran with: the phase's own record (resolved, e.g. io_depth
    'auto' as a number), else the run's environment, else the workload's section of the config."""
    if phase.get(key) is not None:
        return phase[key]
    env = document.get("environment") or {}
    if key == "io_depth" and env.get("io_depth") is not None:
        return env["io_depth"]
    config = document.get("config") or {}
    section = config.get(str(config.get("workload"))) or {}
    return section.get(key, "") if isinstance(section, dict) else ""


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

    Beside each phase's figures, the settings a sweep varies (ranks, nodes, transfer and block
    size, io_depth, ...) so that rows of several runs tell themselves apart, and the train
    workload's headline figures (samples/s, AU %). Without `force` an existing file is kept and
    the CSV goes to a fresh name beside it.
    """
    out = io.StringIO()
    writer = csv.writer(out)
    workload = _workload(document)
    writer.writerow(COLUMNS + (workload.csv_columns() if workload else []))
    env = document.get("environment") or {}
    storage = ((document.get("config") or {}).get("storage") or {}).get("type", "")
    for p in document.get("phases", []):
        lat = p.get("latency", {})
        samples, au = phase_samples_per_s(p), phase_au_pct(p)
        writer.writerow([
            document.get("run_id"), document.get("config", {}).get("workload"), p["name"], p["iteration"],
            len(p.get("ranks", [])) or env.get("world_size", ""), env.get("num_nodes", ""), storage,
            *(_setting(p, document, key) for key in ("file_mode", "transfer_size", "block_size", "io_depth", "access")),
            p["bytes"], f"{p['seconds']:.6f}", f"{p['bandwidth_MiBps']:.3f}",
            f"{p['bandwidth_GBps']:.6f}", p["ops"], f"{p['ops_per_s']:.3f}", lat.get("mean_s", ""),
            lat.get("p50_s", ""), lat.get("p99_s", ""), lat.get("max_s", ""),
            p.get("spread", {}).get("slowest_rank", ""), p.get("spread", {}).get("slowest_over_median", ""),
            (p.get("cache") or {}).get("state", ""), p.get("stonewalled", False),
            f"{p['client_cpu']['cores']:.3f}" if p.get("client_cpu") else "",
            f"{samples:.3f}" if samples is not None else "", f"{au:.2f}" if au is not None else "",
            *(workload.csv_values(document, p) if workload else []),
        ])
    text = redact(out.getvalue())
    if force and replaceable(path):
        write_text_atomic(path, text)
        return path
    return write_new_text(path, text, str(document.get("run_id") or "results"))

"""`mpibench search`: the most accelerators per host the storage keeps at or above the AU threshold.

Launched once with the largest rank count (one rank per accelerator slot, the same number
on every host), it runs `train` on sub-communicators: a trial with k accelerators per host
takes the first k ranks of every host; the other ranks wait without holding a core. k
doubles from 1 while trials pass, then bisects between the largest passing and the
smallest failing count. Every trial runs the config's whole epochs (and train.runs); it
passes when the mean AU of its measured runs reaches the threshold (train.min_au, the
accelerator's published minimum, or --min-au). The dataset must exist (datagen first).

Rank 0 prints one line per trial (accelerators, AU mean and min, samples/s, MiB/s), writes
a JSON document and a figure of AU and throughput against the accelerator count, and
names the largest passing count as the headline.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from mpibench.comm import Comm
from mpibench.config import Config
from mpibench.errors import ConfigError, MpibenchError

SEARCH_VERSION = 1

EXAMPLES = """\
examples:
  mpiexec -n 8 mpibench run configs/unet3d-b200.yaml workload=datagen storage.root=/lustre/$USER/mlps
  mpiexec -n 8 mpibench search configs/unet3d-b200.yaml storage.root=/lustre/$USER/mlps
  srun -N 4 --ntasks-per-node=16 mpibench search configs/retinanet-b200.yaml train.runs=1 --min-au 85

The job's ranks per host are the most accelerators per host tried. Each trial is a whole
train run on the first k ranks of every host; the JSON (--output) and the figure
(--figure, PNG) hold every trial.
"""


def add_parser(subparsers: Any, common: Any) -> argparse.ArgumentParser:
    """Register `mpibench search` (an MPI command, like run)."""
    parser = subparsers.add_parser(
        "search", help="find the most accelerators per host that keep AU above the threshold",
        description="Run train on growing sub-communicators (doubling, then bisection, the same count on "
                    "every host) and report the largest accelerator count per host whose AU reaches the "
                    "threshold.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(parser)
    parser.add_argument("--min-au", type=float, default=None, metavar="PCT",
                        help="AU %% a trial must reach (default: train.min_au or the accelerator's published minimum)")
    parser.add_argument("--output", "-o", metavar="SEARCH.json",
                        help="results file (default: mpibench-search-<time>.json)")
    parser.add_argument("--figure", metavar="SEARCH.png", help="figure file (default: the results file's name, .png)")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    return parser


def next_count(tried: dict[int, bool], most: int) -> int | None:
    """The next accelerator count per host to try, or None when the answer is known.

    Doubling from 1 while trials pass (capped at `most`), then bisection between the
    largest passing count and the smallest failing one.
    """
    passing = [k for k, ok in tried.items() if ok]
    failing = [k for k, ok in tried.items() if not ok]
    low = max(passing, default=0)
    high = min(failing, default=most + 1)
    if high - low <= 1:
        return None
    if not failing:
        return min(most, 2 * low) if low else 1
    return (low + high) // 2


def trial_row(k: int, hosts: int, doc: dict[str, Any], threshold: float) -> dict[str, Any]:
    """One trial's figures from its train results."""
    t = doc["train"]
    proto = t["protocol"]
    au = proto["au_pct_mean"]
    measured = t["runs"][1:] if len(t["runs"]) > 1 else t["runs"]
    lows = [r["au_pct_min"] for r in measured if r["au_pct_min"] is not None]
    seconds = sum(r["seconds"] for r in measured)
    return {"accelerators_per_host": k, "accelerators": k * hosts, "run_id": doc["run_id"],
            "au_pct_mean": au, "au_pct_min": min(lows) if lows else None,
            "samples_per_s": proto["samples_per_s_mean"],
            "bandwidth_MiBps": sum(r["bytes"] for r in measured) / 2**20 / seconds if seconds > 0 else 0.0,
            "runs_agree": proto["runs_agree"],
            "passed": au is not None and au >= threshold}


def run_search(config: Config, args: argparse.Namespace, comm: Comm, lifecycle: Any,
               execute: Callable[..., dict[str, Any] | None]) -> int:
    """Every rank: the trials, each a run of `execute` (the orchestrator, which only the CLI
    imports); rank 0: the table, the JSON and the figure."""
    from mpibench.context import broadcast_outcome
    from mpibench.mlperf import effective
    from mpibench.results import check_output_path, write_json_atomic

    layout = comm.layout()

    def check() -> tuple[float, str, str]:
        if config.workload != "train":
            raise ConfigError(f"search runs train, but the config's workload is {config.workload}",
                              "give a train config (e.g. configs/unet3d-b200.yaml)")
        if len(set(layout.ranks_per_node)) != 1:
            raise ConfigError(f"search needs the same ranks on every host, got {layout.ranks_per_node}",
                              "launch with an equal number of tasks per node")
        threshold = args.min_au if args.min_au is not None else effective(config.train).min_au_pct
        if threshold is None:
            raise ConfigError("search needs an AU threshold",
                              "set train.accelerator (its published minimum), train.min_au or --min-au")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        output = args.output or f"mpibench-search-{stamp}.json"
        figure = args.figure or (output[:-5] if output.endswith(".json") else output) + ".png"
        check_output_path(output, args.force, "--output")
        check_output_path(figure, args.force, "--figure")
        return threshold, output, figure

    threshold, output, figure = broadcast_outcome(comm, check)
    most, hosts = layout.ranks_per_node[0], layout.num_nodes
    tried: dict[int, bool] = {}
    rows: list[dict[str, Any]] = []
    k = next_count(tried, most)
    while k is not None:
        inside = layout.local_rank < k
        sub = comm.split(0 if inside else None, comm.rank)
        failure: MpibenchError | None = None
        if sub is not None:
            try:
                doc = execute(dataclasses.replace(config, run_id=None), Comm(sub), output=None,
                              lifecycle=lifecycle)
            except MpibenchError as exc:  # raised alike on every rank of the trial
                failure = exc
            finally:
                sub.Free()
            if comm.is_root and failure is None:
                row = trial_row(k, hosts, doc, threshold)
                rows.append(row)
                print(f"trial {len(rows)}: {k} accelerator(s) per host x {hosts} host(s): AU mean "
                      f"{_pct(row['au_pct_mean'])}, min {_pct(row['au_pct_min'])}, {row['samples_per_s']:.1f} "
                      f"samples/s, {row['bandwidth_MiBps']:.1f} MiB/s: {'PASS' if row['passed'] else 'FAIL'}",
                      flush=True)

        def verdict(failure: MpibenchError | None = failure) -> bool:
            if failure is not None:  # rank 0 is in every trial: its error ends the search everywhere
                raise failure
            return bool(rows[-1]["passed"])

        # the ranks outside the trial wait in here without holding a core
        tried[k] = broadcast_outcome(comm, verdict)
        k = next_count(tried, most)
    if not comm.is_root:
        return 0
    best = max((r["accelerators_per_host"] for r in rows if r["passed"]), default=0)
    document = {"mpibench_search": SEARCH_VERSION, "config": config.to_dict(), "hosts": hosts,
                "ranks_per_host": most, "min_au_pct": threshold, "trials": rows,
                "largest_passing_per_host": best, "largest_passing": best * hosts}
    written = write_json_atomic(output, document, args.force)
    drawn = draw(document, figure, args.force)
    print(search_table(document))
    print(f"results written to {written}; figure written to {drawn}")
    return 0


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def search_table(document: dict[str, Any]) -> str:
    """The trials in accelerator order, and the headline."""
    lines = [f"{'accel/host':>10}{'accel':>7}{'AU mean':>9}{'AU min':>9}{'samples/s':>12}{'MiB/s':>10}  verdict"]
    for r in sorted(document["trials"], key=lambda r: r["accelerators_per_host"]):
        lines.append(f"{r['accelerators_per_host']:>10}{r['accelerators']:>7}{_pct(r['au_pct_mean']):>9}"
                     f"{_pct(r['au_pct_min']):>9}{r['samples_per_s']:>12.1f}{r['bandwidth_MiBps']:>10.1f}  "
                     f"{'PASS' if r['passed'] else 'FAIL'}")
    best = document["largest_passing_per_host"]
    if best:
        lines.append(f"largest passing: {best} accelerator(s) per host, {document['largest_passing']} in all "
                     f"({document['hosts']} host(s)), AU >= {document['min_au_pct']:g}%")
    else:
        lines.append(f"no accelerator count reaches AU >= {document['min_au_pct']:g}%, not even 1 per host")
    return "\n".join(lines)


def draw(document: dict[str, Any], path: str, force: bool) -> str:
    """AU (mean and min, with the threshold) and throughput against the accelerator count."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(document["trials"], key=lambda r: r["accelerators"])
    x = [r["accelerators"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(6.4, 6.4))
    top.plot(x, [r["au_pct_mean"] for r in rows], "o-", label="AU mean")
    top.plot(x, [r["au_pct_min"] for r in rows], "v--", label="AU min (a rank)")
    top.axhline(document["min_au_pct"], color="red", linestyle=":", label=f"threshold {document['min_au_pct']:g}%")
    top.set_ylabel("AU %")
    top.legend(loc="best")
    top.set_title(f"largest passing: {document['largest_passing']} accelerator(s)")
    bottom.plot(x, [r["samples_per_s"] for r in rows], "o-", label="samples/s")
    bottom.set_ylabel("samples/s")
    twin = bottom.twinx()
    twin.plot(x, [r["bandwidth_MiBps"] for r in rows], "s--", color="tab:orange", label="MiB/s")
    twin.set_ylabel("MiB/s")
    handles = bottom.get_legend_handles_labels()
    extra = twin.get_legend_handles_labels()
    bottom.legend(handles[0] + extra[0], handles[1] + extra[1], loc="upper left")
    bottom.set_xticks(x)
    bottom.set_xlabel(f"accelerators ({document['hosts']} host(s))")
    fig.tight_layout()
    target = path
    if os.path.exists(path) and not force:
        base, ext = os.path.splitext(path)
        target = f"{base}-{time.strftime('%H%M%S')}{ext}"
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target

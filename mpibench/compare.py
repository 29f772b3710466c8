"""The `compare` command: results files side by side, per phase name, with a significance
test that only calls a difference real when the repetitions support it.

Method: for each phase name and metric (bandwidth, IOPS, p99 latency), the per-iteration
values of file A and of file B are compared with a two-sided Mann-Whitney U test (exact
without ties, an exact or 9999-resample permutation test with ties) and a percentile
bootstrap confidence interval of the ratio of medians B/A. A difference is significant
when p < alpha and the interval excludes 1. Fewer than 3 iterations on a side, or sizes
whose smallest possible p is not below alpha (3 vs 3 gives 0.1), are reported as n/a.
"""

from __future__ import annotations

import argparse
import math
import statistics
import string
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpibench.errors import ConfigError, MpibenchError, ResultsError
from mpibench.reporting import flatten, group_by_name, load_document, malformed, text_table

MIN_ITERATIONS = 3
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same files always give the same interval
CONFIDENCE = 0.95
MAX_CONFIG_DIFFERENCES = 8

COMPARE_EXAMPLES = """\
examples:
  mpibench compare before.json after.json
  mpibench compare ext4.json xfs.json lustre.json --alpha 0.01
"""


@dataclass(frozen=True)
class Metric:
    """A per-iteration figure of a phase that compare puts side by side."""

    key: str
    label: str
    higher_is_better: bool
    digits: int
    value: Callable[[dict[str, Any]], float | None]


def _p99_ms(phase: dict[str, Any]) -> float | None:
    latency = phase.get("latency") or {}
    return float(latency["p99_s"]) * 1e3 if latency.get("count") else None


def _samples_per_s(phase: dict[str, Any]) -> float | None:
    """A train epoch's samples per second (all ranks' samples over the phase's seconds)."""
    ranks = phase.get("ranks") or []
    if phase.get("name") != "train" or not any("samples" in r for r in ranks) or not phase.get("seconds"):
        return None
    return sum(int(r.get("samples", 0)) for r in ranks) / float(phase["seconds"])


def _au_pct(phase: dict[str, Any]) -> float | None:
    """A train epoch's accelerator utilisation, % (the mean over ranks, as the train summary gives it)."""
    values = [float(r["au_pct"]) for r in phase.get("ranks") or [] if r.get("au_pct") is not None]
    return statistics.fmean(values) if phase.get("name") == "train" and values else None


METRICS = (
    Metric("bandwidth", "bandwidth MiB/s", True, 1, lambda p: float(p["bandwidth_MiBps"])),
    Metric("iops", "IOPS", True, 0, lambda p: float(p["ops_per_s"])),
    Metric("p99", "p99 latency ms", False, 3, _p99_ms),
    Metric("samples", "samples/s", True, 1, _samples_per_s),
    Metric("au", "AU %", True, 1, _au_pct),
)
# The configuration sections (or single keys) each workload reads; storage, io, metrics and
# the top-level keys apply to every workload.
WORKLOAD_SECTIONS = {
    "bandwidth": ("bandwidth",),
    "checkpoint": ("checkpoint",),
    "train": ("dataset", "train"),
    "datagen": ("dataset",),
}
WORKLOAD_SPECIFIC = ("bandwidth", "checkpoint", "dataset", "train")


@dataclass(frozen=True)
class Verdict:
    """The comparison of one metric of one phase name between a baseline and another file."""

    n_base: int
    n_other: int
    median_base: float
    median_other: float
    ratio: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    significant: bool
    text: str


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `mpibench compare` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "compare", help="compare results files per phase, with a significance test",
        description="Compare two or more results files per phase name: median bandwidth, IOPS and p99 latency "
                    "over iterations, ratios to the first file, and whether the iterations support a difference "
                    "(Mann-Whitney U test and bootstrap confidence interval of the ratio of medians).",
        epilog=COMPARE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", metavar="RESULT.json",
                        help="results files; the first is the baseline A the others are divided by")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="significance level of the two-sided test (default 0.05)")
    parser.set_defaults(handler=run_compare)
    return parser


def run_compare(args: argparse.Namespace) -> int:
    """Handle `mpibench compare`: load every file and print the comparison."""
    try:
        if len(args.results) < 2:
            raise ConfigError("compare needs at least two results files", "e.g. mpibench compare a.json b.json")
        if not 0 < args.alpha < 1:
            raise ConfigError(f"--alpha {args.alpha} is not between 0 and 1", "use e.g. --alpha 0.05")
        documents = [(path, load_document(path)) for path in args.results]
        try:
            text = compare_text(documents, alpha=args.alpha)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise malformed(" or ".join(args.results), exc) from None
        print(text)
    except MpibenchError as exc:
        print(f"mpibench: error: {exc.line()}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


def samples(document: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Per phase name, per metric key: the values of its iterations, in iteration order."""
    found: dict[str, dict[str, list[float]]] = {}
    for name, group in group_by_name(measured_phases(document)).items():
        ordered = sorted(group, key=lambda p: p["iteration"])
        found[name] = {}
        for metric in METRICS:
            values = [metric.value(p) for p in ordered]
            found[name][metric.key] = [v for v in values if v is not None and math.isfinite(v)]
    return found


def measured_phases(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The phases that ran to their end (a failed or interrupted phase measured only part of its work)."""
    return [p for p in document.get("phases", []) if p.get("complete") is not False]


def smallest_p(n_base: int, n_other: int) -> float:
    """The smallest two-sided p-value an exact Mann-Whitney U test can give for these sizes."""
    return min(1.0, 2.0 / math.comb(n_base + n_other, n_base))


def iterations_needed(alpha: float) -> int:
    """Iterations per side (same on both) for which the exact test can reach p < alpha."""
    n = MIN_ITERATIONS
    while smallest_p(n, n) >= alpha:
        n += 1
    return n


def mann_whitney_p(base: list[float], other: list[float]) -> float:
    """Two-sided Mann-Whitney U p-value: exact without ties, permutation test with ties."""
    try:
        from scipy import stats
    except ImportError:
        raise ResultsError("compare needs scipy for its significance test", "pip install scipy") from None

    if len(set(base) | set(other)) == len(base) + len(other):
        return float(stats.mannwhitneyu(base, other, alternative="two-sided", method="exact").pvalue)
    try:
        permutation = stats.PermutationMethod(n_resamples=9999, rng=np.random.default_rng(BOOTSTRAP_SEED))
    except TypeError:  # scipy < 1.15 names the generator random_state
        permutation = stats.PermutationMethod(n_resamples=9999, random_state=np.random.default_rng(BOOTSTRAP_SEED))
    return float(stats.mannwhitneyu(base, other, alternative="two-sided", method=permutation).pvalue)


def bootstrap_ratio_ci(base: list[float], other: list[float], confidence: float = CONFIDENCE,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of median(other) / median(base), each side resampled on its own."""
    rng = np.random.default_rng(seed)
    a = np.asarray(base, dtype=float)
    b = np.asarray(other, dtype=float)
    med_a = np.median(a[rng.integers(0, a.size, size=(resamples, a.size))], axis=1)
    med_b = np.median(b[rng.integers(0, b.size, size=(resamples, b.size))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = med_b / med_a
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def compare_metric(base: list[float], other: list[float], metric: Metric, alpha: float) -> Verdict:
    """Median ratio other/base, its bootstrap interval, the test's p-value and the verdict."""
    med_a = statistics.median(base) if base else math.nan
    med_b = statistics.median(other) if other else math.nan
    ratio = med_b / med_a if base and other and med_a > 0 else None
    n_a, n_b = len(base), len(other)
    if min(n_a, n_b) < MIN_ITERATIONS:
        return Verdict(n_a, n_b, med_a, med_b, ratio, None, None, None, False,
                       f"n/a (need >= {MIN_ITERATIONS} iterations)")
    low, high = bootstrap_ratio_ci(base, other) if med_a > 0 else (math.nan, math.nan)
    p_value = mann_whitney_p(base, other)
    if smallest_p(n_a, n_b) >= alpha:
        # The test cannot reach alpha at these sizes, however different the values: no verdict.
        return Verdict(n_a, n_b, med_a, med_b, ratio, low, high, p_value, False,
                       f"n/a (need >= {iterations_needed(alpha)} iterations)")
    excludes_one = math.isfinite(low) and (low > 1 or high < 1)
    significant = p_value < alpha and excludes_one
    if significant and ratio is not None:
        better = (ratio > 1) == metric.higher_is_better
        text = "yes, better" if better else "yes, worse"
    elif p_value < alpha:
        text = "no (interval includes 1)"
    else:
        text = "no"
    return Verdict(n_a, n_b, med_a, med_b, ratio, low, high, p_value, significant, text)


def _labels(count: int) -> list[str]:
    letters = string.ascii_uppercase
    return [letters[i] if i < len(letters) else f"F{i + 1}" for i in range(count)]


def _describe(document: dict[str, Any]) -> str:
    config = document.get("config") or {}
    env = document.get("environment") or {}
    storage = config.get("storage") or {}
    fs = (env.get("filesystem") or {}).get("fstype")
    iterations = max((len(g) for g in group_by_name(measured_phases(document)).values()), default=0)
    state = "" if document.get("complete") else f"; INCOMPLETE: {document.get('incomplete_reason')}"
    return (f"run {document.get('run_id')}, {config.get('workload')} on {storage.get('type')}"
            + (f" ({fs})" if fs else "") + f", {env.get('world_size')} ranks on {env.get('num_nodes')} node(s), "
            f"{iterations} iteration(s){state}")


def _used(key: str, workload: str) -> bool:
    """Whether a dotted configuration key is one the workload reads."""
    section = key.split(".", 1)[0]
    if section not in WORKLOAD_SPECIFIC:
        return True
    return any(key == used or key.startswith(f"{used}.") for used in WORKLOAD_SECTIONS.get(workload, ()))


def config_differences(base: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """'key: base -> other' for what differs, what changes the measurement first: the workload,
    the ranks and nodes, the storage type and filesystem, then the keys of the sections both
    workloads read (storage first). Sections a workload does not read (their defaults) are left out."""
    left = dict(flatten(base.get("config") or {}))
    right = dict(flatten(other.get("config") or {}))
    env_a, env_b = base.get("environment") or {}, other.get("environment") or {}
    first = [("workload", left.get("workload"), right.get("workload")),
             ("ranks (world size)", env_a.get("world_size"), env_b.get("world_size")),
             ("nodes", env_a.get("num_nodes"), env_b.get("num_nodes")),
             ("storage.type", left.get("storage.type"), right.get("storage.type")),
             ("filesystem", (env_a.get("filesystem") or {}).get("fstype"),
              (env_b.get("filesystem") or {}).get("fstype"))]
    found = [f"{k}: {a} -> {b}" for k, a, b in first if a != b]
    workloads = (str(left.get("workload")), str(right.get("workload")))
    shown = {"workload", "storage.type"}
    keys = [k for k in sorted(set(left) | set(right)) if k not in shown and all(_used(k, w) for w in workloads)]
    order = {name: i for i, name in enumerate(("storage", *WORKLOAD_SPECIFIC))}
    keys.sort(key=lambda k: order.get(k.split(".", 1)[0], len(order)))
    return found + [f"{k}: {left.get(k, '(absent)')} -> {right.get(k, '(absent)')}" for k in keys
                    if left.get(k) != right.get(k)]


def workload_of(document: dict[str, Any]) -> str:
    """The workload a results file ran."""
    return str((document.get("config") or {}).get("workload"))


def _number(value: float | None, digits: int) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def compare_text(documents: list[tuple[str, dict[str, Any]]], alpha: float = 0.05) -> str:
    """The comparison of results files against the first, as text."""
    labels = _labels(len(documents))
    lines = ["Files"]
    for label, (path, document) in zip(labels, documents, strict=True):
        lines.append(f"  {label}  {path}: {_describe(document)}")
        left_out = len(document.get("phases", [])) - len(measured_phases(document))
        if left_out:
            lines.append(f"     {left_out} phase(s) of {label} did not complete and are left out")
    base_path, base_doc = documents[0]
    comparable = [workload_of(d) == workload_of(base_doc) for _, d in documents[1:]]
    if not any(comparable):
        path, other = documents[1]
        raise ResultsError(f"{path} runs the {workload_of(other)} workload and {base_path} the "
                           f"{workload_of(base_doc)} workload: they measure different things",
                           "compare runs of the same workload")
    base_samples = samples(base_doc)
    for label, (_path, document) in zip(labels[1:], documents[1:], strict=True):
        differences = config_differences(base_doc, document)
        if differences:
            shown = differences[:MAX_CONFIG_DIFFERENCES]
            more = len(differences) - len(shown)
            lines.append(f"  config of {label} differs from A in: " + "; ".join(shown)
                         + (f"; and {more} more" if more else ""))
        elif base_doc.get("config") is not None:
            lines.append(f"  config of {label} is the same as A's")
    for label, (_path, document), same in zip(labels[1:], documents[1:], comparable, strict=True):
        if not same:
            lines += ["", f"warning: {label} vs A not compared: {label} runs the {workload_of(document)} workload and A the "
                      f"{workload_of(base_doc)} workload, they measure different things (phases of the same name "
                      "are not the same I/O)"]
            continue
        other_samples = samples(document)
        common = [name for name in base_samples if name in other_samples]
        lines += ["", f"{label} vs A: medians over iterations, ratio {label}/A, its {CONFIDENCE:.0%} bootstrap "
                  "interval, Mann-Whitney p"]
        rows = []
        for name in common:
            for i, metric in enumerate(METRICS):
                base_values = base_samples[name][metric.key]
                other_values = other_samples[name][metric.key]
                if not base_values and not other_values:
                    continue
                verdict = compare_metric(base_values, other_values, metric, alpha)
                interval = (f"{verdict.ci_low:.2f}-{verdict.ci_high:.2f}"
                            if verdict.ci_low is not None and math.isfinite(verdict.ci_low) else "-")
                rows.append([name if i == 0 else "", metric.label, f"{verdict.n_base}/{verdict.n_other}",
                             _number(verdict.median_base, metric.digits), _number(verdict.median_other, metric.digits),
                             f"{verdict.ratio:.3f}x" if verdict.ratio is not None else "-", interval,
                             f"{verdict.p_value:.3f}" if verdict.p_value is not None else "-", verdict.text])
        if rows:
            lines += ["  " + line for line in text_table(
                ["phase", "metric", "iters", "A", label, f"{label}/A", "95% CI", "p", "significant"], rows,
                left=(0, 1, 8))]
        else:
            lines.append("  no phase name in common")
        only_base = [n for n in base_samples if n not in other_samples]
        only_other = [n for n in other_samples if n not in base_samples]
        if only_base:
            lines.append(f"  phases only in A: {', '.join(only_base)}")
        if only_other:
            lines.append(f"  phases only in {label}: {', '.join(only_other)}")
    lines += [""] + textwrap.wrap(_method_footer(alpha), width=100)
    return "\n".join(lines)


def _method_footer(alpha: float) -> str:
    needed = iterations_needed(alpha)
    return (f"Method: per phase name, the values of the iterations of each file are compared with a two-sided "
            f"Mann-Whitney U test (exact without ties, permutation test with ties) and a {CONFIDENCE:.0%} "
            f"percentile bootstrap interval ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}) of the "
            f"ratio of medians. Significant only when p < {alpha:g} and the interval excludes 1. With fewer "
            f"than {MIN_ITERATIONS} iterations a side, or sizes whose smallest possible p is not below "
            f"{alpha:g} ({needed - 1} vs {needed - 1} gives {smallest_p(needed - 1, needed - 1):.3f}), no "
            f"verdict: n/a. Run >= {needed} iterations per file to be able to see a difference. "
            "For p99 latency a ratio below 1 is better.")

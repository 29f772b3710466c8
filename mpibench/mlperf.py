"""MLPerf Storage v3.0: the published workload shapes, accelerator timings and sizing rules.

Pure data and arithmetic: no MPI and no storage I/O. Every figure comes from the public
mlcommons/storage repository, and each entry names the file it was taken from:

- the training shapes and timings: ``configs/dlio/workload/<model>_<accelerator>.yaml``
  (dataset, reader.batch_size, train.computation_time, metric.au);
- the accelerator memory: ``Rules.md`` 4.3.4, Table 3;
- the minimum dataset: ``Rules.md`` 3.1.2, computed as ``mlpstorage_py/rules/utils.py``
  (calculate_training_data_size) does, both file counts rounded up;
- the AU rule: ``Rules.md`` 3.3.2 (AU = compute time / run time, first step excluded).

Where the repository publishes no config for a pair (unet3d on mi355; resnet50 and
cosmoflow on b200 and mi355; dlrm and flux in Parquet on h100 and a100, whose h100/a100
configs describe another dataset), the pair is refused rather than guessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mpibench.errors import ConfigError

REPO = "mlcommons/storage"
ACCELERATORS = ("b200", "mi355", "h100", "a100")
#: GB of memory per emulated accelerator (Rules.md 4.3.4, Table 3)
ACCELERATOR_MEMORY_GB = {"b200": 180, "mi355": 288, "h100": 80, "a100": 80}
#: the accelerators of the CLOSED division (mlpstorage_py/config.py ACCELERATORS_CLOSED)
CLOSED_ACCELERATORS = ("b200", "mi355")
MIN_STEPS_PER_EPOCH = 500  # Rules.md 3.1.2; mlpstorage_py/config.py STEPS_PER_EPOCH
HOST_MEMORY_MULTIPLIER = 5  # Rules.md 3.1.2
GIB = 1024**3
#: the measured runs' samples/s must lie within this % of their mean
AGREEMENT_PCT = 5.0


@dataclass(frozen=True)
class Timing:
    """What one emulated accelerator does per step for one model, as published."""

    computation_time: float  # seconds per batch
    batch_size: int  # samples per step per accelerator
    min_au_pct: float  # the AU a run must reach to pass
    source: str  # the file of mlcommons/storage the figures come from


@dataclass(frozen=True)
class Shape:
    """A published training dataset: format, files and record sizes."""

    format: str
    num_files: int
    samples_per_file: int
    record_size: int
    record_size_stdev: int
    read_threads: int
    epochs: int
    timings: dict[str, Timing]


def _t(model: str, accel: str, compute: float, batch: int, au: float) -> Timing:
    return Timing(compute, batch, au, f"{REPO}:configs/dlio/workload/{model}_{accel}.yaml")


# record_length_bytes of resnet50 is published as 114660.07: one integer size per record here.
SHAPES: dict[str, Shape] = {
    "unet3d": Shape("npz", 7200, 1, 146600628, 68341808, 4, 5, {
        "b200": _t("unet3d", "b200", 0.162, 7, 90.0),
        "h100": _t("unet3d", "h100", 0.323, 7, 90.0),
        "a100": _t("unet3d", "a100", 0.636, 7, 90.0),
    }),
    # The b200/mi355 configs publish 322,957-byte images; the h100/a100 ones 153,600 +- 51,200.
    "retinanet": Shape("jpeg", 1170301, 1, 322957, 0, 8, 8, {
        "b200": _t("retinanet", "b200", 0.04755, 24, 85.0),
        "mi355": _t("retinanet", "mi355", 0.0634, 32, 85.0),
        "h100": _t("retinanet", "h100", 0.180, 16, 85.0),
        "a100": _t("retinanet", "a100", 0.210, 16, 85.0),
    }),
    "resnet50": Shape("tfrecord", 1024, 1251, 114660, 0, 8, 5, {
        "h100": _t("resnet50", "h100", 0.224, 400, 90.0),
        "a100": _t("resnet50", "a100", 0.435, 400, 90.0),
    }),
    "cosmoflow": Shape("tfrecord", 524288, 1, 2828486, 71311, 4, 5, {
        "h100": _t("cosmoflow", "h100", 0.00350, 1, 70.0),
        "a100": _t("cosmoflow", "a100", 0.00551, 1, 70.0),
    }),
    "dlrm": Shape("parquet", 1024, 4718592, 761, 0, 4, 1, {
        "b200": _t("dlrm", "b200", 0.000375, 16384, 70.0),
        "mi355": _t("dlrm", "mi355", 0.0005625, 16384, 70.0),
    }),
    "flux": Shape("parquet", 4296, 288, 2164832, 0, 8, 1, {
        "b200": _t("flux", "b200", 1.35, 48, 90.0),
        "mi355": _t("flux", "mi355", 2.025, 72, 90.0),
    }),
}
MODELS = tuple(SHAPES)

# Parquet columns as published: (name, numpy dtype, values per row, read by training).
# dlrm: 200 scalar columns feature_000..feature_199 (configs/dlio/workload/dlrm_b200.yaml,
# identical in dlrm_mi355.yaml), coded one letter per column: e float16, f float32,
# d float64, b int8; upper case marks the 40 columns read (read: true). Their widths add
# up to the published record_length_bytes, 761.
_DLRM_CODES = ("eeddfefbebfFdfbefFFeDdddeFfeefdFdfeedbbbeFeFdbdddFfbbFffbfEFdedbfebFEfeFefFDebfd"
               "bbffebebFbFFEFDdFEbeedefdeefdfddbeebBDfbeebbbebbfbefdeedeFddeFbbdfdFddbbbdDFfbFe"
               "FeFededefBdebdbbbbeeBdddedBbeFdbdfdFfdde")
_DTYPES = {"e": "float16", "f": "float32", "d": "float64", "b": "int8"}


@dataclass(frozen=True)
class Column:
    """One Parquet column of a published schema."""

    name: str
    dtype: str
    size: int  # values per row: 1 a scalar, more a fixed-size list
    read: bool


COLUMN_SETS: dict[str, tuple[Column, ...]] = {
    "dlrm": tuple(Column(f"feature_{i:03d}", _DTYPES[c.lower()], 1, c.isupper())
                  for i, c in enumerate(_DLRM_CODES)),
    # configs/dlio/workload/flux_b200.yaml (and flux_mi355.yaml): sizes in float32 values,
    # 2,164,832 bytes a row in all (record_length); no column is marked unread.
    "flux": (Column("t5_encodings", "float32", 524328, True), Column("clip_encodings", "float32", 409, True),
             Column("mean", "float32", 8232, True), Column("logvar", "float32", 8232, True),
             Column("timestamp", "float32", 7, True)),
}
#: rows per Parquet row group (dlrm_b200.yaml parquet.row_group_size; flux publishes none)
ROW_GROUP_ROWS = {"dlrm": 6144}


def row_bytes(columns: tuple[Column, ...], only_read: bool = False) -> int:
    """Bytes of one row of these columns (of the columns read, with only_read)."""
    import numpy as np

    return sum(np.dtype(c.dtype).itemsize * c.size for c in columns if c.read or not only_read)


def timing_of(model: str, accelerator: str) -> Timing:
    """The published timing of `model` on `accelerator`, or a ConfigError naming the choices."""
    if model not in SHAPES:
        raise ConfigError(f"train.accelerator={accelerator} needs train.model, one of {', '.join(MODELS)}",
                          f"set train.model, e.g. train.model=unet3d train.accelerator={accelerator}, "
                          "or set train.computation_time instead")
    found = SHAPES[model].timings.get(accelerator)
    if found is None:
        have = ", ".join(SHAPES[model].timings)
        raise ConfigError(f"{REPO} publishes no {model} config for {accelerator}",
                          f"choose train.accelerator from {have}, or set train.computation_time "
                          "and train.batch_size")
    return found


@dataclass(frozen=True)
class Effective:
    """The compute per step a train run uses and where each figure came from."""

    computation_time: float
    batch_size: int
    min_au_pct: float | None
    computation_source: str
    batch_source: str
    au_source: str | None

    def as_dict(self) -> dict[str, Any]:
        """The figures and their sources, for the results document."""
        return {"computation_time": self.computation_time, "computation_time_source": self.computation_source,
                "batch_size": self.batch_size, "batch_size_source": self.batch_source,
                "min_au_pct": self.min_au_pct, "min_au_source": self.au_source}


DEFAULT_BATCH = 4


def effective(tc: Any) -> Effective:
    """train.computation_time, batch_size and min_au as given, else from train.accelerator.

    An explicit key always wins; without one and without an accelerator: 0 s of compute,
    batch 4, no AU threshold.
    """
    timing = timing_of(tc.model, tc.accelerator) if tc.accelerator != "none" else None
    label = f"train.accelerator={tc.accelerator} ({timing.source})" if timing else ""
    if tc.computation_time is not None:
        compute, compute_src = tc.computation_time, "train.computation_time"
    elif timing:
        compute, compute_src = timing.computation_time, label
    else:
        compute, compute_src = 0.0, "default (no train.computation_time, no train.accelerator)"
    if tc.batch_size is not None:
        batch, batch_src = tc.batch_size, "train.batch_size"
    elif timing:
        batch, batch_src = timing.batch_size, label
    else:
        batch, batch_src = DEFAULT_BATCH, "default"
    if tc.min_au is not None:
        au, au_src = tc.min_au, "train.min_au"
    elif timing:
        au, au_src = timing.min_au_pct, label
    else:
        au, au_src = None, None
    return Effective(compute, batch, au, compute_src, batch_src, au_src)


@dataclass(frozen=True)
class Datasize:
    """The smallest dataset the rules accept for a cluster, and why."""

    hosts: int
    memory_bytes: int  # of all hosts together
    accelerators: int  # over all hosts
    batch_size: int
    samples_per_file: int
    record_size: int
    files_by_steps: int
    files_by_memory: int
    num_files: int
    total_bytes: int

    @property
    def bound_by(self) -> str:
        """Which of the two rules sets the size."""
        return "memory" if self.files_by_memory > self.files_by_steps else "steps"

    def as_dict(self) -> dict[str, Any]:
        """The inputs and outputs, for a results document."""
        return {"hosts": self.hosts, "memory_bytes": self.memory_bytes,
                "accelerators": self.accelerators, "batch_size": self.batch_size,
                "samples_per_file": self.samples_per_file, "record_size": self.record_size,
                "files_by_steps": self.files_by_steps, "files_by_memory": self.files_by_memory,
                "min_num_files": self.num_files, "min_total_bytes": self.total_bytes, "bound_by": self.bound_by}


def min_dataset(hosts: int, memory_bytes: int, accelerators: int, batch_size: int,
                samples_per_file: int, record_size: int) -> Datasize:
    """Rules.md 3.1.2: max(500 steps x batch x accelerators, 5 x the hosts' memory), in files.

    `memory_bytes` is the memory of all hosts together. As mlpstorage_py/rules/utils.py
    computes it: files for 5 x memory = ceil(bytes / file bytes), files for the steps =
    ceil(samples / samples per file), the larger of the two.
    """
    file_bytes = samples_per_file * record_size
    memory = memory_bytes * HOST_MEMORY_MULTIPLIER
    by_memory = math.ceil(memory / file_bytes) if file_bytes > 0 else 0
    by_steps = math.ceil(MIN_STEPS_PER_EPOCH * accelerators * batch_size / samples_per_file)
    files = max(by_memory, by_steps)
    return Datasize(hosts, memory_bytes, accelerators, batch_size, samples_per_file, record_size,
                    by_steps, by_memory, files, files * file_bytes)


def run_verdicts(runs: list[dict[str, Any]], min_au_pct: float | None) -> dict[str, Any]:
    """The run protocol: the first of several runs is a warm-up; the measured ones give the
    mean samples/s and AU, must agree within AGREEMENT_PCT in samples/s, and each passes
    when its AU (mean over ranks and epochs) reaches the minimum (Rules.md 3.3.2)."""
    measured = runs[1:] if len(runs) > 1 else runs
    for i, run in enumerate(runs):
        au = run.get("au_pct_mean")
        run["warmup"] = len(runs) > 1 and i == 0
        run["verdict"] = (None if min_au_pct is None else
                          "PASS" if au is not None and au >= min_au_pct else "FAIL")
    rates = [r["samples_per_s"] for r in measured]
    aus = [r["au_pct_mean"] for r in measured if r.get("au_pct_mean") is not None]
    mean_rate = sum(rates) / len(rates) if rates else 0.0
    spread = (100.0 * max(abs(r - mean_rate) for r in rates) / mean_rate) if len(rates) > 1 and mean_rate > 0 else 0.0
    verdict = None
    if min_au_pct is not None:
        verdict = "PASS" if measured and all(r["verdict"] == "PASS" for r in measured) else "FAIL"
    return {"runs": len(runs), "measured_runs": len(measured), "warmup_runs": len(runs) - len(measured),
            "samples_per_s_mean": mean_rate, "au_pct_mean": sum(aus) / len(aus) if aus else None,
            "samples_per_s_spread_pct": spread,
            "runs_agree": spread <= AGREEMENT_PCT if len(rates) > 1 else None,
            "agreement_pct": AGREEMENT_PCT, "min_au_pct": min_au_pct, "verdict": verdict}

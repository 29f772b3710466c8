"""Configuration: frozen dataclasses with a closed key set, loaded from YAML plus overrides.

Pure: no MPI and no storage I/O. Every rule that can be checked without looking at the
storage is checked here; rules that need the storage (alignment, free space) belong to
preflight.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Sequence
import warnings
from dataclasses import dataclass, field
from typing import Any

import yaml

from mpibench.errors import ConfigError
from mpibench.mlperf import ACCELERATORS, COLUMN_SETS, MODELS, row_bytes, timing_of
from mpibench.units import format_size, parse_size, si_size_hint

AUTO = "auto"
WORKLOADS = ("bandwidth", "datagen", "train", "checkpoint", "kvcache", "metadata", "modelload")
#: the storage types a configuration may name; mpibench.backends.register adds a new one
STORAGE_TYPES: list[str] = ["local_fs", "direct_fs", "s3", "null"]
LOCAL_SCHEMES = ("file://", "direct://")
RUN_ID_MAX = 128
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
DATASET_FORMATS = ("npz", "hdf5", "raw", "jpeg", "tfrecord", "parquet")
#: dataset formats whose files honour dataset.compression (formats.encode)
COMPRESSED_FORMATS = ("hdf5",)


#: kinds of keys holding a number: each must declare its range (minimum and maximum)
NUMERIC_KINDS = ("int", "optional_int", "int_or_auto", "float", "optional_float", "size", "optional_size")
DAY_S = 86400.0
TiB = 1024**4
SEED_MAX = 2**63 - 1
#: the most ranks a checkpoint may emulate (beyond the largest training jobs; each is a
#: shard file or two per checkpoint, and planning lists them)
RANKS_MAX = 2**17


def _opt(default: Any, kind: str, *, choices: Sequence[str] = (), minimum: float | None = None,
         maximum: float | None = None, doc: str = "") -> Any:
    """Declare a config key: its default, how its value is read, and its allowed range.

    A number beyond `maximum` is refused when the configuration is loaded (exit 2): a
    value that passes must be one the run can act on (a timer, a size, a count), not
    one that overflows a clock or a buffer later, mid-run.
    """
    if kind in NUMERIC_KINDS and (minimum is None or maximum is None):
        raise AssertionError(f"a {kind} key needs a minimum and a maximum")  # a declaration error
    meta = {"kind": kind, "choices": choices, "minimum": minimum, "maximum": maximum, "doc": doc}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class StorageConfig:
    """Where the benchmark does its I/O and through which library."""

    type: str = _opt("local_fs", "enum", choices=STORAGE_TYPES,
                     doc="local_fs (buffered POSIX), direct_fs (O_DIRECT), s3, or null (no storage: "
                         "every I/O succeeds at once; measures mpibench's own cost per operation)")
    root: str = _opt("", "str", doc="directory, or s3://bucket/prefix for s3 (unused by null)")
    library: str = _opt("native", "enum", choices=("native", "s3dlio"),
                        doc="direct_fs through native os.pwritev/preadv or s3dlio's direct://")
    create_parents: bool = _opt(False, "bool", doc="create missing parent directories of root")
    endpoint: str | None = _opt(None, "optional_str", doc="S3 endpoint URL (else AWS_ENDPOINT_URL)")
    endpoints: list[str] = _opt([], "str_list", doc="several S3 endpoints, spread over ranks")
    create_bucket: bool = _opt(False, "bool", doc="create the bucket when it is missing")
    timeout: float = _opt(30.0, "float", minimum=0.1, maximum=DAY_S,
                          doc="S3 request timeout in seconds (connect timeout is min(5, this))")
    retries: int = _opt(3, "int", minimum=0, maximum=1000, doc="S3 retries of a failed request")
    threads: int | str = _opt(AUTO, "int_or_auto", minimum=1, maximum=4096,
                              doc="s3dlio runtime threads per rank (auto: usable CPUs per node / ranks per node, "
                                  "on S3 at most the rank's requests in flight)")
    part_size: int = _opt(16 * 1024**2, "size", minimum=1, maximum=5 * 1024**3,
                          doc="s3: bytes per multipart-upload part (at least 5 MiB)")
    parts_in_flight: int = _opt(8, "int", minimum=1, maximum=4096,
                                doc="s3: parts of one multipart upload being sent at once")
    sign_payload: bool = _opt(True, "bool",
                              doc="s3: put the SHA-256 of each PUT body in its signature (false: "
                                  "UNSIGNED-PAYLOAD, no hashing on the client; only for endpoints you trust)")


@dataclass(frozen=True)
class IoConfig:
    """How every workload keeps I/Os in flight: the queue depth and what keeps it."""

    depth: int | str = _opt(AUTO, "int_or_auto", minimum=1, maximum=4096,
                            doc="concurrent I/Os in flight per rank (auto: 1 for local_fs)")
    engine: str = _opt(AUTO, "enum", choices=(AUTO, "io_uring", "threads"),
                       doc="files, depth > 1: one thread with an io_uring ring, or a thread "
                           "per I/O (auto: io_uring where the kernel allows it)")


@dataclass(frozen=True)
class BandwidthConfig:
    """IOR-like write-then-read test."""

    transfer_size: int = _opt(1024**2, "size", minimum=1, maximum=64 * 1024**3, doc="bytes per I/O operation")
    block_size: int = _opt(256 * 1024**2, "size", minimum=1, maximum=1024 * TiB, doc="bytes each rank writes per iteration")
    file_mode: str = _opt("per_rank", "enum", choices=("per_rank", "shared"),
                          doc="one file per rank, or one shared file of rank slices")
    iterations: int = _opt(3, "int", minimum=1, maximum=1_000_000, doc="repetitions of the write and read phases")
    overwrite: bool = _opt(False, "bool",
                           doc="iterations after the first write over the previous iteration's files "
                               "(IOR -k) instead of removing them first and writing new ones")
    fsync: bool = _opt(True, "bool", doc="fsync before close in the write phase")
    reorder_reads: bool = _opt(True, "bool", doc="read data another rank wrote (IOR -C)")
    access: str = _opt("sequential", "enum", choices=("sequential", "random"),
                       doc="transfer order within a rank's block")
    object_size: int | None = _opt(None, "optional_size", minimum=1, maximum=5 * TiB,
                                   doc="s3: bytes per object (default: one object per rank per iteration)")
    deadline: float = _opt(0.0, "float", minimum=0.0, maximum=30 * DAY_S,
                           doc="stonewall: seconds after which ranks stop issuing I/O (0: off)")
    cache: str = _opt("cold", "enum", choices=("cold", "warm"),
                      doc="local_fs reads: evict the file first (cold) or read what the page cache holds (warm)")
    stonewall_mode: str = _opt("stop", "enum", choices=("stop", "wearout"),
                               doc="at the deadline, stop or let every rank finish the slowest's amount")


@dataclass(frozen=True)
class DatasetConfig:
    """The synthetic training dataset written by datagen and read by train."""

    name: str = _opt("dataset", "str", doc="folder under storage.root holding the dataset")
    num_files: int = _opt(64, "int", minimum=1, maximum=10**9, doc="number of files (objects)")
    samples_per_file: int = _opt(1, "int", minimum=1, maximum=10**7, doc="samples (records) per file")
    record_size: int = _opt(1024**2, "size", minimum=1, maximum=64 * 1024**3, doc="mean bytes per sample")
    record_size_stdev: int = _opt(0, "size", minimum=0, maximum=64 * 1024**3, doc="standard deviation of sample bytes")
    format: str = _opt("npz", "enum", choices=(*DATASET_FORMATS, "safetensors"),
                       doc="file format: npz, hdf5, raw, jpeg (one image a file), tfrecord, parquet; "
                           "safetensors: the modelload section's model, in HF's layout")
    num_subfolders: int = _opt(0, "int", minimum=0, maximum=10**6, doc="spread files over this many subfolders")
    seed: int = _opt(1234, "int", minimum=0, maximum=SEED_MAX, doc="seed of sizes and content")
    hdf5_chunk_size: int | None = _opt(None, "optional_size", minimum=1, maximum=4 * 1024**3,
                                       doc="hdf5: chunk bytes (default contiguous)")
    compression: str = _opt("none", "enum", choices=("none", "gzip", "lzf"),
                            doc="hdf5: dataset compression")
    columns: str = _opt("none", "enum", choices=("none", *COLUMN_SETS),
                        doc="parquet: the published column set (mpibench/mlperf.py); record_size is its row size")
    row_group_size: int | None = _opt(None, "optional_int", minimum=1, maximum=10**9,
                                      doc="parquet: rows per row group (default: the column set's published "
                                          "value, else one row group a file)")


@dataclass(frozen=True)
class TrainConfig:
    """How the training workload reads the dataset."""

    epochs: int = _opt(1, "int", minimum=1, maximum=1_000_000, doc="passes over the dataset")
    runs: int = _opt(1, "int", minimum=1, maximum=1000,
                     doc="runs of train.epochs each, a new shuffle seed per run; with more than one "
                         "the first is a warm-up and the others are measured (MLPerf: 6)")
    batch_size: int | None = _opt(None, "optional_int", minimum=1, maximum=10**7,
                                  doc="samples per batch per rank (default: the accelerator's published batch, else 4)")
    read_threads: int | str = _opt(AUTO, "int_or_auto", minimum=1, maximum=4096,
                                   doc="reader threads per rank (auto: 1 on files expected in the page cache "
                                       "with no compute to overlap, else 4; mpibench.choices)")
    shuffle: str = _opt("file", "enum", choices=("off", "file", "sample"),
                        doc="seeded order, new each epoch")
    computation_time: float | None = _opt(None, "optional_float", minimum=0.0, maximum=DAY_S,
                                          doc="emulated compute seconds per batch (default: the accelerator's "
                                              "published time, else 0); wins over train.accelerator")
    model: str = _opt("none", "enum", choices=("none", *MODELS),
                      doc="MLPerf Storage model whose published timing train.accelerator picks")
    accelerator: str = _opt("none", "enum", choices=("none", *ACCELERATORS),
                            doc="emulated accelerator: sets computation_time, batch_size and min_au from "
                                "the published config of train.model")
    min_au: float | None = _opt(None, "optional_float", minimum=0.0, maximum=100.0,
                                doc="AU % a run must reach to pass (default: the accelerator's published value)")
    prefetch: int = _opt(2, "int", minimum=0, maximum=10**6, doc="batches read ahead of the compute")
    decode: bool = _opt(True, "bool", doc="parse the files read as the format says (Parquet is always parsed)")
    cache: str = _opt("cold", "enum", choices=("cold", "warm"),
                      doc="local_fs: evict the files before each epoch (cold) or not (warm)")
    seed: int = _opt(0, "int", minimum=0, maximum=SEED_MAX, doc="seed of the shuffle")


@dataclass(frozen=True)
class CheckpointConfig:
    """LLM checkpoint write and read."""

    model: str = _opt("llama3-8b", "str", doc="preset name, or 'custom' with the sizes below")
    num_checkpoints_write: int = _opt(10, "int", minimum=0, maximum=1_000_000, doc="checkpoints written")
    num_checkpoints_read: int = _opt(10, "int", minimum=0, maximum=1_000_000, doc="checkpoints read back")
    fsync: bool = _opt(True, "bool", doc="fsync each shard before close")
    interval: float = _opt(0.0, "float", minimum=0.0, maximum=DAY_S, doc="seconds between checkpoints")
    scale: float = _opt(1.0, "float", minimum=0.0, maximum=1.0, doc="factor in (0, 1] shrinking every shard")
    verify: bool = _opt(False, "bool", doc="check the content read back")
    ranks: int | None = _opt(None, "optional_int", minimum=1, maximum=RANKS_MAX,
                             doc="the preset's rank count to emulate (default: the preset's)")
    transfer_size: int = _opt(16 * 1024**2, "size", minimum=1, maximum=64 * 1024**3, doc="bytes per I/O operation")
    model_bytes: int | None = _opt(None, "optional_size", minimum=1, maximum=1024 * TiB, doc="custom: model bytes")
    optimizer_bytes: int | None = _opt(None, "optional_size", minimum=1, maximum=1024 * TiB, doc="custom: optimizer bytes")
    tp: int = _opt(1, "int", minimum=1, maximum=RANKS_MAX, doc="custom: tensor parallel size")
    pp: int = _opt(1, "int", minimum=1, maximum=RANKS_MAX, doc="custom: pipeline parallel size")
    zero_stage: int = _opt(3, "int", minimum=0, maximum=3, doc="custom: ZeRO stage (1 or 3)")
    accelerator: str = _opt("none", "enum", choices=("none", *ACCELERATORS),
                            doc="emulated accelerator: its memory x the emulated ranks must hold the "
                                "checkpoint (MLPerf Storage Rules 4.3.4)")
    subset: bool = _opt(False, "bool", doc="MLPerf subset run: llama3-8b on exactly 8 emulated ranks (Rules 4.3.5)")
    mode: str = _opt("both", "enum", choices=("both", "write", "read"),
                     doc="both: write then read in one run (run directory); write: write into "
                         "checkpoint.folder and keep it; read: read what a write run left there")
    folder: str = _opt("", "str", doc="write/read modes: the folder below storage.root holding the checkpoints")


@dataclass(frozen=True)
class KvcacheConfig:
    """LLM inference offloading its KV cache to storage (mpibench.workloads.kvcache)."""

    model: str = _opt("llama3.1-8b", "enum", choices=("tiny", "mistral-7b", "llama2-7b", "llama3.1-8b",
                                                       "llama3.1-70b-instruct"),
                      doc="model shape: sets the KV bytes per token")
    users: list[int] = _opt([8], "int_list", minimum=1,
                            doc="concurrent users per rank; a list steps through the counts (capacity search)")
    duration: float = _opt(60.0, "float", minimum=0.0, maximum=DAY_S, doc="measured seconds per user count")
    max_requests: int = _opt(0, "int", minimum=0, maximum=10**12,
                             doc="end a step early once each rank has started this many requests (0: duration only)")
    warmup: float = _opt(5.0, "float", minimum=0.0, maximum=DAY_S, doc="seconds of traffic before each measurement, not counted")
    memory_budget: int = _opt(0, "size", minimum=0, maximum=1024 * TiB,
                              doc="memory tier per rank in bytes, LRU (0: every KV block goes to storage)")
    storage_capacity: int = _opt(0, "size", minimum=0, maximum=1024 * TiB,
                                 doc="storage per rank in bytes; past it the least recently used entries are "
                                     "deleted (0: 80 % of the free space at preflight over the ranks; "
                                     "unbounded on s3)")
    concurrency: int = _opt(4, "int", minimum=1, maximum=4096, doc="requests served at once per rank (threads)")
    generation: str = _opt("none", "enum", choices=("none", "fast", "realistic"),
                           doc="emulated GPU time per output token: none 0, fast 2 ms, realistic 30 ms")
    grouping: str = _opt("tokens", "enum", choices=("tokens", "layer", "entry"),
                         doc="one object per block_tokens tokens, per layer, or per request (the reference)")
    block_tokens: int = _opt(16, "int", minimum=1, maximum=10**7, doc="tokens per object with grouping=tokens")
    transfer_size: int = _opt(4 * 1024**2, "size", minimum=4096, maximum=64 * 1024**3, doc="largest I/O; larger objects move in pieces")
    max_context: int = _opt(0, "int", minimum=0, maximum=10**8, doc="cap on a user's context tokens (0: the templates' ranges)")
    multi_turn: bool = _opt(True, "bool", doc="conversations: a turn reads its earlier turns' KV back")
    max_turns: int = _opt(8, "int", minimum=1, maximum=10**6, doc="turns at most per conversation")
    decode_batch: int = _opt(32, "int", minimum=1, maximum=10**7, doc="output tokens per decode read of the request's KV")
    prefix_tokens: int = _opt(0, "int", minimum=0, maximum=10**8, doc="a shared prefix (system prompt) read by every request (0: none)")
    fsync: bool = _opt(True, "bool", doc="local_fs: fsync each object written (the reference does)")
    p95_target: float = _opt(0.0, "float", minimum=0.0, maximum=DAY_S,
                             doc="seconds: capacity = the largest users count whose pooled p95 read latency is below")
    verify: bool = _opt(False, "bool", doc="check every byte read against the seeded content")


@dataclass(frozen=True)
class ModelloadConfig:
    """Loading an LLM's safetensors shards (written by datagen with dataset.format=safetensors)."""

    model: str = _opt("llama3-8b", "str", doc="llama3 preset whose tensors the model has")
    scale: float = _opt(1.0, "float", minimum=0.0, maximum=1.0, doc="factor in (0, 1] shrinking every matrix's rows")
    shard_size: int = _opt(5 * 10**9, "size", minimum=1, maximum=1024 * TiB, doc="largest shard file (transformers: 5GB)")
    reader: str = _opt(AUTO, "enum", choices=(AUTO, "mmap", "read", "direct", "s3"),
                       doc="mmap or read (local_fs), direct (direct_fs), s3 (ranged GETs); auto: "
                           "mmap, direct or s3 by storage.type")
    mmap_mapping: str = _opt("private", "enum", choices=("private", "shared"),
                             doc="mmap reader: MAP_PRIVATE (as safetensors) or MAP_SHARED (as mmap.mmap)")
    layout: str = _opt("replicated", "enum",
                       choices=("replicated", "tensor_parallel", "pipeline_parallel", "tensor_pipeline"),
                       doc="who loads what: all of it, a TP slice, a PP stage, or both")
    tp: int | str = _opt(AUTO, "int_or_auto", minimum=1, maximum=RANKS_MAX, doc="tensor-parallel size (auto: the preset's, "
                                                            "else the world size for tensor_parallel)")
    pp: int | str = _opt(AUTO, "int_or_auto", minimum=1, maximum=RANKS_MAX, doc="pipeline stages (auto: the preset's, "
                                                            "else the world size for pipeline_parallel)")
    iterations: int = _opt(1, "int", minimum=1, maximum=1_000_000, doc="cold load then warm load, this many times")
    buffer_size: int = _opt(64 * 1024**2, "size", minimum=4096, maximum=64 * 1024**3, doc="bytes per read and staging buffer per rank")
    s3_fetch: str = _opt("ranges", "enum", choices=("ranges", "objects"),
                         doc="s3 reader: one ranged GET per tensor slice, or every shard whole (its own "
                             "tensors or not) in one GET into a shard-sized buffer, as a download "
                             "before the load")
    backing_root: str | None = _opt(None, "optional_str",
                                    doc="a FUSE root's backing directory: its files are evicted too before "
                                        "a cold load")


@dataclass(frozen=True)
class MetadataConfig:
    """mdtest-like metadata test: create, stat, read, rename, list and remove many small files."""

    items: int = _opt(1000, "int", minimum=1, maximum=10**9, doc="files (objects) each rank creates (mdtest -n)")
    file_size: int = _opt(0, "size", minimum=0, maximum=64 * 1024**3, doc="bytes written into each file and read back (0: empty files)")
    layout: str = _opt("unique", "enum", choices=("unique", "shared"),
                       doc="a directory tree per rank (mdtest -u) or one tree shared by every rank")
    depth: int = _opt(0, "int", minimum=0, maximum=64, doc="levels of directories below the tree's top (mdtest -z)")
    branching: int = _opt(1, "int", minimum=1, maximum=10**6, doc="subdirectories of each directory above the leaves (mdtest -b)")
    items_at: str = _opt("leaves", "enum", choices=("leaves", "all"),
                         doc="files in the leaf directories only (mdtest -L) or in every directory of the tree")
    stride: int | str = _opt(AUTO, "int_or_auto", minimum=0, maximum=RANKS_MAX,
                             doc="stat, read, list, rename and remove the files of rank (rank + stride) % ranks "
                                 "(mdtest -N); auto: the ranks of one node, so another node's files")
    deadline: float = _opt(0.0, "float", minimum=0.0, maximum=30 * DAY_S,
                           doc="stonewall: seconds after which ranks stop creating files (0: off); "
                               "later phases use exactly the files created")
    read: bool = _opt(True, "bool", doc="read each file back (file_size bytes) after the stat phase")
    list: bool = _opt(False, "bool", doc="list the directories (readdir / S3 LIST) after the read phase")
    list_page: int = _opt(1000, "int", minimum=1, maximum=1_000_000, doc="entries per page of a listing: S3 ListObjectsV2 MaxKeys "
                          "(at most 1000), names handed out per readdir page on files")
    rename: bool = _opt(False, "bool", doc="rename each file in its directory before the remove phase (files only)")
    fsync: bool = _opt(False, "bool", doc="fsync each file before closing it in the create phase (mdtest -y)")
    preset: str | None = _opt(None, "optional_str", doc="name of the preset the configuration comes from "
                                                        "(recorded in the results)")


@dataclass(frozen=True)
class MetricsConfig:
    """What is recorded beside bytes and times."""

    interval: float = _opt(0.5, "float", minimum=0.01, maximum=3600.0, doc="time-series interval in seconds")


@dataclass(frozen=True)
class Config:
    """The whole, validated configuration of one run."""

    workload: str = _opt("bandwidth", "enum", choices=WORKLOADS, doc="what to run")
    storage: StorageConfig = field(default_factory=StorageConfig)
    io: IoConfig = field(default_factory=IoConfig)
    bandwidth: BandwidthConfig = field(default_factory=BandwidthConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    kvcache: KvcacheConfig = field(default_factory=KvcacheConfig)
    modelload: ModelloadConfig = field(default_factory=ModelloadConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    run_id: str | None = _opt(None, "optional_str", doc="name of the run (default: time + random)")
    keep_files: bool = _opt(False, "bool", doc="keep the files the run wrote")
    verify: bool = _opt(False, "bool", doc="check every byte read against the seeded content")
    huge_pages: bool = _opt(False, "bool",
                            doc="I/O buffers in 2 MiB transparent huge pages (physically contiguous, "
                                "as fio --mem=mmaphuge); default: ordinary 4 KiB pages")
    seed: int = _opt(42, "int", minimum=0, maximum=SEED_MAX, doc="seed of the data written")

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain data (for results and plan output)."""
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {
    "storage": StorageConfig,
    "io": IoConfig,
    "bandwidth": BandwidthConfig,
    "dataset": DatasetConfig,
    "train": TrainConfig,
    "checkpoint": CheckpointConfig,
    "kvcache": KvcacheConfig,
    "modelload": ModelloadConfig,
    "metadata": MetadataConfig,
    "metrics": MetricsConfig,
}


#: keys that moved: old dotted name -> new one (an old key is refused with one line naming the new)
MOVED_KEYS = {
    "bandwidth.io_depth": "io.depth",
    "bandwidth.io_engine": "io.engine",
}


def _keys_of(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return ConfigError(
        f"unknown configuration key '{where}{key}'",
        f"{hint}valid keys{' of ' + where.rstrip('.') if where else ''}: {', '.join(valid)}",
    )


def _coerce(value: Any, meta: dict[str, Any], key: str) -> Any:
    """Turn one YAML value into the declared kind, or raise a ConfigError naming the key."""
    kind = meta["kind"]
    choices = meta["choices"]
    minimum = meta["minimum"]
    maximum = meta.get("maximum")

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"configuration key '{key}' must be {expected}, got {value!r}")

    if kind in ("optional_str", "optional_size", "optional_int", "optional_float") and value is None:
        return None
    if kind in ("int_or_auto",) and isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    result: Any
    if kind == "enum":
        if isinstance(value, bool) and ("on" if value else "off") in choices:
            value = "on" if value else "off"  # YAML 1.1 reads a bare off/on as a boolean
        if value is None and "null" in choices:
            value = "null"  # YAML reads a bare null (storage.type: null) as nothing
        if not isinstance(value, str) or value not in choices:
            close = difflib.get_close_matches(str(value), list(choices), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"configuration key '{key}' must be one of {', '.join(choices)}, got {value!r}{hint}"
            )
        return value
    if kind in ("str", "optional_str"):
        if not isinstance(value, str):
            raise bad("a string")
        _no_nul(value, key)
        return value
    if kind == "str_list":
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        for item in value:
            _no_nul(item, key)
        return list(value)
    if kind == "int_list":
        if isinstance(value, str):
            try:
                value = [int(v) for v in value.split(",") if v.strip()]
            except ValueError:
                raise bad("an integer or a list of integers") from None
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise bad("an integer or a list of integers")
        if minimum is not None and min(value) < minimum:
            raise ConfigError(f"configuration key '{key}' must hold integers of at least {minimum}, got {value!r}")
        return list(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind in ("int", "optional_int", "int_or_auto"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer" + (" or 'auto'" if kind == "int_or_auto" else ""))
        result = value
    elif kind in ("float", "optional_float"):
        if isinstance(value, str):
            value = _yaml11_number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        result = float(value)
        if not math.isfinite(result):  # NaN passes every comparison; inf overflows timers
            raise bad("a finite number")
    elif kind in ("size", "optional_size"):
        try:
            result = parse_size(value)
        except ValueError as exc:
            raise ConfigError(f"configuration key '{key}': {exc}") from None
        hint = si_size_hint(value)
        if hint:  # read as written, but said: 4MB is rarely meant as 4,000,000 bytes
            warnings.warn(f"configuration key '{key}': {hint}", stacklevel=2)
    else:  # pragma: no cover - a declaration error, not user input
        raise AssertionError(f"unknown kind {kind}")
    if minimum is not None and result < minimum:
        if minimum == 1 and kind in ("size", "optional_size"):
            raise ConfigError(f"configuration key '{key}' must be a positive size, got {value!r}")
        raise ConfigError(f"configuration key '{key}' must be at least {minimum}, got {value!r}")
    if maximum is not None and result > maximum:
        most = (f"{int(maximum)} bytes ({format_size(int(maximum))})" if kind in ("size", "optional_size")
                else f"{maximum:g}")
        raise ConfigError(f"configuration key '{key}' must be at most {most}, got {value!r}",
                          f"give {key} a value from {minimum:g} to {maximum:g}")
    return result


def _no_nul(value: str, key: str) -> None:
    """A NUL byte cannot be part of a path or name (the OS would refuse it later, obscurely)."""
    if "\0" in value:
        raise ConfigError(f"configuration key '{key}' holds a NUL byte (\\0): {value!r}",
                          "remove it from the value")


def _yaml11_number(value: str) -> Any:
    """A number YAML 1.1 left as a string (1e-9, 5E3: no dot or no exponent sign), else the string."""
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        return value
    if not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text):
        return value  # 'nan', 'inf', '1_000': not what a user writes for a plain number
    return number


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"configuration section '{where.rstrip('.')}' must be a mapping of keys, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"configuration key {key!r} in '{where or 'top level'}' is not a name")
        if key not in fields:
            if f"{where}{key}" in MOVED_KEYS:
                raise ConfigError(f"{where}{key} moved to {MOVED_KEYS[where + key]}")
            raise _unknown_key(key, list(fields), where)
        if where == "" and key in SECTIONS:
            kwargs[key] = _build(SECTIONS[key], value, f"{key}.")
        else:
            kwargs[key] = _coerce(value, dict(fields[key].metadata), f"{where}{key}")
    return cls(**kwargs)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"override '{dotted}' is not a dotted key", "write e.g. storage.root=/scratch/x")
    node = data
    for depth, part in enumerate(parts[:-1]):
        if parts[0] not in SECTIONS or depth > 0:
            valid = [k for k in _keys_of(Config)]
            if depth == 0:
                raise _unknown_key(part, valid, "")
            raise ConfigError(f"override '{dotted}' is nested too deeply", "keys have at most two levels")
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            raise ConfigError(f"configuration section '{part}' must be a mapping of keys")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split 'a.b=value' and read value as YAML (so 3, true, [x, y] keep their types)."""
    if "=" not in text:
        raise ConfigError(f"cannot read override '{text}'", "write KEY=VALUE, e.g. storage.root=/scratch/x")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except ConfigError as exc:
        raise ConfigError(f"override '{key}': {exc.message}", exc.hint) from None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict,)) or (value is None and raw.strip() not in ("null", "~", "None")):
        value = raw
    return key, value


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the generic constructor says so
                break
            if first is not None:
                raise ConfigError(
                    f"configuration key {key!r} is given twice in the same mapping "
                    f"(line {first + 1} and line {key_node.start_mark.line + 1})",
                    "keep one of them",
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


#: what one YAML document may expand to: nodes, an alias counted in full each time it is
#: used (a config has a few hundred; a "billion laughs" file of a few hundred bytes expands
#: to billions), and nesting levels (a config has 3; deeper ends in a RecursionError)
YAML_MAX_NODES = 100_000
YAML_MAX_DEPTH = 64
#: a configuration is a few KiB; more is not one (and /dev/zero never ends)
MAX_CONFIG_BYTES = 1024 * 1024


class _BoundedLoader(_UniqueKeyLoader):
    """The loader of every YAML mpibench reads: refuses, while composing and before any
    object is built, a document that expands past YAML_MAX_NODES or nests deeper than
    YAML_MAX_DEPTH."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._expanded: dict[int, int] = {}  # id(node) -> nodes it stands for, aliases expanded

    def compose_node(self, parent: Any, index: Any) -> Any:
        mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        if self.check_event(yaml.AliasEvent):  # type: ignore[no-untyped-call]
            node = super().compose_node(parent, index)  # type: ignore[no-untyped-call]
            if id(node) not in self._expanded:  # the alias is inside the node it names
                raise ConfigError(f"the YAML alias at line {mark.line + 1} refers to a node that holds it",
                                  "a configuration cannot contain itself: remove the alias")
            return node
        self._depth += 1
        if self._depth > YAML_MAX_DEPTH:
            raise ConfigError(f"the YAML nests more than {YAML_MAX_DEPTH} levels deep (line {mark.line + 1})",
                              "a configuration has sections of keys, two levels")
        try:
            node = super().compose_node(parent, index)  # type: ignore[no-untyped-call]
        finally:
            self._depth -= 1
        children: list[Any] = []
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        size = 1 + sum(self._expanded.get(id(child), 1) for child in children)
        if size > YAML_MAX_NODES:
            raise ConfigError(f"the YAML expands to more than {YAML_MAX_NODES} values (aliases counted each time "
                              f"they are used; line {mark.line + 1})",
                              "a configuration is a few dozen keys: remove the repeated aliases")
        self._expanded[id(node)] = size
        return node


def load_yaml(text: str) -> Any:
    """`text` parsed with the bounded loader (ConfigError for a bound or a key given twice)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()  # type: ignore[no-untyped-call]
    except RecursionError:  # a bound above should come first; never a traceback
        raise ConfigError("the YAML nests too deeply to be read",
                          "a configuration has sections of keys, two levels") from None
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]


def _path_in(path: str, error: ConfigError) -> ConfigError:
    return ConfigError(f"config file {path}: {error.message}", error.hint)


def load_mapping(path: str) -> dict[str, Any]:
    """Read a YAML config file into a mapping, with a one-line error for any problem."""
    from mpibench.safeio import UnsafeFile, read_text

    example = "give the path of a YAML file, e.g. configs/quickstart.yaml"
    try:
        text = read_text(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist", example) from None
    except UnsafeFile as exc:
        raise ConfigError(f"config file {path} is {exc.strerror}", example) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})",
                          "give the path of a YAML file") from None
    try:
        data = load_yaml(text)
    except ConfigError as exc:
        raise _path_in(path, exc) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys (workload:, storage:, ...)")
    return data


def build_config(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Apply overrides to a mapping and turn it into a validated Config."""
    merged: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(merged, key, value)
    config = _build(Config, merged, "")
    validate(config)
    return config


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML file, apply KEY=VALUE overrides and validate."""
    return build_config(load_mapping(path), overrides)


def _check_null(config: Config) -> None:
    """null storage keeps nothing: what reads data back and looks at it cannot run on it."""
    if (config.verify or (config.workload == "checkpoint" and config.checkpoint.verify)
            or (config.workload == "kvcache" and config.kvcache.verify)):
        raise ConfigError("verify needs storage that keeps data, and storage.type=null keeps none",
                          "set verify=false (and checkpoint.verify or kvcache.verify false), or choose another storage.type")
    if config.workload in ("datagen", "train"):  # both read the dataset's manifest back
        raise ConfigError(f"workload {config.workload} reads its dataset's manifest back, and storage.type=null "
                          "keeps none", "use bandwidth or checkpoint on null, or another storage.type")


def validate(config: Config) -> None:
    """Check the rules that span several keys (the storage-dependent ones are preflight's)."""
    storage = config.storage
    root = storage.root.strip()
    if storage.type == "null":
        _check_null(config)
    elif not root:
        raise ConfigError("storage.root is not set", "give a directory, e.g. storage.root=/scratch/$USER/bench, or s3://bucket/prefix for s3")
    is_s3_root = root.startswith("s3://")
    if storage.type == "s3":
        if not is_s3_root:
            raise ConfigError(
                "storage.type=s3 needs an s3://bucket/prefix root",
                "for a local directory use local_fs or direct_fs",
            )
        bucket = root[len("s3://"):].split("/", 1)[0]
        if not bucket:
            raise ConfigError(f"storage.root {root} names no bucket", "write s3://bucket/prefix")
        if storage.part_size < 5 * 1024**2:
            raise ConfigError(f"storage.part_size={storage.part_size} is below 5 MiB, the smallest S3 part",
                              "use storage.part_size=5MiB or more")
    else:
        if is_s3_root:
            raise ConfigError(
                f"storage.type={storage.type} needs a local directory, got {root}",
                "for a bucket use storage.type=s3",
            )
        if "://" in root and not root.startswith(LOCAL_SCHEMES):
            raise ConfigError(f"storage.root {root} has an unknown scheme", "give a directory path")
        if root.startswith("direct://") and storage.type != "direct_fs":
            raise ConfigError(f"storage.root {root} asks for O_DIRECT (direct://) but storage.type={storage.type} "
                              "does buffered I/O", "set storage.type=direct_fs, or write the root as a path "
                              "(or file://)")
        if storage.library == "s3dlio" and storage.type != "direct_fs":
            raise ConfigError(
                f"storage.library=s3dlio applies to direct_fs only, not {storage.type}",
                "use storage.type=direct_fs, or storage.library=native",
            )
    if storage.endpoints and storage.endpoint:
        raise ConfigError("set storage.endpoint or storage.endpoints, not both")
    if storage.type != "s3":
        for name in ("endpoints", "endpoint"):
            if getattr(storage, name):
                raise ConfigError(f"storage.{name} applies to storage.type=s3 only, not {storage.type}",
                                  f"remove storage.{name}, or set storage.type=s3 with an s3://bucket/prefix root")
        if not storage.sign_payload:  # a file has no request to sign: the setting would do nothing
            raise ConfigError(f"storage.sign_payload applies to storage.type=s3 only, not {storage.type}",
                              "remove storage.sign_payload, or set storage.type=s3 with an s3://bucket/prefix root")
    if config.run_id is not None:
        rid = config.run_id
        if not RUN_ID_PATTERN.fullmatch(rid) or rid in (".", ".."):
            raise ConfigError(f"run_id {rid!r} is not a plain name",
                              f"use 1 to {RUN_ID_MAX} letters, digits, '-', '_' and '.' (not '.' or '..')")
        if len(rid) > RUN_ID_MAX:
            raise ConfigError(f"run_id is {len(rid)} characters long, more than {RUN_ID_MAX}",
                              f"use a run_id of at most {RUN_ID_MAX} characters")
    ds = config.dataset
    if (config.workload in ("datagen", "train") and ds.compression != "none"
            and ds.format not in COMPRESSED_FORMATS):
        raise ConfigError(
            f"dataset.compression={ds.compression} applies to dataset.format="
            f"{' or '.join(COMPRESSED_FORMATS)} only, not {ds.format}",
            f"set dataset.compression=none, or dataset.format={COMPRESSED_FORMATS[0]}",
        )
    if config.workload in ("datagen", "train"):
        _validate_mlperf(config)
    bw = config.bandwidth
    if config.workload == "bandwidth":
        if bw.block_size % bw.transfer_size:
            raise ConfigError(
                f"bandwidth.block_size ({bw.block_size}) is not a multiple of bandwidth.transfer_size ({bw.transfer_size})",
                f"use block_size={(bw.block_size // bw.transfer_size or 1) * bw.transfer_size}",
            )
        if bw.overwrite and storage.type == "s3":
            raise ConfigError("bandwidth.overwrite applies to files only: an S3 PUT replaces the whole "
                              "object, so every iteration writes new objects",
                              "remove bandwidth.overwrite, or use local_fs or direct_fs")
        if bw.object_size is not None:
            if storage.type != "s3":
                raise ConfigError("bandwidth.object_size applies to storage.type=s3 only")
            if bw.block_size % bw.object_size or bw.object_size % bw.transfer_size:
                raise ConfigError(
                    "bandwidth.object_size must divide block_size and be a multiple of transfer_size",
                    f"e.g. object_size={bw.transfer_size} (one object per transfer) or {bw.block_size} (one per block)",
                )
    if config.workload == "kvcache":
        _validate_kvcache(config.kvcache)
    validate_modelload(config)
    if config.workload == "metadata":
        validate_metadata(config)
    if config.workload == "checkpoint":
        ck = config.checkpoint
        if not 0 < ck.scale <= 1:
            raise ConfigError(f"checkpoint.scale must be in (0, 1], got {ck.scale}")
        if ck.mode != "both" and not ck.folder:
            raise ConfigError(f"checkpoint.mode={ck.mode} needs checkpoint.folder, the folder below storage.root "
                              "that the write run leaves and the read run reads",
                              "set e.g. checkpoint.folder=ckpt-8b")
        if ck.mode == "both" and ck.folder:
            raise ConfigError("checkpoint.folder applies to checkpoint.mode=write or read only",
                              "remove checkpoint.folder, or set checkpoint.mode")


def _validate_mlperf(config: Config) -> None:
    """The dataset formats' own rules, and a published timing for train.accelerator."""
    ds, tc = config.dataset, config.train
    if ds.format == "jpeg" and ds.samples_per_file != 1:
        raise ConfigError(f"dataset.format=jpeg holds one image a file, not {ds.samples_per_file}",
                          "set dataset.samples_per_file=1")
    if ds.format == "parquet":
        if ds.columns == "none":
            raise ConfigError("dataset.format=parquet needs dataset.columns (dlrm or flux)",
                              "set dataset.columns=dlrm or dataset.columns=flux")
        width = row_bytes(COLUMN_SETS[ds.columns])
        if ds.record_size != width or ds.record_size_stdev:
            raise ConfigError(f"dataset.columns={ds.columns} rows are {width} bytes, but dataset.record_size="
                              f"{ds.record_size} (stdev {ds.record_size_stdev})",
                              f"set dataset.record_size={width} dataset.record_size_stdev=0")
    elif ds.columns != "none" or ds.row_group_size is not None:
        raise ConfigError(f"dataset.columns and dataset.row_group_size apply to dataset.format=parquet only, "
                          f"not {ds.format}", "remove them, or set dataset.format=parquet")
    if tc.accelerator != "none":
        timing_of(tc.model, tc.accelerator)


def _validate_kvcache(kv: KvcacheConfig) -> None:
    """Rules of the kvcache section that span several keys."""
    if kv.users != sorted(set(kv.users)):
        raise ConfigError(f"kvcache.users must be increasing user counts without repeats, got {kv.users}",
                          f"write kvcache.users={','.join(map(str, sorted(set(kv.users))))}")
    if len(kv.users) > 1 and kv.p95_target <= 0:
        raise ConfigError("kvcache.users lists several user counts but kvcache.p95_target is not set",
                          "set kvcache.p95_target to the p95 read latency in seconds the capacity must stay under")
    if kv.duration <= 0:
        raise ConfigError("kvcache.duration must be more than 0 seconds", "e.g. kvcache.duration=60")


READERS_BY_STORAGE = {"local_fs": ("mmap", "read"), "direct_fs": ("direct",), "s3": ("s3",)}


def modelload_reader(config: Config) -> str:
    """The reader a modelload run uses: modelload.reader, or by storage.type when auto."""
    reader = config.modelload.reader
    return READERS_BY_STORAGE[config.storage.type][0] if reader == AUTO else reader


def validate_modelload(config: Config) -> None:
    """The rules of the modelload section and of a safetensors datagen."""
    ml = config.modelload
    safetensors = config.dataset.format == "safetensors"
    if config.workload == "train" and safetensors:
        raise ConfigError("dataset.format=safetensors is a model for workload=modelload, not a training dataset",
                          "choose npz, hdf5 or raw for train")
    if config.workload == "modelload" and not safetensors:
        raise ConfigError("workload=modelload reads a safetensors model: dataset.format is "
                          f"{config.dataset.format}", "set dataset.format=safetensors (and datagen it first)")
    if config.workload not in ("modelload", "datagen") or (config.workload == "datagen" and not safetensors):
        return
    if not 0 < ml.scale <= 1:
        raise ConfigError(f"modelload.scale must be in (0, 1], got {ml.scale}")
    if config.workload != "modelload":
        return
    if config.storage.type not in READERS_BY_STORAGE:
        raise ConfigError(f"workload=modelload loads a model from storage; storage.type={config.storage.type} holds none",
                          "use local_fs, direct_fs or s3")
    reader = modelload_reader(config)
    allowed = READERS_BY_STORAGE[config.storage.type]
    if reader not in allowed:
        where = {"mmap": "local_fs", "read": "local_fs", "direct": "direct_fs", "s3": "s3"}[reader]
        raise ConfigError(f"modelload.reader={reader} does not read storage.type={config.storage.type}",
                          f"use modelload.reader={' or '.join(allowed)}, or storage.type={where}")
    if ml.backing_root is not None and config.storage.type != "local_fs":
        raise ConfigError("modelload.backing_root applies to storage.type=local_fs (a FUSE mount) only",
                          "remove modelload.backing_root")


MAX_TREE_DIRS = 10_000_000  # a tree larger than this is a typing mistake, not a benchmark


def validate_metadata(config: Config) -> None:
    """Rules of the metadata section that need no storage."""
    md = config.metadata
    dirs = sum(md.branching ** level for level in range(min(md.depth, 64) + 1))
    if md.depth > 64 or dirs > MAX_TREE_DIRS:
        raise ConfigError(f"metadata.depth={md.depth} with metadata.branching={md.branching} makes a tree of "
                          f"more than {MAX_TREE_DIRS} directories", "lower metadata.depth or metadata.branching")
    if config.storage.type == "null" and (md.file_size or md.list):
        raise ConfigError("metadata.file_size and metadata.list need storage that keeps files, and "
                          "storage.type=null keeps none", "set metadata.file_size=0 and metadata.list=false "
                          "to measure mpibench's own cost per operation, or use another storage.type")
    if md.rename and config.storage.type == "s3":
        raise ConfigError("metadata.rename applies to files only: S3 has no rename (a copy and a delete are "
                          "not one metadata operation)", "remove metadata.rename, or use local_fs or direct_fs")


def describe_keys() -> list[tuple[str, str, str]]:
    """Every key with its default and description, for the configuration reference."""
    rows: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(Config):
        if f.name in SECTIONS:
            for sub in dataclasses.fields(SECTIONS[f.name]):
                default = sub.default_factory() if sub.default_factory is not dataclasses.MISSING else sub.default  # type: ignore[misc]
                rows.append((f"{f.name}.{sub.name}", repr(default), sub.metadata.get("doc", "")))
        else:
            rows.append((f.name, repr(f.default), f.metadata.get("doc", "")))
    return rows

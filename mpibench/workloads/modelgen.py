"""The safetensors model on storage: datagen of it (dataset.format=safetensors) and the
preflight check that storage holds the configured model complete.

The model is mpibench.safetensors_layout's: ranks write whole shards (rank r: shards
part_range(N, size, r)) in modelload.buffer_size writes of seeded random content with the
header at the front, O_DIRECT padded and truncated, fsynced; rank 0 then writes
model.safetensors.index.json, so a folder without the index holds an incomplete model.
"""

from __future__ import annotations

import json
import mmap
import time
from typing import TYPE_CHECKING, Any

from mpibench.buffers import aligned_buffer, buffer_footprint, file_seed, fill_random
from mpibench.config import Config
from mpibench.context import broadcast_outcome
from mpibench.engine import timed_close, timed_fsync
from mpibench.errors import BenchIOError, ConfigError, PreflightError
from mpibench.formats import check_dataset_name, encode_manifest, key_exists
from mpibench.metrics import PhaseRecorder
from mpibench.plan import part_range, round_down, round_up
from mpibench.safetensors_layout import (
    INDEX_NAME,
    PAGE,
    ModelFiles,
    Parallelism,
    ShardFile,
    model_files,
    preset_of,
    resolve_parallelism,
)
from mpibench.units import format_size

if TYPE_CHECKING:
    from mpibench.backends.base import Backend
    from mpibench.context import PreflightInfo, RunContext

INDEX_FORMAT = 1  # mpibench's own metadata in the index: version of how the model is derived


def model_of(config: Config) -> ModelFiles:
    """The model files the modelload section describes."""
    ml = config.modelload
    preset_of(ml.model)
    return model_files(ml.model, ml.scale, ml.shard_size)


def parallelism(config: Config, size: int) -> Parallelism:
    """The configured layout resolved for `size` ranks."""
    ml = config.modelload
    return resolve_parallelism(ml.layout, ml.tp, ml.pp, preset_of(ml.model), size)


def index_extra(config: Config) -> dict[str, Any]:
    """mpibench's own keys in the index's metadata: how to derive the model again."""
    ml = config.modelload
    return {"mpibench_model": INDEX_FORMAT, "preset": ml.model, "scale": ml.scale,
            "shard_size": ml.shard_size, "seed": config.dataset.seed, "dtype": "BF16"}


def read_index(backend: Backend, key: str) -> dict[str, Any] | None:
    """The model's index document, None when there is none."""
    if not key_exists(backend, key):
        return None
    size = backend.size_of(key)
    buf = aligned_buffer(round_up(max(size, 1), max(backend.alignment, PAGE)))
    n = backend.get(key, memoryview(buf)[:len(buf)])
    try:
        doc = json.loads(bytes(buf[:n]).decode("utf-8"))
    except ValueError:
        raise PreflightError(f"{backend.path_of(key)} is not valid JSON",
                             "it was not written by mpibench datagen, or was damaged") from None
    if not isinstance(doc, dict):
        raise PreflightError(f"{backend.path_of(key)} is not a safetensors index")
    return doc


def checked_index(config: Config, backend: Backend) -> tuple[ModelFiles, list[str]]:
    """The model, after checking that storage holds it complete; else a PreflightError."""
    ds = config.dataset
    model = model_of(config)
    where = backend.path_of(ds.name)
    doc = read_index(backend, f"{ds.name}/{INDEX_NAME}")
    if doc is None:
        raise PreflightError(f"no safetensors model at {where} (no {INDEX_NAME})",
                             "write it first: mpibench run CONFIG.yaml workload=datagen")
    expected = model.index(index_extra(config))
    if doc != json.loads(json.dumps(expected)):
        found = doc.get("metadata", {}) if isinstance(doc.get("metadata"), dict) else {}
        said = ", ".join(f"{k}={found.get(k)!r}" for k in ("preset", "scale", "shard_size", "seed")
                         if found.get(k) != expected["metadata"].get(k)) or "other tensors"  # type: ignore[union-attr]
        raise PreflightError(f"the model at {where} differs from the modelload section ({said})",
                             "write it again with this config into another dataset.name, or fix the config")
    checks = []
    for shard in model.shards:
        key = f"{ds.name}/{shard.name}"
        try:
            size = backend.size_of(key)
        except BenchIOError:
            raise PreflightError(f"shard {backend.path_of(key)} of the model is missing",
                                 "write the model again with datagen") from None
        if size != shard.file_bytes:
            raise PreflightError(f"shard {backend.path_of(key)} is {size} bytes, the model's is {shard.file_bytes}",
                                 "write the model again with datagen")
    checks.append(f"model at {where}: {len(model.shards)} shard(s), {model.num_tensors} tensors, "
                  f"{format_size(model.file_bytes)} ({model.file_bytes} bytes), index matches the config")
    return model, checks


# -- datagen of the model ---------------------------------------------------------------------------
class ModelWriter:
    """datagen with dataset.format=safetensors: rank r writes shards part_range(N, size, r)."""

    def planned_bytes(self, config: Config, size: int) -> int:
        """The shard files and the index."""
        model = model_of(config)
        return model.file_bytes + len(json.dumps(model.index(index_extra(config)), indent=1)) + PAGE

    def buffer_bytes(self, config: Config) -> tuple[int, str, str]:
        """One staging buffer of modelload.buffer_size."""
        return (buffer_footprint(config.modelload.buffer_size, config.huge_pages), "modelload.buffer_size",
                "lower modelload.buffer_size")

    def check(self, config: Config, size: int, alignment: int) -> None:
        """The folder name, and no s3dlio direct:// (it stores a multi-write file as parts)."""
        check_dataset_name(config.dataset.name)
        model_of(config)
        if config.storage.type == "direct_fs" and config.storage.library == "s3dlio":
            raise ConfigError("datagen of a safetensors model cannot go through s3dlio's direct://: it stores a "
                              "file written in several writes as a folder of parts, not a safetensors file",
                              "write the model with storage.library=native; load it with s3dlio afterwards")
        if config.modelload.buffer_size % max(alignment, 1):
            raise ConfigError(f"modelload.buffer_size={config.modelload.buffer_size} is not a multiple of the "
                              f"direct-I/O alignment {alignment}", f"use a multiple of {alignment}")

    def prepare(self, config: Config, backend: Backend, info: PreflightInfo) -> None:
        """Refuse a folder that holds a model (or any file of this one); create it."""
        ds = config.dataset
        model = model_of(config)
        taken = backend.not_a_dir(ds.name)
        if taken is not None:
            raise PreflightError(f"model folder {backend.path_of(ds.name)} cannot be created: {taken} exists "
                                 "and is not a directory", "choose another dataset.name")
        for name in [INDEX_NAME, *(s.name for s in model.shards)]:
            if key_exists(backend, f"{ds.name}/{name}"):
                raise PreflightError(f"model folder {backend.path_of(ds.name)} already holds {name}",
                                     "choose another dataset.name, or remove the folder first: datagen never "
                                     "overwrites a model")
        backend.makedirs(ds.name)
        info.checks.append(f"model folder {backend.path_of(ds.name)} holds no model; created it")

    def describe_plan(self, config: Config, size: int, rank: int) -> dict[str, Any]:
        """The shards rank `rank` writes."""
        model = model_of(config)
        if rank < 0:
            return {"totals": {"model": config.modelload.model, "scale": config.modelload.scale,
                               "shards": len(model.shards), "tensors": model.num_tensors,
                               "file_bytes": model.file_bytes, "tensor_bytes": model.tensor_bytes,
                               "folder": config.dataset.name}}
        first, count = part_range(len(model.shards), size, rank)
        mine = model.shards[first:first + count]
        return {"rank": rank, "shards": [s.name for s in mine], "bytes": sum(s.file_bytes for s in mine)}

    def run(self, ctx: RunContext) -> None:
        """One measured phase of shard writes, then rank 0 writes the index (the model is complete)."""
        config = ctx.config
        model = model_of(config)
        first, count = part_range(len(model.shards), ctx.comm.size, ctx.comm.rank)
        mine = model.shards[first:first + count]
        buf = ctx.setup(lambda: aligned_buffer(config.modelload.buffer_size))
        ctx.phase("datagen", 0, lambda rec: self._write(ctx, rec, mine, buf), expected_bytes=model.file_bytes,
                  format="safetensors", dataset=ctx.backend.path_of(config.dataset.name), fsync=True, cache=None)
        broadcast_outcome(ctx.comm, lambda: self._write_index(ctx, model))

    def _write(self, ctx: RunContext, rec: PhaseRecorder, shards: tuple[ShardFile, ...], buf: mmap.mmap) -> None:
        backend = ctx.backend
        alignment = max(backend.alignment, 1)
        chunk = round_down(len(buf), alignment) if alignment > 1 else len(buf)
        log = rec.new_log()
        view = memoryview(buf)
        for shard in shards:
            key = f"{ctx.config.dataset.name}/{shard.name}"
            t = time.perf_counter()
            handle = backend.open(key, "w")
            rec.open_s += time.perf_counter() - t
            rec.files += 1
            prefix = shard.prefix()
            try:
                for number, position in enumerate(range(0, shard.file_bytes, chunk)):
                    n = min(chunk, shard.file_bytes - position)
                    fill_random(view[:n], file_seed(ctx.config.dataset.seed, shard.index, number))
                    if position < len(prefix):  # the header, where this chunk overlaps it
                        part = prefix[position:position + n]
                        view[:len(part)] = part
                    padded = round_up(n, alignment) if alignment > 1 else n
                    t0 = time.perf_counter_ns()
                    written = backend.write_at(handle, view[:padded], position)
                    t1 = time.perf_counter_ns()
                    if written < padded:
                        raise BenchIOError(f"write {backend.path_of(key)}: {written} of {padded} bytes written",
                                           "is the filesystem full?", path=backend.path_of(key))
                    log.record(n, t0, t1)
                    rec.transfer_s += (t1 - t0) / 1e9
                    ctx.check_stop()
                if alignment > 1 and shard.file_bytes % alignment:
                    backend.truncate(handle, shard.file_bytes)  # O_DIRECT wrote whole blocks: cut the padding
                timed_fsync(backend, handle, rec)
            finally:
                timed_close(backend, handle, rec)
        rec.extra["shards"] = len(shards)

    def _write_index(self, ctx: RunContext, model: ModelFiles) -> None:
        backend = ctx.backend
        buf, size, padded = encode_manifest(model.index(index_extra(ctx.config)), backend.alignment)
        handle = backend.open(f"{ctx.config.dataset.name}/{INDEX_NAME}", "w")
        try:
            backend.write_at(handle, memoryview(buf)[:padded], 0)
            if padded != size:
                backend.truncate(handle, size)
            backend.fsync(handle)
        finally:
            backend.close(handle)

    def summarize(self, ctx: RunContext) -> dict[str, Any]:
        """The datagen record of a model."""
        config = ctx.config
        model = model_of(config)
        out: dict[str, Any] = {"dataset": ctx.backend.path_of(config.dataset.name), "format": "safetensors",
                               "model": config.modelload.model, "scale": config.modelload.scale,
                               "shard_size": config.modelload.shard_size, "num_files": len(model.shards),
                               "tensors": model.num_tensors, "tensor_bytes": model.tensor_bytes,
                               "manifest": ctx.backend.path_of(f"{config.dataset.name}/{INDEX_NAME}")}
        phase = next((p for p in ctx.phases if p["name"] == "datagen"), None)
        if phase is not None:
            out.update(files=sum(r["files"] for r in phase["ranks"]), bytes=phase["bytes"],
                       seconds=phase["seconds"], bandwidth_MiBps=phase["bandwidth_MiBps"],
                       bandwidth_GBps=phase["bandwidth_GBps"])
        return {"datagen": out}

    def report_lines(self, document: dict[str, Any]) -> list[str]:
        """One line: what was written and how fast."""
        d = document.get("datagen") or {}
        if "bytes" not in d:
            return []
        return ["", f"datagen: {d['model']} (scale {d['scale']:g}) as {d['files']} safetensors shard(s) and "
                    f"{INDEX_NAME}, {format_size(d['bytes'])} ({d['bytes']} bytes) into {d['dataset']} at "
                    f"{d['bandwidth_MiBps']:.1f} MiB/s ({d['bandwidth_GBps']:.3f} GB/s)"]


MODEL_WRITER = ModelWriter()

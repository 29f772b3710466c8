"""A Hugging Face safetensors model on storage and who loads what of it (pure: no MPI, no I/O).

The model is a llama3 preset of mpibench.presets written the way `transformers` saves it:
tensors named as in `LlamaForCausalLM` (bf16), split over
``model-0000k-of-0000N.safetensors`` shards of at most `shard_bytes` each (the
state-dict order, a new shard when the next tensor would not fit, as huggingface_hub's
``split_torch_state_dict_into_shards`` does), and ``model.safetensors.index.json``
mapping every tensor to its shard. Inside a shard the tensors are sorted by name and
packed back to back after the header (an 8-byte little-endian length, then JSON padded
with spaces to a multiple of 8), as the `safetensors` library serialises them.

`scale` shrinks the first dimension of every matrix (to a multiple of SCALE_QUANTUM rows)
so a laptop can hold the model; names, layer count and the other dimension stay.

Who loads what: rank r has the coordinates (tp, pp, dp) of presets.coordinates. A
pipeline stage loads its layers (the first also the embedding, the last the final norm
and the output head); a tensor-parallel rank loads its slice of every sharded tensor as
Megatron cuts them: column-parallel weights (q, k, v, gate, up, embedding, lm_head) by
rows, which is one contiguous extent, and row-parallel weights (o, down) by columns,
which is one piece of every row (a strided extent). Norms are loaded whole by every rank.
"""

from __future__ import annotations

import functools
import json
import math
import struct
from dataclasses import dataclass

import numpy as np

from mpibench.errors import ConfigError
from mpibench.plan import part_range, round_down, round_up
from mpibench.presets import PRESETS, ModelPreset, coordinates

DTYPE = "BF16"
DTYPE_BYTES = 2
HF_SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size "5GB"
INDEX_NAME = "model.safetensors.index.json"
SCALE_QUANTUM = 8  # scaled row counts are multiples of this: every TP size of the presets divides them
HEADER_ALIGN = 8  # safetensors pads its JSON header with spaces to a multiple of 8 bytes
LAYOUTS = ("replicated", "tensor_parallel", "pipeline_parallel", "tensor_pipeline")
PAGE = 4096

# Split kinds: how tensor parallelism cuts a tensor.
ROWS = "rows"
COLS = "cols"
WHOLE = "whole"


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the model: its name, shape, how TP cuts it and which stage holds it."""

    name: str
    shape: tuple[int, ...]
    split: str  # ROWS, COLS or WHOLE
    layer: int  # decoder layer; -1 the embedding, LAYER_HEAD the final norm and lm_head

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's data."""
        return math.prod(self.shape) * DTYPE_BYTES


LAYER_HEAD = 1 << 30  # sorts after every decoder layer


@dataclass(frozen=True)
class PlacedTensor:
    """A tensor inside a shard file: data_offsets relative to the data after the header."""

    spec: TensorSpec
    begin: int
    end: int


@dataclass(frozen=True)
class ShardFile:
    """One model-0000k-of-0000N.safetensors file."""

    index: int  # 0-based
    name: str
    tensors: tuple[PlacedTensor, ...]  # in file order (sorted by name)
    header: bytes  # the JSON header, padded

    @property
    def data_start(self) -> int:
        """File offset of the first tensor byte (8-byte length + header)."""
        return 8 + len(self.header)

    @property
    def data_bytes(self) -> int:
        """Bytes of tensor data in the file."""
        return self.tensors[-1].end if self.tensors else 0

    @property
    def file_bytes(self) -> int:
        """Size of the file."""
        return self.data_start + self.data_bytes

    def prefix(self) -> bytes:
        """The file's first bytes: the little-endian header length and the header."""
        return struct.pack("<Q", len(self.header)) + self.header


@dataclass(frozen=True)
class ModelFiles:
    """The whole model on storage."""

    preset: str
    scale: float
    shard_bytes: int
    layers: int
    shards: tuple[ShardFile, ...]

    @property
    def tensor_bytes(self) -> int:
        """Bytes of all tensors (the index's metadata.total_size)."""
        return sum(s.data_bytes for s in self.shards)

    @property
    def file_bytes(self) -> int:
        """Bytes of all shard files (tensors and headers)."""
        return sum(s.file_bytes for s in self.shards)

    @property
    def num_tensors(self) -> int:
        """Tensors in the model."""
        return sum(len(s.tensors) for s in self.shards)

    def index(self, extra: dict[str, object] | None = None) -> dict[str, object]:
        """The model.safetensors.index.json document."""
        weight_map = {t.spec.name: s.name for s in self.shards for t in s.tensors}
        metadata: dict[str, object] = {"total_size": self.tensor_bytes, **(extra or {})}
        return {"metadata": metadata, "weight_map": dict(sorted(weight_map.items()))}


def preset_of(name: str) -> ModelPreset:
    """The llama3 preset called `name`, or a ConfigError listing them."""
    preset = PRESETS.get(name)
    if preset is None:
        raise ConfigError(f"unknown modelload.model {name!r}", f"choose one of {', '.join(PRESETS)}")
    return preset


def scaled_rows(rows: int, scale: float) -> int:
    """A row count times `scale`, a multiple of SCALE_QUANTUM, at least SCALE_QUANTUM."""
    if scale >= 1.0:
        return rows
    return max(SCALE_QUANTUM, round(rows * scale / SCALE_QUANTUM) * SCALE_QUANTUM)


def model_tensors(p: ModelPreset, scale: float = 1.0) -> list[TensorSpec]:
    """Every tensor of a llama3 preset in transformers' state-dict order."""
    h, kv, ffn, vocab = p.hidden, p.kv_dim, p.ffn, p.vocab

    def m(name: str, rows: int, cols: int, split: str, layer: int) -> TensorSpec:
        return TensorSpec(name, (scaled_rows(rows, scale), cols), split, layer)

    out = [m("model.embed_tokens.weight", vocab, h, ROWS, -1)]
    for i in range(p.layers):
        pre = f"model.layers.{i}."
        out += [
            m(pre + "self_attn.q_proj.weight", h, h, ROWS, i),
            m(pre + "self_attn.k_proj.weight", kv, h, ROWS, i),
            m(pre + "self_attn.v_proj.weight", kv, h, ROWS, i),
            m(pre + "self_attn.o_proj.weight", h, h, COLS, i),
            m(pre + "mlp.gate_proj.weight", ffn, h, ROWS, i),
            m(pre + "mlp.up_proj.weight", ffn, h, ROWS, i),
            m(pre + "mlp.down_proj.weight", h, ffn, COLS, i),
            TensorSpec(pre + "input_layernorm.weight", (h,), WHOLE, i),
            TensorSpec(pre + "post_attention_layernorm.weight", (h,), WHOLE, i),
        ]
    out.append(TensorSpec("model.norm.weight", (h,), WHOLE, LAYER_HEAD))
    out.append(m("lm_head.weight", vocab, h, ROWS, LAYER_HEAD))
    return out


def shard_name(index: int, count: int) -> str:
    """transformers' shard file name (index 0-based)."""
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def split_into_shards(tensors: list[TensorSpec], shard_bytes: int) -> list[list[TensorSpec]]:
    """huggingface_hub's rule: in order, a new shard when the next tensor would pass the
    limit; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[TensorSpec]] = []
    current: list[TensorSpec] = []
    size = 0
    for t in tensors:
        if t.nbytes > shard_bytes:
            shards.append([t])
            continue
        if current and size + t.nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(t)
        size += t.nbytes
    if current:
        shards.append(current)
    return shards


def encode_header(placed: list[PlacedTensor]) -> bytes:
    """The shard's JSON header as safetensors writes it, padded with spaces to 8 bytes."""
    doc: dict[str, object] = {"__metadata__": {"format": "pt"}}
    for t in placed:
        doc[t.spec.name] = {"dtype": DTYPE, "shape": list(t.spec.shape), "data_offsets": [t.begin, t.end]}
    text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    return text + b" " * (-len(text) % HEADER_ALIGN)


@functools.lru_cache(maxsize=16)
def model_files(preset: str, scale: float, shard_bytes: int) -> ModelFiles:
    """The shard files of a preset at a scale and a shard size limit."""
    p = preset_of(preset)
    groups = split_into_shards(model_tensors(p, scale), shard_bytes)
    shards = []
    for index, group in enumerate(groups):
        placed = []
        offset = 0
        for spec in sorted(group, key=lambda t: t.name):  # safetensors orders a file by name
            placed.append(PlacedTensor(spec, offset, offset + spec.nbytes))
            offset += spec.nbytes
        shards.append(ShardFile(index, shard_name(index, len(groups)), tuple(placed), encode_header(placed)))
    return ModelFiles(preset, scale, shard_bytes, p.layers, tuple(shards))


def parse_header(prefix: bytes) -> tuple[int, dict[str, object]]:
    """(header length, header JSON) from a file's first 8 + length bytes; ValueError if bad."""
    if len(prefix) < 8:
        raise ValueError("shorter than the 8-byte header length")
    (length,) = struct.unpack("<Q", prefix[:8])
    if len(prefix) < 8 + length:
        raise ValueError(f"header of {length} bytes, only {len(prefix) - 8} read")
    doc = json.loads(prefix[8:8 + length].decode("utf-8"))
    if not isinstance(doc, dict):
        raise ValueError("header is not a JSON object")
    return length, doc


# -- who loads what ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Parallelism:
    """The load's layout resolved to TP x PP sizes."""

    layout: str
    tp: int
    pp: int


def resolve_parallelism(layout: str, tp: int | str, pp: int | str, preset: ModelPreset,
                        world_size: int) -> Parallelism:
    """TP and PP of a layout: `auto` is the preset's size where it has one above 1, else
    the world size (tensor_parallel: TP; pipeline_parallel: PP); replicated is 1 x 1."""
    def pick(value: int | str, preset_value: int) -> int:
        if value != "auto":
            return int(value)
        return preset_value if preset_value > 1 else world_size

    if layout == "replicated":
        t, p = 1, 1
    elif layout == "tensor_parallel":
        t, p = pick(tp, preset.tp), 1
    elif layout == "pipeline_parallel":
        t, p = 1, pick(pp, preset.pp)
    elif layout == "tensor_pipeline":
        t = preset.tp if tp == "auto" else int(tp)
        p = preset.pp if pp == "auto" else int(pp)
    else:
        raise ConfigError(f"unknown modelload.layout {layout!r}", f"choose one of {', '.join(LAYOUTS)}")
    if p > preset.layers:
        raise ConfigError(f"modelload pp={p} is more pipeline stages than {preset.name}'s {preset.layers} layers",
                          f"use at most {preset.layers}")
    if world_size % (t * p):
        raise ConfigError(
            f"modelload.layout={layout} with TP{t} x PP{p} needs a multiple of {t * p} ranks, this job has {world_size}",
            f"run a multiple of {t * p} ranks, or set modelload.tp / modelload.pp")
    return Parallelism(layout, t, p)


@dataclass(frozen=True)
class Extent:
    """Bytes of one tensor a rank loads: `count` pieces of `length` bytes, `stride` apart."""

    file: str
    tensor: str
    offset: int  # in the file
    length: int
    stride: int
    count: int

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data in the extent."""
        return self.length * self.count

    @property
    def end(self) -> int:
        """File offset just past the last piece."""
        return self.offset + self.stride * (self.count - 1) + self.length

    def starts(self) -> np.ndarray:
        """File offset of every piece."""
        return self.offset + np.arange(self.count, dtype=np.int64) * self.stride


def stage_of_layer(layer: int, layers: int, pp: int) -> list[int]:
    """The pipeline stages that hold a tensor of `layer` (-1: embedding, LAYER_HEAD: head)."""
    if layer < 0:
        return [0]
    if layer == LAYER_HEAD:
        return [pp - 1]
    for stage in range(pp):
        first, count = part_range(layers, pp, stage)
        if first <= layer < first + count:
            return [stage]
    raise AssertionError("unreachable")


def tensor_extent(shard: ShardFile, placed: PlacedTensor, tp: int, tp_rank: int) -> Extent | None:
    """The part of one tensor TP rank `tp_rank` of `tp` loads (None: an empty slice)."""
    spec = placed.spec
    start = shard.data_start + placed.begin
    if tp == 1 or spec.split == WHOLE:
        return Extent(shard.name, spec.name, start, spec.nbytes, spec.nbytes, 1)
    rows, cols = spec.shape
    if spec.split == ROWS:
        first, count = part_range(rows, tp, tp_rank)
        row_bytes = cols * DTYPE_BYTES
        if not count:
            return None
        return Extent(shard.name, spec.name, start + first * row_bytes, count * row_bytes, count * row_bytes, 1)
    first, count = part_range(cols, tp, tp_rank)
    if not count:
        return None
    return Extent(shard.name, spec.name, start + first * DTYPE_BYTES, count * DTYPE_BYTES, cols * DTYPE_BYTES, rows)


def rank_extents(model: ModelFiles, par: Parallelism, rank: int) -> list[Extent]:
    """Everything rank `rank` loads, shard by shard in file order."""
    tp_rank, stage, _dp = coordinates(rank, par.tp, par.pp)
    out = []
    for shard in model.shards:
        for placed in shard.tensors:
            if stage not in stage_of_layer(placed.spec.layer, model.layers, par.pp):
                continue
            extent = tensor_extent(shard, placed, par.tp, tp_rank)
            if extent is not None:
                out.append(extent)
    return out


def shards_of(extents: list[Extent]) -> list[str]:
    """The shard files the extents touch, in order."""
    return list(dict.fromkeys(e.file for e in extents))


def aligned_runs(extents: list[Extent], alignment: int) -> list[tuple[int, int]]:
    """The extents' pieces rounded out to `alignment` and merged where they overlap or
    touch: (offset, length) runs in file order (the extents are of one file)."""
    if not extents:
        return []
    starts = np.concatenate([e.starts() for e in extents])
    ends = np.concatenate([e.starts() + e.length for e in extents])
    a = np.int64(alignment)
    starts = (starts // a) * a
    ends = -(-ends // a) * a
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    running = np.maximum.accumulate(ends)
    new = np.ones(len(starts), dtype=bool)
    new[1:] = starts[1:] > running[:-1]
    heads = np.flatnonzero(new)
    run_ends = np.maximum.reduceat(ends, heads)
    return [(int(s), int(e - s)) for s, e in zip(starts[heads], run_ends, strict=True)]


def covering_runs(extents: list[Extent]) -> list[tuple[int, int]]:
    """One (offset, length) range per extent from its first to its last byte (one ranged
    GET per tensor slice, gaps of a strided slice included)."""
    return [(e.offset, e.end - e.offset) for e in extents]


def union_bytes(extents: list[Extent], unit: int = 1) -> int:
    """Bytes of the union of the extents (of one file) counted in units of `unit`."""
    return sum(length for _off, length in aligned_runs(extents, unit))


def extents_summary(extents: list[Extent], limit: int | None = None) -> list[dict[str, object]]:
    """Extents as plain data for `mpibench plan` (the first `limit` of them)."""
    chosen = extents if limit is None else extents[:limit]
    return [{"file": e.file, "tensor": e.tensor, "offset": e.offset, "length": e.length,
             "stride": e.stride, "count": e.count, "bytes": e.nbytes} for e in chosen]


__all__ = ["LAYOUTS", "INDEX_NAME", "HF_SHARD_BYTES", "ModelFiles", "ShardFile", "Extent", "Parallelism",
           "model_files", "rank_extents", "resolve_parallelism", "aligned_runs", "covering_runs",
           "union_bytes", "parse_header", "round_up", "round_down"]

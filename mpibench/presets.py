"""LLM checkpoint presets and shard maths (pure: no MPI, no I/O).

A checkpoint is the model (fp16 weights, 2 bytes per parameter) and the optimizer state
(fp32 master weights plus Adam's m and v, 12 bytes per parameter), sharded over the ranks
of a training job laid out as tensor (TP) x pipeline (PP) x data (DP) parallel. Rank r has
the coordinates tp = r % TP, pp = (r // TP) % PP, dp = r // (TP * PP) (Megatron's order).

- ZeRO-3 spreads model and optimizer over every rank (each TP slice partitioned over DP).
- ZeRO-1 (and 2) spreads the optimizer over every rank, while only the first data-parallel
  replica (dp = 0) writes model shards: one per (tp, pp).
- ZeRO-0 (none): only dp = 0 writes, model and optimizer.

Pipeline stages hold different amounts: stage 0 also has the embedding, the last stage the
output head; shards of ZeRO-1 presets are weighted by their stage's parameter count. The
totals written are the MLPerf Storage v2 figures exactly (in GiB, so whole 4 KiB units),
apportioned to shards in whole units (largest remainder), so the plan reproduces them.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass

from mpibench.errors import ConfigError
from mpibench.plan import part_range, round_up
from mpibench.units import GiB

#: shard sizes are whole multiples of this (or of the direct-I/O alignment if larger)
SHARD_UNIT = 4096
MODEL_BYTES_PER_PARAM = 2  # fp16 weights
OPTIMIZER_BYTES_PER_PARAM = 12  # fp32 master weights + Adam m + Adam v


@dataclass(frozen=True)
class ModelPreset:
    """One model of the MLPerf Storage v2 checkpoint table."""

    name: str
    layers: int
    hidden: int
    ffn: int
    kv_dim: int  # kv heads x head dim (GQA); equal to hidden for plain multi-head attention
    tp: int
    pp: int
    dp: int
    zero_stage: int
    model_gib: int  # the table's model size
    optimizer_gib: int  # the table's optimizer size
    vocab: int = 128256

    @property
    def ranks(self) -> int:
        """Ranks of the training job the preset models."""
        return self.tp * self.pp * self.dp

    @property
    def model_bytes(self) -> int:
        """Bytes of the model part of one checkpoint (the table's value)."""
        return self.model_gib * GiB

    @property
    def optimizer_bytes(self) -> int:
        """Bytes of the optimizer part of one checkpoint (the table's value)."""
        return self.optimizer_gib * GiB


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset("llama3-8b", 32, 4096, 14336, 8 * 128, 1, 1, 8, 3, 15, 90),
        ModelPreset("llama3-70b", 80, 8192, 28672, 8 * 128, 8, 1, 8, 3, 130, 781),
        ModelPreset("llama3-405b", 126, 16384, 53248, 8 * 128, 8, 32, 2, 1, 755, 4533),
        # DLIO's llama_1t has 32 kv heads = 32 attention heads: plain multi-head attention.
        ModelPreset("llama3-1t", 128, 25872, 98304, 25872, 8, 64, 2, 1, 2571, 15426),
    )
}


def layer_params(hidden: int, ffn: int, kv_dim: int) -> int:
    """Parameters of one Llama decoder layer: attention (q, k, v, o), SwiGLU MLP, 2 norms."""
    attention = 2 * hidden * hidden + 2 * hidden * kv_dim
    mlp = 3 * hidden * ffn
    return attention + mlp + 2 * hidden


def llama_params(p: ModelPreset) -> int:
    """Parameters of the whole model: untied embedding and output head, layers, final norm."""
    return 2 * p.vocab * p.hidden + p.layers * layer_params(p.hidden, p.ffn, p.kv_dim) + p.hidden


def stage_params(p: ModelPreset) -> list[int]:
    """Parameters held by each pipeline stage (layers split as evenly as possible)."""
    per_layer = layer_params(p.hidden, p.ffn, p.kv_dim)
    stages = []
    for stage in range(p.pp):
        _, count = part_range(p.layers, p.pp, stage)
        params = count * per_layer
        if stage == 0:
            params += p.vocab * p.hidden  # embedding
        if stage == p.pp - 1:
            params += p.vocab * p.hidden + p.hidden  # output head, final norm
        stages.append(params)
    return stages


@dataclass(frozen=True)
class CheckpointModel:
    """What a checkpoint run writes: totals and the parallel layout of the emulated job."""

    name: str
    model_bytes: int
    optimizer_bytes: int
    tp: int
    pp: int
    dp: int
    zero_stage: int
    stage_weights: tuple[int, ...]  # relative size of each pipeline stage
    preset_ranks: int  # the rank count the model is defined for

    @property
    def ranks(self) -> int:
        """Emulated ranks (TP x PP x DP)."""
        return self.tp * self.pp * self.dp


@dataclass(frozen=True)
class Shard:
    """One file of one emulated rank in one checkpoint."""

    kind: str  # "model" or "optim"
    rank: int  # emulated rank that owns it
    tp: int
    pp: int
    dp: int
    nbytes: int

    @property
    def name(self) -> str:
        """File name inside checkpoint_<n>/."""
        return f"{self.kind}_tp{self.tp}_pp{self.pp}_dp{self.dp}.bin"

    @property
    def shard_id(self) -> int:
        """A small integer unique within a checkpoint (seeds the shard's content)."""
        return self.rank * 2 + (0 if self.kind == "model" else 1)


def resolve_model(ck: object, world_size: int | None = None) -> CheckpointModel:
    """The checkpoint model of a CheckpointConfig: a preset, or 'custom' sizes and layout.

    `checkpoint.ranks` sets the emulated rank count: for a preset it must be a multiple of
    TP x PP (DP = ranks / (TP x PP)); by default the preset's own rank count.
    """
    name = ck.model  # type: ignore[attr-defined]
    ranks = ck.ranks  # type: ignore[attr-defined]
    if name == "custom":
        if ck.model_bytes is None or ck.optimizer_bytes is None:  # type: ignore[attr-defined]
            raise ConfigError("checkpoint.model=custom needs checkpoint.model_bytes and checkpoint.optimizer_bytes",
                              "e.g. checkpoint.model_bytes=16GiB checkpoint.optimizer_bytes=96GiB")
        tp, pp, zero = ck.tp, ck.pp, ck.zero_stage  # type: ignore[attr-defined]
        emulated = ranks or world_size or tp * pp
        if emulated % (tp * pp):
            raise ConfigError(f"checkpoint.ranks={emulated} is not a multiple of tp x pp = {tp * pp}",
                              f"use a multiple of {tp * pp}")
        return CheckpointModel("custom", ck.model_bytes, ck.optimizer_bytes, tp, pp,  # type: ignore[attr-defined]
                               emulated // (tp * pp), zero, tuple([1] * pp), emulated)
    preset = PRESETS.get(name)
    if preset is None:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown checkpoint.model {name!r}",
                          f"{hint}choose one of {', '.join(PRESETS)}, or custom")
    emulated = ranks or preset.ranks
    group = preset.tp * preset.pp
    if emulated % group:
        raise ConfigError(
            f"checkpoint.ranks={emulated} does not fit {name}'s layout TP{preset.tp} x PP{preset.pp}",
            f"use a multiple of {group}, e.g. the preset's {preset.ranks}",
        )
    return CheckpointModel(name, preset.model_bytes, preset.optimizer_bytes, preset.tp, preset.pp,
                           emulated // group, preset.zero_stage, tuple(stage_params(preset)), preset.ranks)


def coordinates(rank: int, tp: int, pp: int) -> tuple[int, int, int]:
    """(tp, pp, dp) coordinates of a rank, tensor-parallel fastest (Megatron's order)."""
    return rank % tp, (rank // tp) % pp, rank // (tp * pp)


def apportion(total_units: int, weights: list[int]) -> list[int]:
    """Split `total_units` in proportion to `weights` exactly (largest remainder method)."""
    weight_sum = sum(weights)
    if weight_sum <= 0:
        raise ValueError("weights must not all be zero")
    shares = [total_units * w // weight_sum for w in weights]
    left = total_units - sum(shares)
    # Remainders compared exactly as integers; ties go to the lower index.
    order = sorted(range(len(weights)), key=lambda i: (-(total_units * weights[i] % weight_sum), i))
    for i in order[:left]:
        shares[i] += 1
    return shares


@functools.lru_cache(maxsize=16)
def all_shards(model: CheckpointModel, unit: int = SHARD_UNIT) -> tuple[Shard, ...]:
    """Every shard of one full-size checkpoint, ordered by emulated rank (model first)."""
    if model.model_bytes % unit or model.optimizer_bytes % unit:
        raise ConfigError(f"checkpoint sizes must be multiples of {unit} bytes",
                          f"round checkpoint.model_bytes and optimizer_bytes to {unit}")
    ranks = model.ranks
    coords = [coordinates(r, model.tp, model.pp) for r in range(ranks)]
    stage_w = model.stage_weights
    # Which ranks write a model / optimizer shard, and how much each holds.
    if model.zero_stage >= 3:
        model_writers = list(range(ranks))
        model_weights = [stage_w[c[1]] for c in coords]
    else:
        model_writers = [r for r in range(ranks) if coords[r][2] == 0]
        model_weights = [stage_w[coords[r][1]] for r in model_writers]
    if model.zero_stage >= 1:
        optim_writers = list(range(ranks))
        optim_weights = [stage_w[c[1]] for c in coords]
    else:
        optim_writers = list(model_writers)
        optim_weights = list(model_weights)
    model_units = apportion(model.model_bytes // unit, model_weights)
    optim_units = apportion(model.optimizer_bytes // unit, optim_weights)
    model_of = dict(zip(model_writers, model_units, strict=True))
    optim_of = dict(zip(optim_writers, optim_units, strict=True))
    shards = []
    for r in range(ranks):
        tp, pp, dp = coords[r]
        if r in model_of:
            shards.append(Shard("model", r, tp, pp, dp, model_of[r] * unit))
        if r in optim_of:
            shards.append(Shard("optim", r, tp, pp, dp, optim_of[r] * unit))
    return tuple(shards)


def scaled_bytes(nbytes: int, scale: float, unit: int) -> int:
    """A shard's size times `scale`, in whole units, at least one unit."""
    if scale >= 1.0:
        return nbytes
    return max(unit, round(nbytes * scale / unit) * unit)


def shard_unit(alignment: int) -> int:
    """The unit of shard sizes: 4 KiB, or the direct-I/O alignment where it is larger."""
    return round_up(alignment, SHARD_UNIT) if alignment > SHARD_UNIT else SHARD_UNIT


def rank_shards(model: CheckpointModel, scale: float, world_size: int, rank: int,
                unit: int = SHARD_UNIT) -> list[Shard]:
    """The shards actual rank `rank` writes: those of emulated ranks rank, rank + size, ..."""
    return [Shard(s.kind, s.rank, s.tp, s.pp, s.dp, scaled_bytes(s.nbytes, scale, unit))
            for s in all_shards(model, unit) if s.rank % world_size == rank]


def checkpoint_bytes(model: CheckpointModel, scale: float, unit: int = SHARD_UNIT) -> int:
    """Bytes of one checkpoint after scaling (the sum of every shard)."""
    return sum(scaled_bytes(s.nbytes, scale, unit) for s in all_shards(model, unit))


def check_world_size(model: CheckpointModel, explicit_ranks: int | None, world_size: int) -> None:
    """The job's rank count must match the emulated one, unless checkpoint.ranks maps it."""
    if explicit_ranks is None and world_size != model.ranks:
        raise ConfigError(
            f"{model.name} is a checkpoint of {model.ranks} ranks (TP{model.tp} x PP{model.pp} x DP{model.dp}), "
            f"this job has {world_size}",
            f"run {model.ranks} ranks, or set checkpoint.ranks={model.ranks} to emulate them on {world_size} "
            f"(rank r writes the shards of ranks r, r+{world_size}, ...)",
        )
    if world_size > model.ranks:
        raise ConfigError(
            f"this job has {world_size} ranks but the checkpoint has shards of only {model.ranks} emulated ranks",
            f"run at most {model.ranks} ranks, or raise checkpoint.ranks",
        )

"""The traffic of LLM inference offloading its KV cache, as a pure model (no I/O, no MPI).

What the kvcache workload moves, decided here: the bytes of one token's keys and values
for a model shape, users with seeded context and output lengths, multi-turn conversations
whose later turns read the earlier turns' KV back, an optional prefix shared by every
request, a memory tier with a byte budget and LRU eviction down to storage (a waterfall:
what no longer fits in memory is written to storage), and a storage capacity past which
the least recently used entries are deleted. Each request yields storage operations on
objects (one per KV block); the workload performs them.

The shapes and the user templates are those of the MLPerf Storage KV-cache reference
(``kv_cache_benchmark`` in mlcommons/storage): context 512-4096 tokens for chatbot users,
4096-25000 for coding, 4096-16384 for documents; each request takes a quarter to all of
its user's lengths; a conversation goes on with probability 0.8; a request with a context
of 10000 tokens or more is prefill only; decode reads the request's KV once and again
every `decode_batch` output tokens.
"""

from __future__ import annotations

import math
import random
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelShape:
    """The attention shape that sets the size of the KV cache."""

    name: str
    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int = 2  # float16

    @property
    def bytes_per_token(self) -> int:
        """Keys and values of one token over all layers: layers x KV heads x head dim x 2 x dtype."""
        return self.layers * self.kv_heads * self.head_dim * 2 * self.dtype_bytes


#: The reference's models (hidden / heads = head dim); "tiny" is its tiny-1b.
MODELS: dict[str, ModelShape] = {
    "tiny": ModelShape("tiny", 12, 4, 128),
    "mistral-7b": ModelShape("mistral-7b", 32, 8, 128),
    "llama2-7b": ModelShape("llama2-7b", 32, 32, 128),
    "llama3.1-8b": ModelShape("llama3.1-8b", 32, 8, 128),
    "llama3.1-70b-instruct": ModelShape("llama3.1-70b-instruct", 80, 8, 128),
}

#: (context tokens, output tokens) ranges of the reference's three user kinds.
TEMPLATES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "chatbot": ((512, 4096), (50, 200)),
    "coding": ((4096, 25000), (100, 500)),
    "document": ((4096, 16384), (200, 800)),
}

#: Seconds of emulated GPU work per output token (the reference's generation modes).
GENERATION_S = {"none": 0.0, "fast": 0.002, "realistic": 0.030}

CONTINUE_PROBABILITY = 0.8  # a user's next request goes on with its conversation
PREFILL_ONLY_TOKENS = 10000  # a request with at least this context is prefill only (no decode)

#: The three CLOSED options of MLPerf Storage v3.0 (per client: users, memory tier, I/Os in flight).
CLOSED_OPTIONS: dict[str, dict[str, Any]] = {
    "1": {"name": "Max Storage Stress", "model": "llama3.1-8b", "users": 200, "duration": 300,
          "memory_budget": 0, "concurrency": 16, "generation": "none"},
    "2": {"name": "Storage Throughput", "model": "llama3.1-8b", "users": 100, "duration": 300,
          "memory_budget": 4 * 2**30, "concurrency": 16, "generation": "none"},
    "3": {"name": "Large Model (70B)", "model": "llama3.1-70b-instruct", "users": 70, "duration": 300,
          "memory_budget": 0, "concurrency": 4, "generation": "none"},
}


@dataclass(frozen=True)
class Layout:
    """How an entry's KV is cut into objects: `grouping` entry (one object, as the
    reference's one .npy per entry), tokens (one per `block_tokens` tokens) or layer
    (one per layer); every object is rounded up to `unit` bytes (direct-I/O alignment)."""

    shape: ModelShape
    grouping: str = "tokens"
    block_tokens: int = 16
    unit: int = 1

    def object_sizes(self, tokens: int) -> list[int]:
        """The sizes of the objects holding an entry of `tokens` tokens."""
        bpt = self.shape.bytes_per_token
        if self.grouping == "entry":
            sizes = [tokens * bpt]
        elif self.grouping == "layer":
            sizes = [tokens * (bpt // self.shape.layers)] * self.shape.layers
        else:
            full, tail = divmod(tokens, self.block_tokens)
            sizes = [self.block_tokens * bpt] * full + ([tail * bpt] if tail else [])
        return [round_up(s, self.unit) for s in sizes]

    def largest_object(self, max_tokens: int) -> int:
        """The largest object an entry of at most `max_tokens` tokens has."""
        return max(self.object_sizes(max_tokens))


def round_up(value: int, unit: int) -> int:
    """`value` rounded up to a multiple of `unit`."""
    return -(-value // unit) * unit


@dataclass
class Entry:
    """The KV of one request's new tokens (or of the shared prefix), stored as objects."""

    entry_id: int
    tokens: int
    sizes: list[int]

    @property
    def nbytes(self) -> int:
        """Bytes of all its objects."""
        return sum(self.sizes)


@dataclass
class Request:
    """One inference request: what it reads before prefill, what it writes, how it decodes."""

    user: int
    turn: int
    context_tokens: int
    output_tokens: int
    history: list[Entry]  # earlier turns of the conversation, read back before prefill
    entry: Entry  # the new KV written at prefill
    decode_reads: int  # reads of `entry` during decode (0: prefill only)


@dataclass
class User:
    """A simulated user: a kind, its maximum lengths, its conversation so far."""

    index: int
    kind: str
    context_length: int
    output_length: int
    conversation: list[Entry] = field(default_factory=list)


class TrafficModel:
    """The seeded request stream of one rank's users (deterministic for a seed and rank).

    Requests are drawn per user (`next_request(user)`), so each user's sequence is the
    same whichever thread serves it and in whatever order users are served.
    """

    def __init__(self, seed: int, rank: int, users: int, layout: Layout, *, max_context: int = 0,
                 multi_turn: bool = True, max_turns: int = 8, decode_batch: int = 32,
                 step: int = 0) -> None:
        self.layout = layout
        self.max_context = max_context
        self.multi_turn = multi_turn
        self.max_turns = max_turns
        self.decode_batch = decode_batch
        self._lock = threading.Lock()
        self._next_id = 1  # 0 is the shared prefix
        setup = random.Random(f"kvcache/{seed}/{step}/{rank}/users")
        self.users = []
        kinds = sorted(TEMPLATES)
        for index in range(users):
            kind = setup.choice(kinds)
            (c_lo, c_hi), (o_lo, o_hi) = TEMPLATES[kind]
            context = setup.randint(c_lo, c_hi)
            if max_context:
                context = min(context, max_context)
            self.users.append(User(index, kind, context, setup.randint(o_lo, o_hi)))
        self._rngs = [random.Random(f"kvcache/{seed}/{step}/{rank}/user/{u}") for u in range(users)]

    def entry(self, tokens: int, entry_id: int | None = None) -> Entry:
        """A new entry of `tokens` tokens (ids unique within the rank and step)."""
        if entry_id is None:
            with self._lock:
                entry_id, self._next_id = self._next_id, self._next_id + 1
        return Entry(entry_id, tokens, self.layout.object_sizes(tokens))

    def next_request(self, user_index: int) -> Request:
        """The next request of one user (call from one thread per user at a time)."""
        user = self.users[user_index]
        rng = self._rngs[user_index]
        if user.conversation and (not self.multi_turn or rng.random() >= CONTINUE_PROBABILITY
                                  or len(user.conversation) >= self.max_turns):
            user.conversation = []
        context = rng.randint(max(1, user.context_length // 4), user.context_length)
        output = rng.randint(max(1, user.output_length // 4), user.output_length)
        entry = self.entry(context)
        history = list(user.conversation) if self.multi_turn else []
        decode = 0 if context >= PREFILL_ONLY_TOKENS else 1 + math.ceil(output / self.decode_batch)
        return Request(user_index, len(history) + 1, context, output, history, entry, decode)

    def remember(self, request: Request) -> None:
        """The request's KV is written: its conversation's next turn reads it back (a request
        left before its prefill never joins the conversation)."""
        if self.multi_turn:
            self.users[request.user].conversation.append(request.entry)


class Tiers:
    """Where each entry lives: the memory tier (LRU, `memory_budget` bytes) or storage
    (LRU, `storage_capacity` bytes, 0 = unbounded). Thread-safe.

    `place` puts a new entry in memory when it fits there (evicting the least recently
    used entries down to storage: their objects must be written) or else straight to
    storage; `touch` looks an entry up for a read; storage past its capacity drops its
    least recently used entries (their objects must be deleted). An entry being read or
    written is pinned and never evicted.
    """

    def __init__(self, memory_budget: int, storage_capacity: int = 0) -> None:
        self.memory_budget = memory_budget
        self.storage_capacity = storage_capacity
        self.memory: OrderedDict[int, Entry] = OrderedDict()
        self.storage: OrderedDict[int, Entry] = OrderedDict()
        self.memory_bytes = 0
        self.storage_bytes = 0
        self._pins: dict[int, int] = {}
        self._lock = threading.Lock()

    def place(self, entry: Entry) -> tuple[str, list[Entry], list[Entry]]:
        """Admit a new entry: (its tier, entries to write to storage, entries to delete).
        The entry and the ones to write are pinned (unpin them once written)."""
        with self._lock:
            self._pin(entry)
            demoted: list[Entry] = []
            if entry.nbytes <= self.memory_budget:
                while self.memory_bytes + entry.nbytes > self.memory_budget:
                    victim = self._victim(self.memory)
                    if victim is None:
                        break
                    self._drop(self.memory, victim)
                    self.memory_bytes -= victim.nbytes
                    self._pin(victim)  # until the caller has written it to storage
                    demoted.append(victim)
                if self.memory_bytes + entry.nbytes <= self.memory_budget:
                    self.memory[entry.entry_id] = entry
                    self.memory_bytes += entry.nbytes
                    deleted = self._to_storage(demoted)
                    return "memory", demoted, deleted
            deleted = self._to_storage([*demoted, entry])
            return "storage", demoted, deleted

    def touch(self, entry: Entry) -> str | None:
        """Where an entry is read from ('memory', 'storage', or None: evicted for good);
        a hit makes it the most recently used of its tier and pins it (unpin after)."""
        with self._lock:
            for name, tier in (("memory", self.memory), ("storage", self.storage)):
                if entry.entry_id in tier:
                    tier.move_to_end(entry.entry_id)
                    self._pin(entry)
                    return name
            return None

    def unpin(self, entries: list[Entry]) -> None:
        """Release entries pinned by place or touch."""
        with self._lock:
            for entry in entries:
                left = self._pins[entry.entry_id] - 1
                if left:
                    self._pins[entry.entry_id] = left
                else:
                    del self._pins[entry.entry_id]

    def stored(self) -> list[Entry]:
        """Every entry whose objects are on storage now."""
        with self._lock:
            return list(self.storage.values())

    def _pin(self, entry: Entry) -> None:
        self._pins[entry.entry_id] = self._pins.get(entry.entry_id, 0) + 1

    def _victim(self, tier: OrderedDict[int, Entry]) -> Entry | None:
        return next((e for e in tier.values() if e.entry_id not in self._pins), None)

    @staticmethod
    def _drop(tier: OrderedDict[int, Entry], entry: Entry) -> None:
        del tier[entry.entry_id]

    def _to_storage(self, entries: list[Entry]) -> list[Entry]:
        for entry in entries:
            self.storage[entry.entry_id] = entry
            self.storage_bytes += entry.nbytes
        deleted: list[Entry] = []
        if self.storage_capacity:
            while self.storage_bytes > self.storage_capacity:
                victim = self._victim(self.storage)
                if victim is None:
                    break
                self._drop(self.storage, victim)
                self.storage_bytes -= victim.nbytes
                deleted.append(victim)
        return deleted


def capacity(steps: list[dict[str, Any]], target_s: float) -> dict[str, Any]:
    """The largest user count whose pooled p95 read latency stays under `target_s`, going up
    the steps in order of users and stopping at the first one over it (as the reference's
    QoS autoscaler stops scaling up); a step with no read counts as over."""
    ordered = sorted(steps, key=lambda s: s["users"])
    best = None
    first_over = None
    for step in ordered:
        p95 = step.get("read_p95_s")
        if p95 is None or p95 > target_s:
            first_over = step["users"]
            break
        best = step["users"]
    return {"p95_target_s": target_s, "users": best, "first_over": first_over,
            "met": best is not None}

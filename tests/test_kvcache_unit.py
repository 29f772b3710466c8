"""The kvcache traffic model, its tiers, the capacity search and the configuration, and the
local_fs eviction kvcache relies on."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

import pytest

from mpibench.backends import backend_class
from mpibench.config import StorageConfig, build_config
from mpibench.errors import ConfigError
from mpibench.kvtraffic import (
    CLOSED_OPTIONS,
    MODELS,
    PREFILL_ONLY_TOKENS,
    Entry,
    Layout,
    Tiers,
    TrafficModel,
    capacity,
)
from mpibench.metrics import LatencyHistogram
from mpibench.workloads.kvcache import (
    merge_sparse,
    percentiles,
    storage_capacity,
    summarize_kvcache,
)


def test_bytes_per_token_from_the_shape():
    # layers x KV heads x head dim x 2 (K and V) x 2 bytes (float16)
    assert MODELS["llama3.1-8b"].bytes_per_token == 32 * 8 * 128 * 2 * 2 == 131072
    assert MODELS["llama3.1-70b-instruct"].bytes_per_token == 80 * 8 * 128 * 2 * 2
    assert MODELS["mistral-7b"].bytes_per_token == 131072
    assert MODELS["llama2-7b"].bytes_per_token == 32 * 32 * 128 * 4
    assert MODELS["tiny"].bytes_per_token == 12 * 4 * 128 * 4


def test_object_layouts():
    shape = MODELS["tiny"]
    bpt = shape.bytes_per_token
    assert Layout(shape, "tokens", 16).object_sizes(40) == [16 * bpt, 16 * bpt, 8 * bpt]
    assert Layout(shape, "entry").object_sizes(40) == [40 * bpt]
    assert Layout(shape, "layer").object_sizes(40) == [40 * bpt // 12] * 12
    # rounded up to the direct-I/O alignment
    assert Layout(shape, "layer", unit=4096).object_sizes(3) == [8192] * 12
    assert sum(Layout(shape, "tokens", 16, 4096).object_sizes(33)) == 33 * bpt  # 24 KiB per token is aligned


def requests(model: TrafficModel, user: int, count: int):
    """`count` requests of one user, each written (remembered) before the next."""
    out = []
    for _ in range(count):
        out.append(model.next_request(user))
        model.remember(out[-1])
    return out


def test_traffic_is_seeded_per_rank_and_user():
    layout = Layout(MODELS["tiny"])
    a = TrafficModel(42, 0, 5, layout)
    b = TrafficModel(42, 0, 5, layout)
    # user 3 draws the same requests whichever order the users are served in
    requests(b, 1, 3)
    sa = [(r.context_tokens, r.output_tokens, r.turn) for r in requests(a, 3, 20)]
    sb = [(r.context_tokens, r.output_tokens, r.turn) for r in requests(b, 3, 20)]
    assert sa == sb
    other = TrafficModel(42, 1, 5, layout)
    assert [(u.context_length, u.output_length) for u in other.users] != [
        (u.context_length, u.output_length) for u in a.users]


def test_requests_follow_the_templates_and_conversations():
    model = TrafficModel(7, 0, 30, Layout(MODELS["llama3.1-8b"]), max_turns=4)
    for user in model.users:
        assert 512 <= user.context_length <= 25000 and 50 <= user.output_length <= 800
    seen_turns = set()
    for user in range(30):
        previous: list[Entry] = []
        for request in requests(model, user, 12):
            u = model.users[user]
            assert u.context_length // 4 <= request.context_tokens <= u.context_length
            assert request.turn == len(request.history) + 1 <= 4
            if request.turn > 1:  # a conversation goes on: the earlier turns are read back
                assert request.history == previous
            previous = [*request.history, request.entry]
            if request.context_tokens >= PREFILL_ONLY_TOKENS:
                assert request.decode_reads == 0
            else:
                assert request.decode_reads == 1 + -(-request.output_tokens // 32)
            seen_turns.add(request.turn)
    assert seen_turns == {1, 2, 3, 4}
    ids = [r.entry.entry_id for u in range(3) for r in requests(model, u, 5)]
    assert len(set(ids)) == len(ids) and 0 not in ids  # 0 is the shared prefix


def test_a_request_left_before_its_prefill_is_not_read_back():
    model = TrafficModel(3, 0, 1, Layout(MODELS["tiny"]), max_turns=8)
    first = requests(model, 0, 1)[0]
    model.next_request(0)  # left before its prefill: never remembered
    following = [model.next_request(0) for _ in range(1)][0]
    assert all(e.entry_id == first.entry.entry_id for e in following.history)


def test_single_turn_has_no_history():
    model = TrafficModel(1, 0, 2, Layout(MODELS["tiny"]), multi_turn=False)
    assert all(r.history == [] and r.turn == 1 for r in requests(model, 0, 10))


def entry(i: int, size: int) -> Entry:
    return Entry(i, 1, [size])


def test_no_memory_budget_sends_everything_to_storage():
    tiers = Tiers(0)
    tier, demoted, deleted = tiers.place(entry(1, 10))
    assert (tier, demoted, deleted) == ("storage", [], [])
    tiers.unpin([entry(1, 10)])
    assert tiers.touch(entry(1, 10)) == "storage"


def test_memory_tier_is_lru_and_spills_to_storage():
    tiers = Tiers(30)
    for i in (1, 2, 3):
        assert tiers.place(entry(i, 10))[0] == "memory"
        tiers.unpin([entry(i, 10)])
    assert tiers.touch(entry(1, 10)) == "memory"  # 1 is now the most recently used
    tiers.unpin([entry(1, 10)])
    tier, demoted, _ = tiers.place(entry(4, 10))
    assert tier == "memory" and [e.entry_id for e in demoted] == [2]  # the least recently used
    tiers.unpin([entry(4, 10), *demoted])
    assert tiers.touch(entry(2, 10)) == "storage"
    tiers.unpin([entry(2, 10)])
    assert tiers.place(entry(5, 40))[0] == "storage"  # larger than the whole tier


def test_pinned_entries_are_never_evicted_and_capacity_deletes_lru():
    tiers = Tiers(20, storage_capacity=25)
    tiers.place(entry(1, 10))  # pinned (being written)
    tiers.place(entry(2, 10))
    tiers.unpin([entry(2, 10)])
    tier, demoted, _ = tiers.place(entry(3, 10))
    assert tier == "memory" and [e.entry_id for e in demoted] == [2]  # 1 is pinned
    tiers.unpin([entry(1, 10), entry(3, 10), *demoted])
    _, demoted, deleted = tiers.place(entry(4, 10))
    tiers.unpin([entry(4, 10), *demoted])
    _, demoted, deleted = tiers.place(entry(5, 10))
    # storage holds 2, then 1 (or 3): past 25 bytes the least recently used goes
    assert [e.entry_id for e in deleted] == [2]
    assert tiers.touch(entry(2, 10)) is None


def test_capacity_is_the_last_count_before_the_first_over_the_target():
    steps = [{"users": 8, "read_p95_s": 0.001}, {"users": 1, "read_p95_s": 0.001},
             {"users": 2, "read_p95_s": 0.004}, {"users": 4, "read_p95_s": 0.02}]
    assert capacity(steps, 0.01) == {"p95_target_s": 0.01, "users": 2, "first_over": 4, "met": True}
    assert capacity(steps, 1.0) == {"p95_target_s": 1.0, "users": 8, "first_over": None, "met": True}
    assert capacity(steps, 0.0005)["met"] is False
    assert capacity([{"users": 1, "read_p95_s": None}], 1.0)["first_over"] == 1  # no read: not met


def built_histogram(values_ns: list[int]) -> LatencyHistogram:
    hist = LatencyHistogram()
    import numpy as np

    hist.add_many(np.asarray(values_ns, dtype=np.int64))
    return hist


def rank_record(users: int, reads: list[int], writes: list[int], ttft: list[int], requests: int) -> dict:
    r, w, t = built_histogram(reads), built_histogram(writes), built_histogram(ttft)
    return {"kvcache": {
        "users": users, "requests": requests, "output_tokens": 100 * requests, "context_tokens": 0,
        "read_bytes": 4096 * len(reads), "write_bytes": 4096 * len(writes), "read_objects": len(reads),
        "write_objects": len(writes), "deleted_objects": 0, "memory_hits": 1, "storage_hits": len(reads),
        "misses": 0, "prefix_reads": 0, "history_reads": 0,
        "read_p95_s": r.percentile(95) / 1e9, "write_p95_s": w.percentile(95) / 1e9,
        "read_histogram": r.to_sparse(), "write_histogram": w.to_sparse(), "ttft_histogram": t.to_sparse()}}


def test_pooled_percentiles_differ_from_the_max_of_rank_p95s():
    # rank 0: 100 fast reads; rank 1: 10 slow ones. Pooled p95 falls among the slow reads of
    # rank 1 only when they are more than 5 % of all: here 10 of 110 are.
    fast = [1_000_000] * 100
    slow = [50_000_000] * 10
    phase = {"name": "kvcache", "iteration": 0, "seconds": 2.0, "users": 3,
             "ranks": [rank_record(3, fast, [2_000_000], [5_000_000], 4),
                       rank_record(3, slow, [3_000_000], [9_000_000], 2)]}
    config = build_config({"workload": "kvcache", "storage": {"root": "/tmp/x"}, "kvcache": {"users": [3]}})
    out = summarize_kvcache(config, [phase])
    step = out["steps"][0]
    pooled = merge_sparse([r["kvcache"]["read_histogram"] for r in phase["ranks"]])
    assert pooled.count == 110
    assert step["read_latency"] == percentiles(pooled)
    assert step["read_p95_max_rank_s"] == pytest.approx(0.05, rel=0.01)
    assert step["read_latency"]["p50_s"] == pytest.approx(0.001, rel=0.01)
    assert step["requests"] == 6 and step["tokens_per_s"] == 300.0 and step["requests_per_s"] == 3.0
    assert step["hit_rates"]["memory"] == pytest.approx(2 / 112)
    assert "capacity" not in out


def test_config_rules():
    base = {"workload": "kvcache", "storage": {"root": "/tmp/x"}}
    cfg = build_config({**base, "kvcache": {"users": "1,2,4", "p95_target": 0.05}})
    assert cfg.kvcache.users == [1, 2, 4]
    assert build_config({**base, "kvcache": {"users": 7}}).kvcache.users == [7]
    with pytest.raises(ConfigError, match="increasing"):
        build_config({**base, "kvcache": {"users": [4, 2], "p95_target": 0.05}})
    with pytest.raises(ConfigError, match="p95_target"):
        build_config({**base, "kvcache": {"users": [1, 2]}})
    with pytest.raises(ConfigError, match="kvcache.model"):
        build_config({**base, "kvcache": {"model": "gpt-5"}})
    with pytest.raises(ConfigError, match="at least 1"):
        build_config({**base, "kvcache": {"users": [0, 1], "p95_target": 1}})


def test_closed_options_match_the_shipped_configs():
    import os

    from mpibench.config import load_config

    configs = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")
    for option, name in (("1", "kvcache-llama3.1-8b"), ("2", "kvcache-llama3.1-8b-throughput"),
                         ("3", "kvcache-llama3.1-70b-instruct")):
        kv = load_config(os.path.join(configs, f"{name}.yaml")).kvcache
        want = CLOSED_OPTIONS[option]
        assert (kv.model, kv.users, kv.duration, kv.memory_budget, kv.concurrency, kv.generation) == (
            want["model"], [want["users"]], want["duration"], want["memory_budget"], want["concurrency"],
            want["generation"])


def test_storage_capacity_defaults_to_a_share_of_the_free_space():
    assert storage_capacity(5 * 2**20, 10**12, 4) == 5 * 2**20  # configured
    assert storage_capacity(0, 10**12, 4) == int(10**12 * 0.8) // 4
    assert storage_capacity(0, None, 4) == 0  # s3: free space unknown, unbounded


def _cached(path: str, size: int) -> bool:
    """Whether the whole file is in the page cache: a read that may not wait for the device."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.preadv(fd, [bytearray(size)], 0, os.RWF_NOWAIT) == size
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:  # a filesystem without nowait buffered reads
            pytest.skip(f"{path}: no RWF_NOWAIT reads on this filesystem")
        raise
    finally:
        os.close(fd)


@pytest.mark.parametrize("synced", [False, True])
def test_local_fs_evict_drops_an_object_from_the_page_cache(tmp_path, synced):
    # kvcache evicts each object before reading it back; an object fsynced at its write
    # skips the second flush (synced=True) and must leave the page cache all the same.
    if not hasattr(os, "RWF_NOWAIT"):
        pytest.skip("no preadv2(RWF_NOWAIT) to look into the page cache")
    base = os.environ.get("MPIBENCH_TEST_DIR") or str(tmp_path)
    root = tempfile.mkdtemp(dir=base)
    try:
        backend = backend_class("local_fs", "native")(StorageConfig(type="local_fs", root=root))
        size = 384 * 1024
        handle = backend.open("kv.0", "w")
        try:
            assert backend.write_at(handle, memoryview(os.urandom(size)), 0) == size
            if synced:
                backend.fsync(handle)
        finally:
            backend.close(handle)
        path = backend.path_of("kv.0")
        assert _cached(path, size)  # just written: its pages are there
        assert backend.evict("kv.0", synced=synced)
        assert not _cached(path, size)
    finally:
        shutil.rmtree(root, ignore_errors=True)

"""Partition and alignment maths, exhaustively with hypothesis (no MPI, no I/O)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mpibench.plan import (
    EpochShare,
    FeistelPermutation,
    aligned_slice,
    bandwidth_file,
    epoch_files,
    file_name,
    nearest_aligned,
    part_range,
    reorder_partner,
    round_up,
    transfer_offsets,
)


@given(st.integers(0, 10**6), st.integers(1, 300))
def test_part_range_covers_once_and_balances(total, parts):
    covered = 0
    counts = []
    for p in range(parts):
        start, count = part_range(total, parts, p)
        assert start == covered
        covered += count
        counts.append(count)
    assert covered == total
    assert max(counts) - min(counts) <= 1


@given(st.integers(0, 10**9), st.sampled_from([512, 4096, 65536]), st.integers(1, 64))
def test_aligned_slices_cover_every_byte_once(total, unit, parts):
    position = 0
    lengths = []
    for p in range(parts):
        offset, length = aligned_slice(total, unit, parts, p)
        assert offset == position
        assert offset % unit == 0
        if p < parts - 1:
            assert length % unit == 0
        position += length
        lengths.append(length)
    assert position == total
    whole = [n // unit for n in lengths[:-1]] + [lengths[-1] // unit]
    assert max(whole) - min(whole) <= 1


@given(st.integers(1, 64), st.sampled_from([4096, 2**20]), st.integers(1, 16))
def test_shared_file_slices_written_once_and_aligned(ranks, transfer, transfers_per_rank):
    block = transfer * transfers_per_rank
    written = np.zeros(ranks * transfers_per_rank, dtype=np.int64)
    for rank in range(ranks):
        piece = bandwidth_file("shared", rank, block)
        assert piece.offset % transfer == 0
        assert piece.length == block
        for rel in transfer_offsets(piece.length, transfer, "random", rank):
            written[(piece.offset + rel) // transfer] += 1
    assert (written == 1).all()


@given(st.integers(1, 200), st.integers(1, 16), st.integers(1, 8))
def test_reorder_reads_is_a_permutation_off_node(per_node, nodes, _):
    size = per_node * nodes
    partners = [reorder_partner(r, size, per_node, nodes) for r in range(size)]
    assert sorted(partners) == list(range(size))
    if size > 1:
        for rank, partner in enumerate(partners):
            assert partner != rank
            if nodes > 1:
                assert partner // per_node != rank // per_node


@settings(max_examples=60)
@given(st.integers(1, 5000), st.integers(0, 2**31))
def test_feistel_is_a_bijection(n, seed):
    perm = FeistelPermutation(n, seed)
    out = perm(np.arange(n))
    assert sorted(out.tolist()) == list(range(n))


@settings(max_examples=50)
@given(st.integers(1, 3000), st.integers(1, 64), st.integers(0, 5), st.booleans())
def test_epoch_files_each_once_balanced(num_files, size, epoch, shuffle):
    seen = np.concatenate([epoch_files(num_files, size, r, epoch, shuffle, 7) for r in range(size)])
    assert sorted(seen.tolist()) == list(range(num_files))
    counts = [len(epoch_files(num_files, size, r, epoch, shuffle, 7)) for r in range(size)]
    assert max(counts) - min(counts) <= 1


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 100_000), st.integers(1, 4), st.booleans(), st.data())
def test_epoch_share_by_position_matches_the_whole(num_files, size, shuffle, data):
    """A share made a slice at a time gives, position by position and slice by slice,
    what the whole array gives, across slice boundaries and in any order of access."""
    rank = data.draw(st.integers(0, size - 1))
    whole = epoch_files(num_files, size, rank, 2, shuffle, 11)
    share = EpochShare(num_files, size, rank, 2, shuffle, 11)
    assert len(share) == len(whole)
    assert np.array_equal(np.concatenate(list(share.slices()) or [np.zeros(0, np.int64)]), whole)
    if len(whole):
        probes = data.draw(st.lists(st.integers(0, len(whole) - 1), min_size=1, max_size=40))
        edges = [p for p in (EpochShare.SLICE - 1, EpochShare.SLICE, len(whole) - 1) if p < len(whole)]
        for position in probes + edges + probes[::-1]:
            assert share[position] == whole[position]


def test_shuffle_changes_each_epoch_and_is_seeded():
    a = epoch_files(1000, 4, 1, 0, True, 3)
    b = epoch_files(1000, 4, 1, 1, True, 3)
    assert not np.array_equal(a, b)
    assert np.array_equal(a, epoch_files(1000, 4, 1, 0, True, 3))


def test_names_and_rounding():
    assert file_name(1234, 100000, "npz", 0) == "img_0001234_of_0100000.npz"
    assert file_name(1234, 100000, "npz", 16) == "00002/img_0001234_of_0100000.npz"
    assert round_up(4097, 4096) == 8192
    assert nearest_aligned(5000, 4096) == (4096, 8192)
    assert nearest_aligned(100, 4096) == (4096, 4096)

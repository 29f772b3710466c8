"""The metadata workload's names and tree maths (pure: no MPI, no I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpibench.mdplan import (
    file_name,
    item_dirs,
    listed_dirs,
    name_prefix,
    renamed_of,
    stride_partner,
    tree_dirs,
    tree_owner_dirs,
    tree_top,
)


def test_tree_of_depth_two():
    assert tree_dirs(2, 2) == ["", "d0", "d1", "d0/d0", "d0/d1", "d1/d0", "d1/d1"]
    assert item_dirs(2, 2, leaves_only=True) == ["d0/d0", "d0/d1", "d1/d0", "d1/d1"]
    assert item_dirs(2, 2, leaves_only=False) == tree_dirs(2, 2)
    assert item_dirs(0, 5, leaves_only=True) == [""]


@given(st.integers(0, 4), st.integers(1, 5))
def test_tree_sizes_and_parents_first(depth, branching):
    dirs = tree_dirs(depth, branching)
    assert len(dirs) == sum(branching ** level for level in range(depth + 1))
    assert len(set(dirs)) == len(dirs)
    seen = {""}
    for path in dirs[1:]:
        assert path.rpartition("/")[0] in seen  # the parent is created first
        seen.add(path)
    assert len(item_dirs(depth, branching, True)) == branching ** depth


def test_trees_and_owners():
    assert tree_top("unique", 3) == "metadata/r000003"
    assert tree_top("shared", 3) == "metadata/shared"
    assert tree_owner_dirs("shared", 1, 1, 2) == []  # rank 0 makes the shared tree
    assert tree_owner_dirs("shared", 0, 1, 2) == ["metadata/shared", "metadata/shared/d0", "metadata/shared/d1"]
    assert tree_owner_dirs("unique", 2, 0, 4) == ["metadata/r000002"]


@given(st.integers(1, 64), st.integers(0, 70), st.integers(1, 8))
def test_stride_is_a_permutation(size, stride, per_node):
    partners = [stride_partner(r, size, stride, per_node, 1) for r in range(size)]
    assert sorted(partners) == list(range(size))  # every rank's files are worked on exactly once


def test_auto_stride_reaches_another_node():
    # 2 nodes of 4 ranks: every rank works on the files of the rank at its place on the other node
    assert [stride_partner(r, 8, "auto", 4, 2) for r in range(8)] == [4, 5, 6, 7, 0, 1, 2, 3]
    assert [stride_partner(r, 3, "auto", 3, 1) for r in range(3)] == [1, 2, 0]
    assert stride_partner(0, 1, "auto", 1, 1) == 0


@given(st.integers(1, 40), st.integers(1, 50))
def test_shared_listing_covers_every_directory(size, dirs):
    listed = [d for r in range(size) for d in listed_dirs("shared", r, size, r, dirs)]
    assert set(listed) == set(range(dirs))
    if dirs >= size:
        assert len(listed) == dirs  # each listed once
    assert listed_dirs("unique", 0, size, 0, dirs) == list(range(dirs))


def test_file_names():
    assert [file_name(2, i) for i in range(3)] == ["file.2.0", "file.2.1", "file.2.2"]
    assert renamed_of(file_name(2, 1)) == "moved.2.1" and file_name(12, 3) != file_name(1, 23)
    assert renamed_of(name_prefix(2)) + "1" == "moved.2.1" and name_prefix(2) + "7" == file_name(2, 7)


@pytest.mark.parametrize("depth,branching,message", [
    (30, 2, "lower metadata.depth or metadata.branching"),
    (65, 1, "metadata.depth' must be at most 64"),  # the key's own range comes first
])
def test_tree_too_large_is_refused(depth, branching, message):
    from mpibench.config import build_config
    from mpibench.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        build_config({"workload": "metadata", "storage": {"root": "/tmp/x"},
                      "metadata": {"depth": depth, "branching": branching}})

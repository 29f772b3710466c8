"""Names and tree maths of the metadata workload (pure: no MPI, no I/O).

Every rank computes the same names from the configuration, so no listing is needed to
find a file: the files of rank `owner` are ``file.<owner>.<i>`` for i in range(items),
file i in item directory ``i % len(item_dirs)`` of the owner's tree (its own tree in
the unique layout, the one shared tree otherwise). A tree of depth d and branching b
has b**level directories at each level 0..d below its top; the top is level 0.
"""

from __future__ import annotations

from mpibench.plan import reorder_partner

MD_DIR = "metadata"  # below the run directory: every tree of the run


def tree_dirs(depth: int, branching: int) -> list[str]:
    """Directories of a tree relative to its top, parents before children ("" is the top)."""
    levels = [[""]]
    for _ in range(depth):
        levels.append([f"{parent}/d{j}" if parent else f"d{j}" for parent in levels[-1] for j in range(branching)])
    return [path for level in levels for path in level]


def item_dirs(depth: int, branching: int, leaves_only: bool) -> list[str]:
    """The directories that hold files: the deepest level only (mdtest -L) or all of them."""
    every = tree_dirs(depth, branching)
    if not leaves_only:
        return every
    return every[len(every) - branching ** depth:]


def tree_top(layout: str, rank: int) -> str:
    """Top directory (relative to the run directory) of the tree holding `rank`'s files."""
    return f"{MD_DIR}/shared" if layout == "shared" else f"{MD_DIR}/r{rank:06d}"


FILE_PREFIX = "file."
RENAMED_PREFIX = "moved."


def name_prefix(owner: int) -> str:
    """What the names of rank `owner`'s files start with: file i is name_prefix(owner) + str(i)."""
    return f"{FILE_PREFIX}{owner}."


def file_name(owner: int, index: int) -> str:
    """The name of file `index` created by rank `owner` (unique in any directory)."""
    return f"{name_prefix(owner)}{index}"


def renamed_of(name: str) -> str:
    """The name a file (or a name prefix) has after the rename phase."""
    return RENAMED_PREFIX + name[len(FILE_PREFIX):]


def dir_of(index: int, dirs: int) -> int:
    """The item directory (index into item_dirs) of file `index`."""
    return index % dirs


def stride_partner(rank: int, size: int, stride: int | str, ranks_per_node: int, num_nodes: int) -> int:
    """The rank whose files `rank` stats, reads, lists, renames and removes (mdtest -N):
    (rank + stride) % size, or with stride 'auto' one node over (plan.reorder_partner)."""
    if isinstance(stride, str):
        return reorder_partner(rank, size, ranks_per_node, num_nodes)
    return (rank + stride) % size


def tree_owner_dirs(layout: str, rank: int, depth: int, branching: int) -> list[str]:
    """The directories `rank` creates in the tree phase (and removes in the tree-remove
    phase, in reverse order): its own tree in the unique layout; the shared tree for rank 0."""
    if layout == "shared" and rank != 0:
        return []
    top = tree_top(layout, rank)
    return [f"{top}/{path}" if path else top for path in tree_dirs(depth, branching)]


def listed_dirs(layout: str, rank: int, size: int, partner: int, dirs: int) -> list[int]:
    """Item directories `rank` lists: every one of its partner's tree (unique layout); in the
    shared tree every size-th one from `rank`, or directory rank % dirs when there are
    fewer directories than ranks (then several ranks list the same directory)."""
    if layout != "shared":
        return list(range(dirs))
    if dirs < size:
        return [rank % dirs]
    return list(range(rank, dirs, size))

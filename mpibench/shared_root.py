"""Multi-node truth: every node must see the run directory rank 0's preflight created.

The preflight runs on rank 0 only. Where storage.root is node-local (a local disk, a
tmpfs, a path mounted on some nodes only), the other nodes would write to their own
disks and the aggregate would silently measure local disks. So once the preflight has
passed, the first rank of each node reads the run marker rank 0 wrote (the same run id,
not a directory of the same name by chance) and creates and removes a file of its own
in the run directory; rank 0 gathers the answers, and a node that failed ends every
rank with one line naming it.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from mpibench.comm import Comm, NodeLayout
from mpibench.errors import PreflightError, agreed
from mpibench.plan import RUN_MARKER

PROBE_PREFIX = ".mpibench-node-"


def run_dir_of(config: Any, run_key: str) -> str | None:
    """The run directory as this rank's backend would name it, or None for object storage."""
    from mpibench.backends import backend_class
    from mpibench.backends.posix import PosixBackend

    cls = backend_class(config.storage.type, config.storage.library)
    if not issubclass(cls, PosixBackend):
        return None
    return PosixBackend(config.storage).path_of(run_key)


def probe_node(run_dir: str, run_id: str, node_index: int) -> str | None:
    """This node's view of the run directory: None when it sees rank 0's marker and can
    create and remove a file there, else what is wrong."""
    marker = os.path.join(run_dir, RUN_MARKER)
    try:
        with open(marker, encoding="utf-8") as handle:
            seen = json.load(handle).get("run_id")
    except FileNotFoundError:
        return f"no {run_dir}" if not os.path.isdir(run_dir) else f"no run marker in {run_dir}"
    except (OSError, ValueError) as exc:
        return f"cannot read {marker}: {getattr(exc, 'strerror', None) or exc}"
    if seen != run_id:
        return f"{marker} belongs to run {seen}, not {run_id}"
    probe = os.path.join(run_dir, f"{PROBE_PREFIX}{node_index}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, socket.gethostname().encode())
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"cannot create and remove a file in {run_dir}: {exc.strerror or exc}"
    return None


def check_nodes_see_run_dir(config: Any, comm: Comm, layout: NodeLayout, run_id: str, run_key: str) -> str | None:
    """Collective: the first rank of every node probes the run directory; raises one
    agreed PreflightError naming the nodes that do not see it. Returns the check's line
    (rank 0), or None (object storage, one node, other ranks)."""
    run_dir = run_dir_of(config, run_key)
    if run_dir is None or layout.num_nodes < 2:
        return None
    answer = None
    if layout.local_rank == 0:
        answer = (layout.host, probe_node(run_dir, run_id, layout.node_index))
    answers = comm.gather(answer)
    error = None
    if comm.is_root:
        assert answers is not None
        nodes = [a for a in answers if a is not None]
        bad = [(host, why) for host, why in nodes if why is not None]
        if bad:
            names = ", ".join(host for host, _ in bad)
            why = "; ".join(f"{host}: {reason}" for host, reason in bad)
            error = PreflightError(
                f"storage.root {config.storage.root} is not shared by every node: {len(bad)} of {len(nodes)} "
                f"node(s) ({names}) do not see the run directory rank 0 created on {layout.host} ({why})",
                "give a storage.root on a filesystem every node mounts at the same path "
                "(a parallel or network filesystem), or run on one node")
    error = comm.bcast(error)
    if error is not None:
        raise agreed(error)
    if comm.is_root:
        return (f"all {layout.num_nodes} node(s) see the run directory {run_dir} and can create files in it "
                f"(shared storage.root)")
    return None

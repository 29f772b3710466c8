"""Multi-node logic at 4 ranks on 2 emulated nodes, without a cluster.

Each rank runs in a UTS namespace of its own (`unshare -u`) whose host name is its
"node"'s, and mpibench groups ranks by host name (MPIBENCH_NODE_KEY=hostname: MPI sees
them all on this one host). For the not-shared case the second node's ranks also get a
mount namespace with an empty tmpfs over storage.root: the path exists there but is
another filesystem, as a node-local disk would be. Needs root (namespaces, mount).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from conftest import BIN, CONFIGS, clean_env, run_cli, tree

QUICK = os.path.join(CONFIGS, "quickstart.yaml")
SMALL = ("bandwidth.block_size=4MiB", "bandwidth.transfer_size=1MiB", "bandwidth.iterations=1")


def _namespaces_usable() -> str | None:
    if os.geteuid() != 0:
        return "emulating nodes needs root (unshare -u -m, mount)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    done = subprocess.run(["unshare", "-u", "-m", "sh", "-c", "hostname emulated-node && mount -t tmpfs t /mnt"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return f"this host does not allow new UTS/mount namespaces: {done.stderr.strip()}"
    return None


pytestmark = pytest.mark.skipif(_namespaces_usable() is not None, reason=str(_namespaces_usable()))


def two_nodes(root: str, *args: str, private_root_on_b: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    """`mpibench ARGS` on 4 ranks: 2 on node-a, 2 on node-b (an MPMD mpiexec line)."""
    cli = os.path.join(BIN, "mpibench")
    command = " ".join(["exec", cli, *map(_quote, args)])
    node_a = ["unshare", "-u", "sh", "-c", f"hostname node-a && {command}"]
    mount = f"mount -t tmpfs -o size=16m node-b-local {_quote(root)} && " if private_root_on_b else ""
    node_b = ["unshare", "-u", *(["-m"] if private_root_on_b else []), "sh", "-c", f"hostname node-b && {mount}{command}"]
    cmd = [os.path.join(BIN, "mpiexec"), "-n", "2", *node_a, ":", "-n", "2", *node_b]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env=clean_env({"MPIBENCH_NODE_KEY": "hostname"}))


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def test_shared_root_on_two_nodes_runs_with_per_node_layout(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    output = tmp_path / "r.json"
    done = two_nodes(str(root), "run", QUICK, f"storage.root={root}", *SMALL, "--output", str(output),
                     "--progress=off")
    assert done.returncode == 0, done.stderr
    assert "ranks 4 on 2 node(s) (2, 2 per node)" in done.stdout
    doc = json.loads(output.read_text())
    env = doc["environment"]
    assert (env["num_nodes"], env["hosts"], env["ranks_per_node"], env["nodes_by"]) == (
        2, ["node-a", "node-b"], [2, 2], "hostname")
    assert any(check.startswith("all 2 node(s) see the run directory") for check in doc["preflight"]["checks"])
    for phase in doc["phases"]:
        assert [(r["rank"], r["host"]) for r in phase["ranks"]] == [
            (0, "node-a"), (1, "node-a"), (2, "node-b"), (3, "node-b")]
        # The block device counters are read once per node, by its first rank.
        assert [("block_device" in r) for r in phase["ranks"]] == [True, False, True, False]
        assert sorted((h["host"], h["ranks"]) for h in phase["hosts"]) == [("node-a", 2), ("node-b", 2)]
    assert tree(str(root)) == {}


def test_root_not_shared_by_a_node_ends_every_rank_with_one_line(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "keep.txt").write_text("not mpibench's")
    before = tree(str(root))
    output = tmp_path / "r.json"
    done = two_nodes(str(root), "run", QUICK, f"storage.root={root}", *SMALL, "--output", str(output),
                     private_root_on_b=True)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"mpibench: error: storage.root {root} is not shared by every node: 1 of 2 "
                               "node(s) (node-b) do not see the run directory rank 0 created on node-a")
    assert "give a storage.root on a filesystem every node mounts" in lines[0]
    assert "Traceback" not in done.stdout + done.stderr
    assert tree(str(root)) == before  # rank 0 removed the run directory it made
    assert not output.exists()


def test_preflight_command_checks_the_nodes_too(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    done = two_nodes(str(root), "preflight", QUICK, f"storage.root={root}", private_root_on_b=True)
    assert done.returncode == 2 and "(node-b) do not see the run directory" in done.stderr, done.stderr
    shared = two_nodes(str(root), "preflight", QUICK, f"storage.root={root}")
    assert shared.returncode == 0, shared.stderr
    assert "ok: all 2 node(s) see the run directory" in shared.stdout
    assert tree(str(root)) == {}


def test_unknown_node_key_is_refused_in_one_line(tmp_path):
    done = run_cli(2, "run", QUICK, f"storage.root={tmp_path}", env={"MPIBENCH_NODE_KEY": "rack"})
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ["mpibench: error: MPIBENCH_NODE_KEY=rack is not a way to group ranks into nodes; "
                     "set it to shared_memory or hostname, or unset it"], done.stderr

#!/usr/bin/env python3
"""The automatic write choice A/B: mpibench bandwidth with io.depth auto (and its choices:
preallocated files at depth > 1, or writes at depth 1) against io.depth 1 and io.depth 2
given explicitly (nothing preallocated, writes extending the file), interleaved.

    python benchmarks/write_depth.py --workdir /tmp --reps 7
    python benchmarks/write_depth.py --sizes 4096:32MiB,1048576:512MiB --reps 5

One rank, direct_fs, sequential write then read of one file, fsync, one iteration; every
repetition runs every size and, within a size, every variant once, the order rotating.
Prints each run (with the 1-minute load average and the write depth mpibench chose) and
the medians in MiB/s with their ratio to depth 1 (docs/runs/2026-12-07-peers-ior.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {"auto": ["io.depth=auto"], "depth 1": ["io.depth=1"], "depth 2 extending": ["io.depth=2"]}


def one_run(work: Path, transfer: int, block: str, overrides: list[str]) -> dict:
    """One mpibench run; its results document."""
    out = work / "result.json"
    subprocess.run([sys.executable, "-m", "mpibench", "run", str(REPO / "configs" / "bandwidth.yaml"),
                    "storage.type=direct_fs", f"storage.root={work / 'data'}", f"bandwidth.transfer_size={transfer}",
                    f"bandwidth.block_size={block}", "bandwidth.iterations=1", "bandwidth.reorder_reads=false",
                    "bandwidth.fsync=true", *overrides, "--quiet", "--output", str(out), "--force"],
                   check=True, cwd=str(work))
    return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4096:32MiB,65536:256MiB,1048576:512MiB",
                        help="transfer:bytes pairs (default 4096:32MiB,65536:256MiB,1048576:512MiB)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--workdir", default=os.environ.get("TMPDIR", "/tmp"),
                        help="parent of the run's own folder (a real filesystem accepting O_DIRECT)")
    args = parser.parse_args()
    sizes = [(int(t), b) for t, b in (pair.split(":") for pair in args.sizes.split(","))]
    work = Path(tempfile.mkdtemp(prefix="mpibench-write-depth-", dir=args.workdir))
    results: dict[tuple[int, str], list[tuple[float, float]]] = {}
    try:
        for rep in range(args.reps):
            for transfer, block in sizes:
                names = list(VARIANTS)
                names = names[rep % len(names):] + names[:rep % len(names)]
                for name in names:
                    os.sync()
                    time.sleep(1)
                    doc = one_run(work, transfer, block, VARIANTS[name])
                    bw = {p["name"]: p["bandwidth_MiBps"] for p in doc["phases"]}
                    results.setdefault((transfer, name), []).append((bw["write"], bw["read"]))
                    chosen = (doc.get("auto_choices") or {}).get("write_io_depth", {}).get("value", "-")
                    print(f"rep {rep + 1}  {transfer:>8}  {name:<18} write {bw['write']:8.1f}  read {bw['read']:8.1f} "
                          f"MiB/s  write depth chosen {chosen}  load {os.getloadavg()[0]:.1f}", flush=True)
        print("\ntransfer  variant             write MiB/s (/ depth 1)   read MiB/s (/ depth 1)")
        for transfer, _ in sizes:
            base = [statistics.median(v[i] for v in results[(transfer, "depth 1")]) for i in (0, 1)]
            for name in VARIANTS:
                med = [statistics.median(v[i] for v in results[(transfer, name)]) for i in (0, 1)]
                print(f"{transfer:>8}  {name:<18}  {med[0]:9.1f} ({med[0] / base[0]:.2f})      "
                      f"{med[1]:9.1f} ({med[1] / base[1]:.2f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

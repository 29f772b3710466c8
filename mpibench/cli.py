"""Command line: `mpibench run|plan|preflight|report|compare|s3-server`.

Exit codes: 0 success, 1 I/O failure during the run, 2 configuration or preflight error,
130 interrupted. Errors are one line on rank 0's stderr; --debug adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import time
import warnings
from typing import Any, NoReturn

from mpibench import __version__
from mpibench.errors import (
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_IO,
    BenchIOError,
    ConfigError,
    MpibenchError,
    agreed,
    interrupt_in,
)
from mpibench.lifecycle import NOT_STARTED, RUN_STARTS_WITHIN_S, Lifecycle  # noqa: F401  (tests read the deadline here)

MPI_COMMANDS = ("run", "plan", "preflight", "search")
MAX_CONFIG_BYTES = 1024 * 1024  # a configuration is a few KiB; more is not one (and /dev/zero never ends)
CONFIG_EXAMPLE = "e.g. mpibench {command} configs/quickstart.yaml (configs/ holds one per workload)"
# Where a launcher puts the rank, so that only rank 0 speaks before MPI is up.
LAUNCHER_RANK_VARIABLES = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID")
ROOT_SPEAKS_WITHIN_S = 10.0  # an interrupted rank waits this long for rank 0 to report and end the job

RUN_EXAMPLES = """\
examples:
  mpibench run configs/quickstart.yaml
  mpiexec -n 4 mpibench run configs/bandwidth.yaml storage.root=/scratch/$USER/bench
  srun -n 64 mpibench run configs/bandwidth.yaml storage.type=direct_fs \\
       storage.root=/lustre/scratch/x bandwidth.transfer_size=4MiB --output bw.json
  mpiexec -n 8 mpibench run configs/llama3-8b.yaml checkpoint.scale=0.01
"""

PLAN_EXAMPLES = """\
examples:
  mpibench plan configs/bandwidth.yaml --ranks 64 --ranks-per-node 8
  mpibench plan configs/llama3-70b.yaml --ranks 64
"""

PREFLIGHT_EXAMPLES = """\
examples:
  mpibench preflight configs/bandwidth.yaml storage.root=/lustre/scratch/x
  mpiexec -n 4 mpibench preflight configs/s3.yaml storage.root=s3://bucket/prefix
"""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other error of mpibench."""

    def error(self, message: str) -> NoReturn:
        """Print `message` and where to look, on rank 0 only, and exit 2."""
        _usage_error(message, f"see '{self.prog} --help'")


def _usage_error(message: str, hint: str) -> NoReturn:
    _say(f"mpibench: error: {message}; {hint}")
    sys.exit(EXIT_CONFIG)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with one subcommand per action.

    Given the command about to be parsed, the modules of the other extra commands (report,
    compare, s3-server) are not imported: `run` starts sooner, and holds nothing it does
    not use.
    """
    parser = _Parser(
        prog="mpibench",
        description="MPI-parallel storage benchmark for AI workloads (bandwidth, datagen, train, checkpoint).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes: 0 success, 1 I/O failure during the run, 2 configuration or preflight error, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"mpibench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.usage = "%(prog)s CONFIG.yaml [KEY=VALUE ...] [options]"
        # Optional to argparse only so that a missing file gets mpibench's own message.
        p.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="YAML configuration file")
        p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                       help="dotted overrides, e.g. storage.root=/scratch/x bandwidth.transfer_size=4MiB; "
                            "options may come before, between or after them")
        p.add_argument("--debug", action="store_true", help="show tracebacks of errors")

    run = sub.add_parser("run", help="run the workload the config names",
                         description="Run the workload the config names on every rank and write a results JSON.",
                         epilog=RUN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(run)
    run.add_argument("--output", "-o", metavar="RESULT.json",
                     help="results file (default: mpibench-<run_id>.json in the current directory)")
    run.add_argument("--force", action="store_true", help="overwrite an existing results file")
    run.add_argument("--csv", metavar="FILE.csv", help="also write one CSV row per phase and iteration")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no table")

    plan = sub.add_parser("plan", help="print what each rank would do, without I/O",
                          description="Print what each rank would do (files, bytes, alignment), the totals, "
                                      "and the checks preflight would make. No I/O.",
                          epilog=PLAN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(plan)
    plan.add_argument("--ranks", type=int, default=None, help="world size to plan for (default: this job's)")
    plan.add_argument("--ranks-per-node", type=int, default=None, help="ranks per node (default: all on one node)")
    plan.add_argument("--show", type=int, default=4, help="ranks to show in detail (first and last)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")

    pre = sub.add_parser("preflight", help="run only the rank-0 storage checks",
                         description="Run only the rank-0 checks (configuration, storage root, free space, "
                                     "O_DIRECT, object store reachability); create and remove the run directory.",
                         epilog=PREFLIGHT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(pre)
    from mpibench.search import add_parser as add_search

    add_search(sub, common)

    if command in MPI_COMMANDS:
        return parser
    for name, module in _EXTRA_COMMANDS.items():
        if command in (None, name):
            _import_command(module).add_parser(sub)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named in `argv`, if it is a known one (the top level has no option values)."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return first if first in (*MPI_COMMANDS, *_EXTRA_COMMANDS) else None


_EXTRA_COMMANDS = {"report": "mpibench.reporting", "compare": "mpibench.compare",
                   "s3-server": "mpibench.s3server_cli", "datasize": "mpibench.datasize_cli"}


def _import_command(module: str) -> Any:
    """The module of a command that needs no MPI (its packages are required: no fallback)."""
    import importlib

    return importlib.import_module(module)


def _print_error(exc: MpibenchError, debug: bool, rank: int | None = None) -> None:
    if debug:
        from mpibench.run import format_traceback

        print(format_traceback(exc), file=sys.stderr, end="")
    line = exc.line()
    if rank is not None and not line.startswith("rank "):
        line = f"rank {rank}: {line}"
    print(f"mpibench: error: {line}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mpibench` console script.

    Its first act makes SIGINT and SIGTERM end the process with one line and exit 130
    instead of a KeyboardInterrupt traceback from the middle of an import: at once as one
    process; under a launcher once MPI is up (see mpibench.lifecycle). The run then takes the
    signals over.
    """
    LIFECYCLE.rank_hint = _launcher_rank()
    LIFECYCLE.boot()
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        if args.command in MPI_COMMANDS:
            return _main_mpi(args)
        if LIFECYCLE.early:
            _say(f"mpibench: error: interrupted by {LIFECYCLE.early}")
            return EXIT_INTERRUPTED
        LIFECYCLE.plain()
        return int(args.handler(args))
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as other Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse the command line; options and KEY=VALUE overrides may come in any order."""
    args, extra = build_parser(_command_of(argv)).parse_known_args(argv)
    prog = f"mpibench {args.command}"
    # argparse takes the positionals up to the first option; the overrides after it come
    # back unrecognised, in their order, and are the overrides' rest.
    unknown = [arg for arg in extra if arg.startswith("-")]
    if unknown or (extra and args.command not in MPI_COMMANDS):
        _usage_error(f"unrecognized arguments: {' '.join(unknown or extra)}", f"see '{prog} --help'")
    if args.command not in MPI_COMMANDS:
        return args
    args.overrides = [*args.overrides, *extra]
    example = CONFIG_EXAMPLE.format(command=args.command)
    if args.config is None:
        _usage_error(f"{prog} needs a configuration file", f"give one, {example}")
    if "=" in args.config and not os.path.lexists(args.config):
        _usage_error(f"{prog} needs a configuration file before the KEY=VALUE overrides, got {args.config}",
                     f"give one first, {example}")
    if args.command == "run":
        for option, value, example in (("--output", args.output, "result.json"), ("--csv", args.csv, "result.csv")):
            if value is not None and not value.strip():
                _usage_error(f"{option} is empty", f"give a file name, e.g. {option} {example}")
    if args.command == "plan":
        for option, value in (("--ranks", args.ranks), ("--ranks-per-node", args.ranks_per_node)):
            if value is not None and value < 1:
                _usage_error(f"{option} {value} is not a rank count", f"give 1 or more, e.g. {option} 8")
        if args.ranks is not None and args.ranks_per_node is not None and args.ranks_per_node > args.ranks:
            _usage_error(f"--ranks-per-node {args.ranks_per_node} is more than --ranks {args.ranks}",
                         f"give --ranks-per-node {args.ranks} or less")
        if args.show < 0:
            _usage_error(f"--show {args.show} is negative", "give the number of ranks to show, e.g. --show 4")
    return args


def _launcher_rank() -> int | None:
    """This process's rank as its launcher numbers it (known before MPI is up), else None."""
    for name in LAUNCHER_RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def _say(line: str) -> None:
    """Print a line to stderr on rank 0 only: before MPI is up every rank fails alike."""
    if not _launcher_rank():
        print(line, file=sys.stderr, flush=True)


#: this process's signal handling and its state (mpibench.lifecycle)
LIFECYCLE = Lifecycle()


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    return f"mpibench: warning: {message}\n"


def _main_mpi(args: argparse.Namespace) -> int:
    from mpibench.comm import Comm

    comm = Comm()
    debug = bool(args.debug)
    if not debug:  # a warning is one line, like an error; --debug keeps where it came from
        warnings.formatwarning = _one_line_warning
    try:
        # MPI is up (lifecycle WAITING): on rank 0 (or as one process) a signal raises
        # KeyboardInterrupt, so that the preflight undoes what it created and the job ends
        # as one; another rank notes it for the run. A signal noted while MPI was starting
        # is raised now.
        LIFECYCLE.wait_for_run(comm)
        code = _dispatch(args, comm)
        noted = LIFECYCLE.take_noted()
        if noted is not None:  # noted, and no run came to act on it (preflight, plan)
            LIFECYCLE.finish()
            print(f"mpibench: error: rank {comm.rank}: interrupted by {noted} {NOT_STARTED}",
                  file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
        return code
    except MpibenchError as exc:
        LIFECYCLE.finish()
        if comm.size > 1 and not exc.agreed:
            # Only this rank failed, outside any agreement: the others may be waiting for
            # it in a collective, so it speaks for itself and ends the whole job.
            _print_error(exc, debug, comm.rank)
            sys.stdout.flush()
            comm.abort(exc.exit_code)
        if comm.is_root:
            _print_error(exc, debug)
        sys.stdout.flush()
        return exc.exit_code
    except KeyboardInterrupt as exc:
        return _interrupted(exc, comm)
    except BrokenPipeError:
        raise
    except Exception as exc:  # a bug: say so on one line, and never leave other ranks waiting
        LIFECYCLE.finish()
        interrupt = interrupt_in(exc)
        if interrupt is not None:  # a signal inside an import can come wrapped
            return _interrupted(interrupt, comm)
        from mpibench.run import format_traceback

        if debug:
            print(format_traceback(exc), file=sys.stderr, end="")
        print(f"mpibench: error: rank {comm.rank}: internal error: {type(exc).__name__}: {exc}; "
              "rerun with --debug and report it", file=sys.stderr, flush=True)
        if comm.size > 1:
            comm.abort(EXIT_IO)
        return EXIT_IO
    finally:
        LIFECYCLE.finish()  # what is left is MPI's shutdown


def _interrupted(exc: KeyboardInterrupt, comm: Any) -> int:
    """SIGINT/SIGTERM outside the run's own graceful handling (loading, preflight): the other
    ranks may be waiting in a collective for this one, so the whole job is ended.

    Rank 0 says so and ends the job. Another rank gets here for a signal during MPI's
    start-up (it first leaves rank 0, which the launcher signalled too, time to do that:
    ending the job at once could kill rank 0 before its line is out; should rank 0 not end
    it, this rank says so itself and ends it), or for a second signal after one it noted
    (Lifecycle, WAITING), which ends the job at once."""
    LIFECYCLE.finish()
    name = exc.args[0] if exc.args else "SIGINT"
    if not comm.is_root and exc.args[1:] == ("again",):  # rank 0 may be half-way through its preflight
        print(f"mpibench: error: rank {comm.rank}: interrupted again by {name} before the run started: "
              "aborting the job; the run directory may keep files, remove it by hand", file=sys.stderr, flush=True)
    elif not comm.is_root:
        time.sleep(ROOT_SPEAKS_WITHIN_S)
        print(f"mpibench: error: rank {comm.rank}: interrupted by {name} {NOT_STARTED}", file=sys.stderr,
              flush=True)
    else:
        print(f"mpibench: error: interrupted by {name} {NOT_STARTED}", file=sys.stderr, flush=True)
    if comm.size > 1:
        comm.abort(EXIT_INTERRUPTED)
    return EXIT_INTERRUPTED


def _dispatch(args: argparse.Namespace, comm: Any) -> int:
    import dataclasses

    from mpibench.config import load_config
    from mpibench.context import broadcast_outcome
    from mpibench.results import check_output_path
    from mpibench.run import execute, new_run_id

    def load() -> tuple[Any, str | None]:
        _check_config_file(args.config)
        config = load_config(args.config, args.overrides)
        if args.command == "plan":
            size = comm.size if args.ranks is None else args.ranks
            if args.ranks_per_node is not None and args.ranks_per_node > size:
                raise ConfigError(f"--ranks-per-node {args.ranks_per_node} is more than the {size} rank(s) planned",
                                  f"give --ranks-per-node {size} or less, or plan more with --ranks")
        if args.command != "run":
            return config, None
        output = args.output
        if output is None:  # the name the run will write, so the check is of that very file
            config = dataclasses.replace(config, run_id=config.run_id or new_run_id())
            output = f"mpibench-{config.run_id}.json"
        check_output_path(output, args.force, "--output")
        if args.csv:
            if os.path.realpath(args.csv) == os.path.realpath(output):
                raise ConfigError(f"--csv {args.csv} is the results file too",
                                  "give --csv and --output different names")
            check_output_path(args.csv, args.force, "--csv")
        return config, output

    config, output = broadcast_outcome(comm, load)
    if args.command == "search":
        from mpibench.search import run_search

        return run_search(config, args, comm, LIFECYCLE, execute)
    if args.command == "plan":
        if comm.is_root:
            _print_plan(config, args, comm)
        return 0
    if args.command == "preflight":
        outcome = execute(config, comm, output=None, preflight_only=True, lifecycle=LIFECYCLE)
        if comm.is_root and outcome is not None:
            pre = outcome["preflight"]
            for check in pre["checks"]:
                print(f"ok: {check}")
            for warning in pre["warnings"]:
                print(f"warning: {warning}")
            print("preflight passed")
        return 0
    from mpibench.csvout import write_csv
    from mpibench.report import phase_table, run_header
    from mpibench.results import write_json_atomic

    progress = None
    if comm.is_root and not args.quiet and sys.stderr.isatty():
        from mpibench.progress import ProgressBar

        progress = ProgressBar()
    # Rank 0 writes the results here, after the run: a file that appeared at the name in
    # the meantime is kept, and the results go to a fresh name beside it (with a warning).
    try:
        document = execute(config, comm, output=None, progress=progress, restore_signals=False,
                           lifecycle=LIFECYCLE)
    except MpibenchError as exc:
        LIFECYCLE.finish()  # the run has ended: what it measured is written, whatever comes
        partial = getattr(exc, "partial_result", None)
        if comm.is_root and partial is not None:
            written = _save(write_json_atomic, output, partial, args.force, "--output")
            if not args.quiet:
                print(run_header(partial))
                print(phase_table(partial))
                print(f"partial result (complete: false) written to {written}")
        raise
    LIFECYCLE.finish()
    if comm.is_root and document is not None:
        written = _save(write_json_atomic, output, document, args.force, "--output")
        csv_written = _save(write_csv, args.csv, document, args.force, "--csv") if args.csv else None
        if not args.quiet:
            print(run_header(document))
            print(phase_table(document))
            print(f"results written to {written}")
            if csv_written:
                print(f"CSV written to {csv_written}")
    return 0


def _save(write: Any, path: str, document: dict[str, Any], force: bool, option: str) -> str:
    """Write results with `write` on rank 0 after the run; return the path written."""
    try:
        return write(path, document, force=force)
    except MpibenchError as exc:
        raise agreed(exc) from None  # every other rank is past its last collective
    except OSError as exc:  # the directory checked before the run failed since (removed, full)
        raise agreed(BenchIOError(f"cannot write {path} after the run: {exc.strerror or exc}",
                                  f"check its directory, or choose another {option} next time")) from None


def _check_config_file(path: str) -> None:
    """Refuse what cannot be a configuration file before reading it (a device, a FIFO, huge)."""
    try:
        info = os.stat(path)
    except OSError:
        return  # reading it says what is wrong
    example = "give the path of a YAML file, e.g. configs/quickstart.yaml"
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ConfigError(f"config file {path} is {kind}", example)
    if info.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is {info.st_size} bytes, over the {MAX_CONFIG_BYTES} a "
                          "configuration may have", example)


def _print_plan(config: Any, args: argparse.Namespace, comm: Any) -> None:
    import json
    import textwrap

    from mpibench.workloads import get_workload

    size = comm.size if args.ranks is None else args.ranks
    per_node = size if args.ranks_per_node is None else args.ranks_per_node
    num_nodes = -(-size // per_node)
    workload = get_workload(config.workload)
    show = sorted(set(list(range(min(args.show, size))) + [size - 1]))
    ranks = [workload.describe_plan(config, size, r, per_node, num_nodes) for r in show]
    planned = workload.planned_bytes(config, size)
    buffers = _plan_buffers(config, workload, size, per_node)
    checks = _preflight_checks(config)
    plan = {"workload": config.workload, "ranks": size, "ranks_per_node": per_node, "nodes": num_nodes,
            "planned_bytes": planned, "buffers": buffers, "per_rank": ranks, "preflight_checks": checks,
            "totals": workload.describe_plan(config, size, -1, per_node, num_nodes).get("totals", {})
            if workload.describe_totals else {}}
    if args.json:
        print(json.dumps(plan, indent=1))
        return
    from mpibench.units import format_size

    print(f"workload {config.workload} on {config.storage.type} at {config.storage.root}: "
          f"{size} rank(s), {per_node} per node, {num_nodes} node(s)")
    print(f"peak bytes on storage: {planned} ({format_size(planned)})")
    if buffers["per_rank_bytes"]:
        print(f"I/O buffers: {format_size(buffers['per_rank_bytes'])} per rank ({buffers['sized_by']}), "
              f"{format_size(buffers['per_node_bytes'])} per node of {per_node} rank(s){buffers['note']}")
    for r in ranks:
        print(textwrap.indent(json.dumps(r, indent=None), "  "))
    print("preflight will check:")
    for check in checks:
        print(f"  - {check}")


def _plan_buffers(config: Any, workload: Any, size: int, per_node: int) -> dict[str, Any]:
    """The I/O buffers a rank allocates and a node's ranks together (what preflight checks
    against the node's available memory); io_depth auto is sized on this host's cores."""
    from mpibench.comm import NodeLayout
    from mpibench.config import AUTO
    from mpibench.context import resolve_io_depth

    layout = NodeLayout(host="", node_index=0, num_nodes=1, local_rank=0, local_size=per_node,
                        ranks_per_node=[per_node], hosts=[])
    depth = resolve_io_depth(config, layout)
    per_rank, driver, _ = workload.buffer_bytes(config, size, per_node, depth)
    note = ""
    if config.io.depth == AUTO and config.workload in ("bandwidth", "checkpoint"):
        note = (f"; io_depth auto is {depth} on {config.storage.type} with {layout.node_cpus()} CPUs per node, "
                "as this process may use")
    return {"per_rank_bytes": per_rank, "per_node_bytes": per_rank * per_node, "sized_by": driver,
            "io_depth": depth, "note": note}


def _preflight_checks(config: Any) -> list[str]:
    """What the backend's preflight will check (Backend.preflight_checks)."""
    from mpibench.backends import backend_class

    return list(backend_class(config.storage.type, config.storage.library).preflight_checks)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

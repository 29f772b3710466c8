"""Command line: `mpibench run|plan|preflight|report|compare|s3-server`.

Exit codes: 0 success, 1 I/O failure during the run, 2 configuration or preflight error,
130 interrupted. Errors are one line on rank 0's stderr; --debug adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
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
from mpibench.redact import RedactingStream

MPI_COMMANDS = ("run", "plan", "preflight", "search")
CONFIG_EXAMPLE = "e.g. mpibench {command} configs/quickstart.yaml (configs/ holds one per workload)"
# Where a launcher puts the rank, so that only rank 0 speaks before MPI is up.
LAUNCHER_RANK_VARIABLES = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID")
NOT_STARTED = "before the run started; nothing was measured"
ROOT_SPEAKS_WITHIN_S = 10.0  # an interrupted rank waits this long for rank 0 to report and end the job
RUN_STARTS_WITHIN_S = 20.0  # a rank that noted a signal before the run waits this long for it to start

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
            helper = _import_command(module)
            if helper is not None:
                helper.add_parser(sub)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named in `argv`, if it is a known one (the top level has no option values)."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return first if first in (*MPI_COMMANDS, *_EXTRA_COMMANDS) else None


_EXTRA_COMMANDS = {"report": "mpibench.reporting", "compare": "mpibench.compare",
                   "s3-server": "mpibench.s3server_cli", "datasize": "mpibench.datasize_cli"}


def _import_command(module: str) -> Any:
    try:
        import importlib

        return importlib.import_module(module)
    except ImportError:
        return None


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
    process; under a launcher once MPI is up (see `_exit_now`). The run then takes the
    signals over.
    """
    _exit_on_signals(defer=_launcher_rank() is not None)
    streams = (sys.stdout, sys.stderr)
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)  # no secret in any line
    try:
        return _main(argv)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing more can be said
                pass
        sys.stdout, sys.stderr = streams


def _main(argv: list[str] | None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        if args.command in MPI_COMMANDS:
            return _main_mpi(args)
        if _EARLY_SIGNAL["pending"]:
            _say(f"mpibench: error: interrupted by {_EARLY_SIGNAL['pending']}")
            return EXIT_INTERRUPTED
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
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


_EARLY_SIGNAL: dict[str, Any] = {"defer": False, "pending": None}
_DEFERRED: dict[str, Any] = {}  # "name": a signal noted by _defer_interrupt; "comm": this rank's


def _exit_on_signals(defer: bool) -> None:
    """Until MPI is up, SIGINT/SIGTERM end the process with one line on rank 0 and exit 130.

    With `defer` (under a launcher), the first signal is only noted: see `_exit_now`.
    """
    _EARLY_SIGNAL["defer"] = defer
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_now)


def _exit_now(signum: int, _frame: Any) -> None:
    name = signal.Signals(signum).name
    if _EARLY_SIGNAL["defer"] and _EARLY_SIGNAL["pending"] is None:
        # Other ranks may already wait in MPI's start-up for this one, and a rank that
        # exits before joining leaves them waiting for good (Hydra does not end them): the
        # signal is acted on once MPI is up, where the whole job can be ended. A second
        # signal does not wait.
        _EARLY_SIGNAL["pending"] = name
        return
    # os._exit, and os.write rather than print: the signal may land inside an import or a
    # write to stderr, and nothing of this process needs undoing yet.
    if not _launcher_rank():
        line = f"mpibench: error: interrupted by {name} {NOT_STARTED}\n"
        try:
            os.write(sys.stderr.fileno(), line.encode(errors="replace"))
        except (OSError, ValueError):
            pass
    os._exit(EXIT_INTERRUPTED)


def _ignore_signals() -> None:
    """The job is ending on its own (or the run is measured): SIGINT/SIGTERM change nothing now.

    This also keeps Python from restoring their default action while MPI shuts down at
    exit, where a signal would kill the rank and the launcher report a bad termination.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    return f"mpibench: warning: {message}\n"


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _defer_interrupt(signum: int, _frame: Any) -> None:
    """A rank other than 0, from MPI's start to the run's own handling: note the first
    SIGINT/SIGTERM and go on. Where the launcher signalled the whole job, rank 0 ends it
    (undoing its preflight) and this rank with it; a signal that reached only this rank
    is carried into the run, which stops at its first check and cleans up (run.execute),
    instead of ending the job while rank 0 is half-way through its preflight. A second
    signal ends the job at once, and so does this rank if the run has not started
    RUN_STARTS_WITHIN_S later (rank 0 stuck in its preflight, say on a hung filesystem,
    where it cannot act on a signal of its own)."""
    name = signal.Signals(signum).name
    if "name" not in _DEFERRED and "noted" not in _DEFERRED:
        _DEFERRED["name"] = _DEFERRED["noted"] = name
        deadline = threading.Timer(RUN_STARTS_WITHIN_S, _run_not_started, (name,))
        deadline.daemon = True  # a run that took the signal ends without waiting for it
        deadline.start()
        return
    raise KeyboardInterrupt(name, "again")


def _run_not_started(name: str) -> None:
    """The deadline of a signal noted before the run: unless the run took it (or the rank
    reported it), end the job with one line (a daemon timer's thread)."""
    if _DEFERRED.pop("name", None) is None:  # taken (pop is atomic: only one side gets it)
        return
    comm = _DEFERRED["comm"]
    print(f"mpibench: error: rank {comm.rank}: interrupted by {name} and the run did not start within "
          f"{RUN_STARTS_WITHIN_S:.0f} s: aborting the job; the run directory may keep files, remove it by hand",
          file=sys.stderr, flush=True)
    comm.abort(EXIT_INTERRUPTED)


def _redeliver_interrupt(unraisable: Any) -> None:
    """sys.unraisablehook: a KeyboardInterrupt raised where Python cannot propagate it (a
    weakref callback of the import system, a __del__) would be printed with a traceback
    and lost; the signal is sent again instead, to be raised where the code handles it."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        name = unraisable.exc_value.args[0] if unraisable.exc_value.args else "SIGINT"
        threading.Timer(0.001, os.kill, (os.getpid(), signal.Signals[name])).start()
        return
    sys.__unraisablehook__(unraisable)


def _main_mpi(args: argparse.Namespace) -> int:
    from mpibench.comm import Comm

    comm = Comm()
    debug = bool(args.debug)
    if not debug:  # a warning is one line, like an error; --debug keeps where it came from
        warnings.formatwarning = _one_line_warning
    # MPI is up: on rank 0 (or as one process) a signal before the run starts now raises
    # KeyboardInterrupt, so that the preflight undoes what it created and the job ends as
    # one (the run has its own handling). The other ranks mostly wait for rank 0 here, and
    # a signal that reached only one of them is carried into the run (_defer_interrupt).
    sys.unraisablehook = _redeliver_interrupt
    _DEFERRED["comm"] = comm
    handler = _defer_interrupt if comm.size > 1 and not comm.is_root else _raise_interrupt
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    try:
        if _EARLY_SIGNAL["pending"]:  # a signal came while MPI was starting up
            raise KeyboardInterrupt(_EARLY_SIGNAL["pending"])
        code = _dispatch(args, comm)
        noted = _DEFERRED.pop("name", None)
        if noted is not None:  # noted, and no run came to act on it (preflight, plan)
            _ignore_signals()
            print(f"mpibench: error: rank {comm.rank}: interrupted by {noted} {NOT_STARTED}",
                  file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
        return code
    except MpibenchError as exc:
        _ignore_signals()
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
        _ignore_signals()
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
        _ignore_signals()  # what is left is MPI's shutdown


def _interrupted(exc: KeyboardInterrupt, comm: Any) -> int:
    """SIGINT/SIGTERM outside the run's own graceful handling (loading, preflight): the other
    ranks may be waiting in a collective for this one, so the whole job is ended.

    Rank 0 says so and ends the job. Another rank gets here for a signal during MPI's
    start-up (it first leaves rank 0, which the launcher signalled too, time to do that:
    ending the job at once could kill rank 0 before its line is out; should rank 0 not end
    it, this rank says so itself and ends it), or for a second signal after one it noted
    (_defer_interrupt), which ends the job at once."""
    _ignore_signals()
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
        config = load_config(args.config, args.overrides)
        if args.command == "plan":
            size = comm.size if args.ranks is None else args.ranks
            if args.ranks_per_node is not None and args.ranks_per_node > size:
                raise ConfigError(f"--ranks-per-node {args.ranks_per_node} is more than the {size} rank(s) planned",
                                  f"give --ranks-per-node {size} or less, or plan more with --ranks")
            from mpibench.workloads import get_workload

            get_workload(config.workload).check_magnitudes(config, size)  # before listing every rank's share
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

        return run_search(config, args, comm, _DEFERRED, execute)
    if args.command == "plan":
        if comm.is_root:
            _print_plan(config, args, comm)
        return 0
    if args.command == "preflight":
        outcome = execute(config, comm, output=None, preflight_only=True, deferred=_DEFERRED)
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
                           deferred=_DEFERRED)
    except MpibenchError as exc:
        _ignore_signals()  # the run has ended: what it measured is written, whatever comes
        partial = getattr(exc, "partial_result", None)
        if comm.is_root and partial is not None:
            written = _save(write_json_atomic, output, partial, args.force, "--output")
            if not args.quiet:
                print(run_header(partial))
                print(phase_table(partial))
                print(f"partial result (complete: false) written to {written}")
        raise
    _ignore_signals()
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
            if hasattr(workload, "describe_totals") else {}}
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
    if config.io.depth == AUTO and config.storage.type not in ("local_fs", "null") and config.workload in (
            "bandwidth", "checkpoint"):
        note = f"; io_depth auto is {depth} with {layout.node_cpus()} CPUs per node, as this process may use"
    return {"per_rank_bytes": per_rank, "per_node_bytes": per_rank * per_node, "sized_by": driver,
            "io_depth": depth, "note": note}


def _preflight_checks(config: Any) -> list[str]:
    storage = config.storage
    if storage.type == "s3":
        return ["AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are set (values never printed)",
                "every endpoint answers a signed request within 3 s and accepts the credentials",
                "the bucket exists (or is created with storage.create_bucket=true)",
                "the run prefix <prefix>/mpibench-<run_id>/ holds no objects",
                "a tiny object can be put, read and deleted under the run prefix (through s3dlio)"]
    checks = ["storage.root exists and is a writable directory (the leaf is created if its parent exists)",
              "free space covers the planned bytes",
              "the I/O buffers of a node's ranks fit in its available memory (MemAvailable or the cgroup's limit)",
              "the run directory mpibench-<run_id> does not exist yet, and is created"]
    if storage.type == "direct_fs":
        checks.append("O_DIRECT opens and transfers in the run directory; sizes are multiples of the "
                      "direct-I/O alignment (statx STATX_DIOALIGN, else the logical block size, else 4096)")
    return checks


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Command line: `mpibench run|plan|preflight|report|compare|s3-server`.

Exit codes: 0 success, 1 I/O failure during the run, 2 configuration or preflight error,
130 interrupted. Errors are one line on rank 0's stderr; --debug adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import textwrap
import warnings
from typing import Any

from mpibench import __version__
from mpibench.errors import EXIT_IO, MpibenchError

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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subcommand per action."""
    parser = argparse.ArgumentParser(
        prog="mpibench",
        description="MPI-parallel storage benchmark for AI workloads (bandwidth, datagen, train, checkpoint).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes: 0 success, 1 I/O failure during the run, 2 configuration or preflight error, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"mpibench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", metavar="CONFIG.yaml", help="YAML configuration file")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="dotted overrides, e.g. storage.root=/scratch/x bandwidth.transfer_size=4MiB")
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

    for module in _EXTRA_COMMANDS.values():
        helper = _import_command(module)
        if helper is not None:
            helper.add_parser(sub)
    return parser


_EXTRA_COMMANDS = {"report": "mpibench.reporting", "compare": "mpibench.compare",
                   "s3-server": "mpibench.s3server_cli"}


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
    """Entry point of the `mpibench` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in ("run", "plan", "preflight"):
            return _main_mpi(args)
        return int(args.handler(args))
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as other Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    return f"mpibench: warning: {message}\n"


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _main_mpi(args: argparse.Namespace) -> int:
    from mpibench.comm import Comm

    comm = Comm()
    debug = bool(args.debug)
    if not debug:  # a warning is one line, like an error; --debug keeps where it came from
        warnings.formatwarning = _one_line_warning
    # SIGTERM before the run starts ends it like Ctrl-C: preflight undoes what it created.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return _dispatch(args, comm)
    except MpibenchError as exc:
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
        # Ctrl-C outside the run's own graceful handling (loading, preflight): the other
        # ranks may be waiting in a collective for this one, so the whole job is ended.
        if comm.is_root:
            name = exc.args[0] if exc.args else "SIGINT"
            print(f"mpibench: error: interrupted by {name} before the run started; nothing was measured",
                  file=sys.stderr, flush=True)
        if comm.size > 1:
            comm.abort(130)
        return 130
    except BrokenPipeError:
        raise
    except Exception as exc:  # a bug: say so on one line, and never leave other ranks waiting
        from mpibench.run import format_traceback

        if debug:
            print(format_traceback(exc), file=sys.stderr, end="")
        print(f"mpibench: error: rank {comm.rank}: internal error: {type(exc).__name__}: {exc}; "
              "rerun with --debug and report it", file=sys.stderr, flush=True)
        if comm.size > 1:
            comm.abort(EXIT_IO)
        return EXIT_IO


def _dispatch(args: argparse.Namespace, comm: Any) -> int:
    from mpibench.config import load_config
    from mpibench.results import check_output_path
    from mpibench.run import broadcast_outcome, execute

    def load() -> Any:
        config = load_config(args.config, args.overrides)
        if args.command == "run":
            check_output_path(args.output or os.path.join(os.getcwd(), "mpibench-run.json"), args.force)
            if args.csv:
                check_output_path(args.csv, args.force)
        return config

    config = broadcast_outcome(comm, load)
    if args.command == "plan":
        if comm.is_root:
            _print_plan(config, args, comm)
        return 0
    if args.command == "preflight":
        outcome = execute(config, comm, output=None, preflight_only=True)
        if comm.is_root and outcome is not None:
            pre = outcome["preflight"]
            for check in pre["checks"]:
                print(f"ok: {check}")
            for warning in pre["warnings"]:
                print(f"warning: {warning}")
            print("preflight passed")
        return 0
    from mpibench.report import phase_table, run_header

    output = args.output
    if output is None:
        run_id = broadcast_outcome(comm, lambda: config.run_id or _new_run_id())
        import dataclasses

        config = dataclasses.replace(config, run_id=run_id)
        output = f"mpibench-{run_id}.json"
    progress = None
    if comm.is_root and not args.quiet and sys.stderr.isatty():
        from mpibench.progress import ProgressBar

        progress = ProgressBar()
    try:
        document = execute(config, comm, output=output if comm.is_root else None, force=args.force,
                           progress=progress)
    except MpibenchError as exc:
        partial = getattr(exc, "partial_result", None)
        if comm.is_root and partial is not None and not args.quiet:
            print(run_header(partial))
            print(phase_table(partial))
            print(f"partial result (complete: false) written to {output}")
        raise
    if comm.is_root and document is not None:
        if args.csv:
            from mpibench.csvout import write_csv

            write_csv(args.csv, document)
        if not args.quiet:
            print(run_header(document))
            print(phase_table(document))
            print(f"results written to {output}")
    return 0


def _new_run_id() -> str:
    from mpibench.run import new_run_id

    return new_run_id()


def _print_plan(config: Any, args: argparse.Namespace, comm: Any) -> None:
    from mpibench.workloads import get_workload

    size = args.ranks or comm.size
    per_node = args.ranks_per_node or size
    num_nodes = -(-size // per_node)
    workload = get_workload(config.workload)
    show = sorted(set(list(range(min(args.show, size))) + [size - 1]))
    ranks = [workload.describe_plan(config, size, r, per_node, num_nodes) for r in show]
    planned = workload.planned_bytes(config, size)
    checks = _preflight_checks(config)
    plan = {"workload": config.workload, "ranks": size, "ranks_per_node": per_node, "nodes": num_nodes,
            "planned_bytes": planned, "per_rank": ranks, "preflight_checks": checks,
            "totals": workload.describe_plan(config, size, -1, per_node, num_nodes).get("totals", {})
            if hasattr(workload, "describe_totals") else {}}
    if args.json:
        print(json.dumps(plan, indent=1))
        return
    from mpibench.units import format_size

    print(f"workload {config.workload} on {config.storage.type} at {config.storage.root}: "
          f"{size} rank(s), {per_node} per node, {num_nodes} node(s)")
    print(f"peak bytes on storage: {planned} ({format_size(planned)})")
    for r in ranks:
        print(textwrap.indent(json.dumps(r, indent=None), "  "))
    print("preflight will check:")
    for check in checks:
        print(f"  - {check}")


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
              "the run directory mpibench-<run_id> does not exist yet, and is created"]
    if storage.type == "direct_fs":
        checks.append("O_DIRECT opens and transfers in the run directory; sizes are multiples of the "
                      "direct-I/O alignment (statx STATX_DIOALIGN, else the logical block size, else 4096)")
    return checks


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

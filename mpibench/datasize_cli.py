"""`mpibench datasize`: the smallest dataset MLPerf Storage accepts for a cluster (Rules.md 3.1.2)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from mpibench.errors import ConfigError, MpibenchError
from mpibench.units import format_size, parse_size

EXAMPLES = """\
examples:
  mpibench datasize configs/unet3d-b200.yaml --hosts 4 --memory-per-host 1TiB --accelerators-per-host 8
  mpibench datasize configs/retinanet-b200.yaml --hosts 2 --memory-per-host 512GiB \\
      --accelerators-per-host 8 --accelerator mi355

The minimum is the larger of 500 steps of every accelerator's batch and 5 times the hosts'
memory, in whole files of the config's dataset.samples_per_file x record_size bytes, as
mlcommons/storage computes it. The last line is the override to give datagen and train.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `mpibench datasize` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "datasize", help="the minimum dataset MLPerf Storage accepts for your hosts",
        description="Print the smallest dataset (files and bytes) that MLPerf Storage's rules accept for a "
                    "train config on the given hosts, and the dataset.num_files override to use.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", metavar="CONFIG.yaml", help="a train config")
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides")
    parser.add_argument("--hosts", type=int, required=True, help="client hosts running the benchmark")
    parser.add_argument("--memory-per-host", required=True, metavar="SIZE",
                        help="memory of each host, e.g. 512GiB (the rules count binary units)")
    parser.add_argument("--accelerators-per-host", type=int, required=True,
                        help="emulated accelerators (ranks) per host")
    parser.add_argument("--accelerator", choices=("b200", "mi355", "h100", "a100"),
                        help="the emulated accelerator (default: the config's train.accelerator)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.set_defaults(handler=run_datasize)
    return parser


def run_datasize(args: argparse.Namespace) -> int:
    """Handle `mpibench datasize`: load the config and print the minimum."""
    import json

    from mpibench.config import load_config
    from mpibench.mlperf import effective, min_dataset

    try:
        if args.hosts < 1 or args.accelerators_per_host < 1:
            raise ConfigError("--hosts and --accelerators-per-host must be at least 1")
        try:
            memory = parse_size(args.memory_per_host)
        except ValueError as exc:
            raise ConfigError(f"--memory-per-host: {exc}", "give a size such as 512GiB") from None
        if memory < 1:
            raise ConfigError("--memory-per-host must be a positive size", "give a size such as 512GiB")
        config = load_config(args.config, args.overrides)
        tc = config.train
        if args.accelerator:
            tc = dataclasses.replace(tc, accelerator=args.accelerator)
        eff = effective(tc)
        ds = config.dataset
        need = min_dataset(args.hosts, args.hosts * memory, args.hosts * args.accelerators_per_host,
                           eff.batch_size, ds.samples_per_file, ds.record_size)
    except MpibenchError as exc:
        print(f"mpibench: error: {exc.line()}", file=sys.stderr, flush=True)
        return exc.exit_code
    if args.json:
        doc = need.as_dict()
        doc.update(override=f"dataset.num_files={need.num_files}", batch_size_source=eff.batch_source)
        print(json.dumps(doc, indent=1))
        return 0
    print(f"{args.hosts} host(s) x {format_size(memory)} of memory, {args.hosts * args.accelerators_per_host} "
          f"accelerator(s), batch {eff.batch_size} ({eff.batch_source})")
    print(f"dataset: {ds.samples_per_file} sample(s) of {ds.record_size} bytes a file")
    print(f"  500 steps x batch x accelerators: {need.files_by_steps} files")
    print(f"  5 x the hosts' memory:            {need.files_by_memory} files")
    print(f"minimum: {need.num_files} files, {need.total_bytes} bytes ({format_size(need.total_bytes)}), "
          f"set by the {'memory' if need.bound_by == 'memory' else '500-step'} rule")
    print(f"dataset.num_files={need.num_files}")
    return 0

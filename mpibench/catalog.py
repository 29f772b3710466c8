"""`mpibench configs` (the shipped configurations, one line each) and `mpibench keys
[SECTION]` (every configuration key with its default and meaning, from config.py's
field declarations)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

from mpibench.config import SECTIONS, Config
from mpibench.errors import ConfigError
from mpibench.units import format_exact_size

SIZE_KINDS = ("size", "optional_size")


def human_value(kind: str, value: Any) -> str:
    """A configuration value as a user writes it: sizes in binary units (4MiB), None as null."""
    if value is None:
        return "null"
    if kind in SIZE_KINDS and isinstance(value, int) and not isinstance(value, bool):
        return format_exact_size(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def key_kinds() -> dict[str, str]:
    """Every dotted key and the kind its value is read as (size, int, enum, ...)."""
    kinds = {}
    for top in dataclasses.fields(Config):
        if top.name in SECTIONS:
            for sub in dataclasses.fields(SECTIONS[top.name]):
                kinds[f"{top.name}.{sub.name}"] = sub.metadata.get("kind", "")
        else:
            kinds[top.name] = top.metadata.get("kind", "")
    return kinds


def key_rows(section: str | None = None) -> list[tuple[str, str, str]]:
    """(key, default as written, meaning) for every key, or a section's."""
    rows = []
    for top in dataclasses.fields(Config):
        if top.name in SECTIONS:
            fields = [(f"{top.name}.{f.name}", f) for f in dataclasses.fields(SECTIONS[top.name])]
        else:
            fields = [(top.name, top)]
        for name, f in fields:
            if section is not None and name.split(".", 1)[0] != section and not (section == "top" and "." not in name):
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
            meta = f.metadata
            doc = meta.get("doc", "")
            if meta.get("choices"):
                doc += f" [{'|'.join(meta['choices'])}]"
            rows.append((name, human_value(meta.get("kind", ""), default), doc))
    return rows


def configs_dir() -> Path | None:
    """The configs/ folder of the source tree mpibench runs from, else ./configs, else None."""
    for candidate in (Path(__file__).resolve().parents[1] / "configs", Path.cwd() / "configs"):
        if candidate.is_dir():
            return candidate
    return None


def describe_config(path: Path) -> tuple[str, str]:
    """A shipped configuration's workload and the first sentence of its leading comment."""
    comment, workload = [], "?"
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and workload == "?" and not line.lstrip("# ").startswith(("mpibench ", "mpiexec ", "srun ")):
            comment.append(line.lstrip("#").strip())
        match = re.match(r"workload:\s*(\w+)", line)
        if match:
            workload = match.group(1)
    text = " ".join(comment)
    sentence = re.split(r"(?<=[.;])\s", text, maxsplit=1)[0].rstrip(".;")
    return workload, textwrap.shorten(sentence, 110, placeholder=" ...")


def run_configs(args: argparse.Namespace) -> int:
    """Print one line per shipped configuration."""
    folder = configs_dir()
    if folder is None:
        raise ConfigError("no configs/ folder found beside mpibench or in the current directory",
                          "run from the source tree, where configs/ holds one YAML file per workload")
    paths = sorted(folder.glob("*.yaml"))
    width = max((len(p.name) for p in paths), default=0)
    rel = os.path.relpath(folder)
    rel = str(folder) if rel.startswith("..") else rel
    print(f"configurations in {rel}/ (mpibench run {rel}/NAME [KEY=VALUE ...]):")
    for path in paths:
        workload, about = describe_config(path)
        print(f"  {path.name:<{width}}  {workload:<10}  {about}")
    return 0


def run_keys(args: argparse.Namespace) -> int:
    """Print every key (or a section's) with its default and meaning."""
    sections = [*SECTIONS, "top"]
    if args.section is not None and args.section not in sections:
        import difflib

        close = difflib.get_close_matches(args.section, sections, n=1)
        raise ConfigError(f"no configuration section '{args.section}'",
                          (f"did you mean '{close[0]}'? " if close else "") + f"sections: {', '.join(sections)}")
    rows = key_rows(args.section)
    key_width = max(len(r[0]) for r in rows)
    default_width = min(24, max(len(r[1]) for r in rows))
    for key, default, doc in rows:
        print(f"{key:<{key_width}}  {default:<{default_width}}  {doc}")
    return 0


def _handled(run: Any) -> Any:
    def handler(args: argparse.Namespace) -> int:
        try:
            return int(run(args))
        except ConfigError as exc:
            print(f"mpibench: error: {exc.line()}", file=sys.stderr)
            return exc.exit_code
    return handler


def add_parser(subparsers: Any) -> None:
    """Register `configs` and `keys` (each once)."""
    if "configs" not in subparsers.choices:
        p = subparsers.add_parser("configs", help="list the shipped configurations, one line each",
                                  description="List the configurations in configs/ with their workload and purpose.")
        p.set_defaults(handler=_handled(run_configs))
    if "keys" not in subparsers.choices:
        p = subparsers.add_parser("keys", help="list every configuration key with its default and meaning",
                                  description="List every configuration key (dotted, as overrides take them) with "
                                              "its default and meaning; SECTION limits it to one section "
                                              "(storage, io, bandwidth, dataset, train, checkpoint, metrics, or top).")
        p.add_argument("section", nargs="?", metavar="SECTION", help="one section only")
        p.set_defaults(handler=_handled(run_keys))

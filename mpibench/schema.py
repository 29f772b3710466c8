"""The JSON Schema (draft 2020-12) of the results document, and validation against it.

`python -m mpibench.schema RESULT.json ...` checks files from the command line.
"""

from __future__ import annotations

import functools
import json
import sys
from importlib import resources
from typing import Any

from mpibench.errors import MpibenchError, ResultsError
from mpibench.schema_versions import SCHEMA_VERSION


@functools.cache
def load_schema() -> dict[str, Any]:
    """The results schema shipped with the package (schema.json)."""
    text = resources.files("mpibench").joinpath("schema.json").read_text(encoding="utf-8")
    return json.loads(text)


@functools.cache
def _validator() -> Any:
    try:
        import jsonschema
    except ImportError:
        raise ResultsError("cannot validate results: the jsonschema package is not installed",
                           "pip install jsonschema") from None
    schema = load_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validation_errors(document: Any) -> list[str]:
    """Every place where `document` breaks the schema, as 'path: message' lines (empty when valid)."""
    errors = sorted(_validator().iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_path(e.absolute_path)}: {e.message}" for e in errors]


def validate_document(document: Any, ranks_per_phase: int | None = None) -> None:
    """Raise ResultsError naming the first place where `document` breaks the results schema.

    With `ranks_per_phase`, only that many rank records of each phase are checked (half
    from the start, half from the end): checking every record of a large run takes about
    a millisecond per rank and phase.
    """
    validator = _validator()
    from jsonschema.exceptions import best_match

    checked, kept = _sampled(document, ranks_per_phase)
    error = best_match(validator.iter_errors(checked))
    if error is not None:
        parts = list(error.absolute_path)
        if len(parts) >= 4 and parts[0] == "phases" and parts[2] == "ranks" and kept:
            parts[3] = kept[parts[1]][parts[3]]
        message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
        raise ResultsError(f"results document does not match schema version {SCHEMA_VERSION} at {_path(parts)}: {message}",
                           "was it written by mpibench run, or edited by hand?")


def _sampled(document: Any, ranks_per_phase: int | None) -> tuple[Any, dict[int, list[int]]]:
    """A shallow copy with at most `ranks_per_phase` ranks per phase, and the indices kept."""
    if ranks_per_phase is None or not isinstance(document, dict) or not isinstance(document.get("phases"), list):
        return document, {}
    head = (ranks_per_phase + 1) // 2
    tail = ranks_per_phase - head
    phases = []
    kept: dict[int, list[int]] = {}
    for i, phase in enumerate(document["phases"]):
        ranks = phase.get("ranks") if isinstance(phase, dict) else None
        if not isinstance(ranks, list) or len(ranks) <= ranks_per_phase:
            phases.append(phase)
            kept[i] = list(range(len(ranks))) if isinstance(ranks, list) else []
            continue
        indices = list(range(head)) + list(range(len(ranks) - tail, len(ranks)))
        phases.append({**phase, "ranks": [ranks[j] for j in indices]})
        kept[i] = indices
    return {**document, "phases": phases}, kept


def _path(parts: Any) -> str:
    text = "/".join(str(p) for p in parts)
    return text or "(top level)"


def main(argv: list[str] | None = None) -> int:
    """Validate results files; print 'ok' or every schema violation of each."""
    from mpibench.results import load_results

    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m mpibench.schema RESULT.json [...]", file=sys.stderr)
        return 2
    status = 0
    for path in paths:
        try:
            problems = validation_errors(load_results(path))
        except MpibenchError as exc:
            print(f"mpibench: error: {exc.line()}", file=sys.stderr)
            status = 2
            continue
        if problems:
            status = 2
            for line in problems:
                print(f"{path}: {line}")
        else:
            print(f"{path}: ok")
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The results JSON Schema: a real run validates, broken documents say where they break."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from test_report import small_run

from mpibench.errors import ResultsError
from mpibench.results import SCHEMA_VERSION
from mpibench.schema import load_schema, validate_document, validation_errors


@pytest.fixture(scope="module")
def result_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_run(tmp_path_factory, "schema")


@pytest.fixture(scope="module")
def document(result_path: Path) -> dict[str, Any]:
    return json.loads(result_path.read_text())


def test_schema_is_valid_draft_2020_12_and_package_data():
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert resources.files("mpibench").joinpath("schema.json").is_file()
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION


def test_real_run_validates(document):
    assert validation_errors(document) == []
    validate_document(document)
    validate_document(document, ranks_per_phase=1)


def test_top_level_is_open_but_core_keys_required(document):
    extended = dict(document, checkpoint_summary={"anything": 1})
    validate_document(extended)
    for key in ("schema_version", "run_id", "complete", "phases", "summary", "config", "environment"):
        broken = {k: v for k, v in document.items() if k != key}
        with pytest.raises(ResultsError, match=f"'{key}' is a required property"):
            validate_document(broken)
    with pytest.raises(ResultsError, match="schema_version"):
        validate_document(dict(document, schema_version=SCHEMA_VERSION + 1))


def test_errors_name_the_place(document):
    broken = copy.deepcopy(document)
    broken["phases"][1]["ranks"][1]["series_bytes"][0] = -5
    with pytest.raises(ResultsError, match=r"at phases/1/ranks/1/series_bytes/0: -5 is less than the minimum"):
        validate_document(broken)
    assert any(line.startswith("phases/1/ranks/1/series_bytes/0") for line in validation_errors(broken))
    # Sampling keeps the first and last ranks; the reported index is the real one.
    wide = copy.deepcopy(document)
    ranks = wide["phases"][0]["ranks"]
    wide["phases"][0]["ranks"] = [dict(ranks[0], rank=i) for i in range(40)]
    wide["phases"][0]["ranks"][38]["host"] = 7
    with pytest.raises(ResultsError, match=r"phases/0/ranks/38/host"):
        validate_document(wide, ranks_per_phase=4)


def test_module_command(tmp_path, result_path, document):
    ok = subprocess.run([sys.executable, "-m", "mpibench.schema", str(result_path)], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == f"{result_path}: ok"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(document, complete="yes")))
    done = subprocess.run([sys.executable, "-m", "mpibench.schema", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2 and "complete: 'yes' is not of type 'boolean'" in done.stdout


def test_workload_fields_of_phases_and_ranks(document):
    """The fields the workloads add: fresh_files (bandwidth write phases), compute_s,
    compute_measured_s and file_index_hash (train ranks) are checked where present."""
    extended = copy.deepcopy(document)
    extended["phases"][0]["fresh_files"] = True
    extended["phases"][0]["ranks"][0].update(compute_s=0.5, compute_measured_s=0.56,
                                             file_index_hash="0123456789abcdef")
    validate_document(extended)
    for where, key, value, fragment in [
            ((), "fresh_files", "yes", "'yes' is not of type 'boolean'"),
            (("ranks", 0), "compute_measured_s", -1.0, "less than the minimum"),
            (("ranks", 0), "file_index_hash", 12345, "is not of type 'string'"),
            (("ranks", 0), "file_index_hash", "0123456789ABCDEF", "does not match")]:
        broken = copy.deepcopy(extended)
        target = broken["phases"][0]
        for step in where:
            target = target[step]
        target[key] = value
        with pytest.raises(ResultsError, match=fragment):
            validate_document(broken)


def test_cache_device_write_bytes(document):
    flagged = copy.deepcopy(document)
    flagged["phases"][0]["cache"] = {"state": "buffered", "method": "page cache", "device_write_bytes": None,
                                     "warning": "write phase on local_fs without fsync: ..."}
    validate_document(flagged)
    flagged["phases"][0]["cache"]["device_write_bytes"] = 4096
    validate_document(flagged)
    flagged["phases"][0]["cache"]["device_write_bytes"] = -1
    with pytest.raises(ResultsError, match="phases/0/cache"):
        validate_document(flagged)


def test_every_version_has_its_history_and_a_migration():
    """schema_versions.py and docs/results.md name every version; each older one has the
    migration the loader applies to reach the next."""
    from pathlib import Path

    from mpibench.schema_versions import HISTORY, MIGRATIONS

    assert sorted(HISTORY) == list(range(1, SCHEMA_VERSION + 1))
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION))
    table = (Path(__file__).resolve().parent.parent / "docs" / "results.md").read_text(encoding="utf-8")
    for version in HISTORY:
        assert f"\n| {version} | " in table

"""Fuzzing the configuration (issue #7, case 6): whatever the YAML and the overrides hold,
loading gives a valid Config or a ConfigError with a message, never another exception.

A Config that loads must also be usable: it serialises to strict JSON (it is embedded in
every results file) and the workload can plan it for a few ranks without an error other
than ConfigError. Everything runs in-process, in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpibench.config import SECTIONS, Config, build_config, load_config
from mpibench.errors import ConfigError
from mpibench.workloads import get_workload

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOP_KEYS = [f.name for f in dataclasses.fields(Config) if f.name not in SECTIONS]
SECTION_KEYS = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in SECTIONS.items()}
DOTTED_KEYS = TOP_KEYS + [f"{s}.{k}" for s, keys in SECTION_KEYS.items() for k in keys]

# Values YAML can produce, with the awkward ones made likely: sizes with and without
# units, negative and huge numbers, NaN and infinity, empty and unicode strings.
SIZE_TEXT = st.builds(lambda n, unit: f"{n}{unit}", st.integers(-5, 2**70),
                      st.sampled_from(["", "B", "k", "KiB", "MiB", "GiB", "TiB", "MB", "XB", " MiB", ".5MiB"]))
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-3, 5),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    SIZE_TEXT, st.sampled_from(["auto", "s3://bucket/prefix", "/tmp/x", "direct_fs", "local_fs", "s3",
                                "bandwidth", "checkpoint", "train", "datagen", "llama3-8b", "shared"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


def _section(name: str) -> st.SearchStrategy:
    keys = st.sampled_from(SECTION_KEYS[name]) | st.text(max_size=10)
    return st.dictionaries(keys, VALUES, max_size=6) | VALUES


ROOTS = st.sampled_from(["/tmp/mpibench-fuzz", "s3://b/p", "file:///tmp/x", ""]) | VALUES
STORAGE = st.fixed_dictionaries(
    {"root": ROOTS},
    optional={key: st.sampled_from(["local_fs", "direct_fs", "s3", "native", "s3dlio"]) | VALUES
              for key in SECTION_KEYS["storage"] if key != "root"},
) | _section("storage")
MAPPINGS = st.fixed_dictionaries(
    {"storage": STORAGE},
    optional={
        "workload": st.sampled_from(["bandwidth", "datagen", "train", "checkpoint"]) | VALUES,
        **{name: _section(name) for name in SECTIONS if name != "storage"},
        **{key: VALUES for key in TOP_KEYS if key != "workload"},
    },
) | st.dictionaries(st.one_of(st.text(max_size=10), st.integers(), st.none(), st.booleans()),
                    VALUES, max_size=5)

OVERRIDES = st.lists(
    st.builds(lambda key, value: f"{key}={value}", st.sampled_from(DOTTED_KEYS) | st.text(max_size=12),
              st.text(max_size=16) | SIZE_TEXT | st.sampled_from([".nan", ".inf", "-.inf", "1e400", "[1, 2]",
                                                                   "{a: 1}", "null", "~", "true", "0"]))
    | st.text(max_size=20),
    max_size=4,
)


def _check_usable(config: Config) -> None:
    """An accepted Config goes into every results file and is planned on rank 0."""
    json.dumps(config.to_dict(), allow_nan=False)
    for value in _numbers(config.to_dict()):
        assert math.isfinite(value), config
    workload = get_workload(config.workload)
    for size in (1, 3):
        try:
            workload.check(config, size, 1)
            planned = workload.planned_bytes(config, size)
            workload.describe_plan(config, size, size - 1, size, 1)
        except ConfigError as exc:
            assert exc.line()
            return
        assert isinstance(planned, int) and planned >= 0


def _numbers(value: object):
    if isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, float):
        yield value


def _outcome(produce) -> Config | ConfigError:
    try:
        config = produce()
    except ConfigError as exc:
        assert exc.line().strip(), "a ConfigError without a message"
        assert "\n" not in exc.line(), exc.line()
        return exc
    assert isinstance(config, Config)
    _check_usable(config)
    return config


def _keys_of_kind(*kinds: str) -> list[str]:
    found = [f.name for f in dataclasses.fields(Config) if f.metadata.get("kind") in kinds]
    for name, cls in SECTIONS.items():
        found += [f"{name}.{f.name}" for f in dataclasses.fields(cls) if f.metadata.get("kind") in kinds]
    return found


NUMBER_KEYS = _keys_of_kind("float", "int", "optional_int", "int_or_auto", "size", "optional_size")


@FUZZ
@given(st.sampled_from(NUMBER_KEYS),
       st.floats() | st.integers() | st.sampled_from([".nan", ".inf", "-.inf", "1e400", "-0", "1.5", "2**64"]))
def test_numeric_keys_take_only_finite_numbers(key, value):
    outcome = _outcome(lambda: build_config({"storage": {"root": "/tmp/mpibench-fuzz"}}, [f"{key}={value}"]))
    if isinstance(value, float) and not math.isfinite(value):
        assert isinstance(outcome, ConfigError)


@FUZZ
@given(MAPPINGS, OVERRIDES)
def test_build_config_gives_a_config_or_a_config_error(data, overrides):
    _outcome(lambda: build_config(data, overrides))


@FUZZ
@given(st.dictionaries(st.sampled_from(DOTTED_KEYS), SIZE_TEXT | SCALARS, max_size=5))
def test_overrides_of_known_keys(values):
    base = {"workload": "bandwidth", "storage": {"type": "direct_fs", "root": "/tmp/mpibench-fuzz"},
            "bandwidth": {"transfer_size": "1MiB", "block_size": "4MiB"}}
    overrides = [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
                 for key, value in values.items()]
    _outcome(lambda: build_config(base, overrides))


@FUZZ
@given(st.text(max_size=200) | st.builds(yaml.safe_dump, MAPPINGS), OVERRIDES)
def test_load_config_from_any_file_text(text, overrides):
    fd, path = tempfile.mkstemp(suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        _outcome(lambda: load_config(path, overrides))
    finally:
        os.unlink(path)


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=64))
def test_load_config_from_bytes_that_are_not_utf8(raw):
    fd, path = tempfile.mkstemp(suffix=".yaml")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
        _outcome(lambda: load_config(path, []))
    finally:
        os.unlink(path)

"""Configuration loading and validation: every rule that needs no storage."""

import dataclasses
import os

import pytest
import yaml

from mpibench.config import Config, build_config, describe_keys, load_config, parse_override
from mpibench.errors import ConfigError

BASE = {"workload": "bandwidth", "storage": {"type": "direct_fs", "root": "/tmp/x"}}


def build(*overrides, base=None):
    return build_config(dict(base or BASE), list(overrides))


def test_defaults_and_overrides():
    cfg = build("bandwidth.transfer_size=4MiB", "bandwidth.block_size=1GiB", "bandwidth.iterations=5",
                "bandwidth.fsync=false", "storage.library=s3dlio")
    assert isinstance(cfg, Config)
    assert cfg.bandwidth.transfer_size == 4 * 2**20
    assert cfg.bandwidth.block_size == 2**30
    assert cfg.bandwidth.iterations == 5
    assert cfg.bandwidth.fsync is False
    assert cfg.storage.library == "s3dlio"
    assert cfg.bandwidth.io_depth == "auto"
    assert cfg.to_dict()["bandwidth"]["transfer_size"] == 4 * 2**20


def test_config_is_frozen():
    cfg = build()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.workload = "train"  # type: ignore[misc]


@pytest.mark.parametrize("override, fragment", [
    ("bandwidth.trasfer_size=4MiB", "did you mean 'transfer_size'"),
    ("storage.rot=/x", "did you mean 'root'"),
    ("workloda=train", "did you mean 'workload'"),
    ("bandwith.block_size=1", "did you mean 'bandwidth'"),
])
def test_unknown_keys_suggest(override, fragment):
    with pytest.raises(ConfigError) as info:
        build(override)
    assert fragment in info.value.line()
    assert "valid keys" in info.value.line()


@pytest.mark.parametrize("override, fragment", [
    ("bandwidth.iterations=many", "must be an integer"),
    ("bandwidth.iterations=0", "at least 1"),
    ("bandwidth.fsync=yes please", "true or false"),
    ("bandwidth.transfer_size=0", "positive size"),
    ("bandwidth.transfer_size=-4KiB", "cannot read size"),
    ("bandwidth.block_size=12XB", "unknown size unit"),
    ("bandwidth.file_mode=sharde", "did you mean 'shared'"),
    ("storage.type=nfs", "must be one of local_fs, direct_fs, s3"),
    ("bandwidth.block_size=1000000", "not a multiple of bandwidth.transfer_size"),
    ("bandwidth.io_depth=0", "at least 1"),
    ("bandwidth.io_depth=deep", "or 'auto'"),
])
def test_bad_values(override, fragment):
    with pytest.raises(ConfigError) as info:
        build(override)
    assert fragment in info.value.line()


def test_s3_needs_bucket_root():
    for root in ("/x", "file:///x", "direct:///x", "./data"):
        with pytest.raises(ConfigError) as info:
            build("storage.type=s3", f"storage.root={root}")
        assert info.value.line() == ("storage.type=s3 needs an s3://bucket/prefix root; "
                                     "for a local directory use local_fs or direct_fs")
    cfg = build("storage.type=s3", "storage.root=s3://bucket/prefix")
    assert cfg.storage.root == "s3://bucket/prefix"
    with pytest.raises(ConfigError, match="names no bucket"):
        build("storage.type=s3", "storage.root=s3:///prefix")


@pytest.mark.parametrize("kind", ["local_fs", "direct_fs"])
def test_local_types_reject_s3_root(kind):
    with pytest.raises(ConfigError) as info:
        build(f"storage.type={kind}", "storage.root=s3://bucket/p")
    assert "needs a local directory" in info.value.line()
    assert "storage.type=s3" in info.value.line()


def test_misc_rules():
    with pytest.raises(ConfigError, match="storage.root is not set"):
        build_config({"workload": "bandwidth"})
    with pytest.raises(ConfigError, match="applies to direct_fs only"):
        build("storage.type=local_fs", "storage.library=s3dlio")
    with pytest.raises(ConfigError, match="not a plain name"):
        build("run_id=../escape")
    with pytest.raises(ConfigError, match="object_size applies to storage.type=s3"):
        build("bandwidth.object_size=1MiB")
    with pytest.raises(ConfigError, match="must be a mapping"):
        build_config({"workload": "bandwidth", "storage": [1, 2]})
    with pytest.raises(ConfigError, match="not a dotted key"):
        build("storage..root=/x")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        build("storage.root")


def test_override_value_types():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a.b=true") == ("a.b", True)
    assert parse_override("a.b=4MiB") == ("a.b", "4MiB")
    assert parse_override("a.b=[x, y]") == ("a.b", ["x", "y"])
    assert parse_override("a.b=") == ("a.b", "")
    assert parse_override("a.b=http://h:1/x") == ("a.b", "http://h:1/x")


def test_yaml_files(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(BASE))
    assert load_config(str(good), ["bandwidth.iterations=2"]).bandwidth.iterations == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("workload: bandwidth\nstorage:\n  type: [direct_fs\n")
    with pytest.raises(ConfigError, match="is not valid YAML at line"):
        load_config(str(bad))
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(str(listy))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))


def test_every_shipped_config_loads():
    configs = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")
    names = sorted(n for n in os.listdir(configs) if n.endswith(".yaml"))
    assert "quickstart.yaml" in names and "bandwidth.yaml" in names
    for name in names:
        cfg = load_config(os.path.join(configs, name))
        assert cfg.storage.root


def test_reference_lists_every_key():
    keys = {row[0] for row in describe_keys()}
    assert {"storage.type", "storage.root", "bandwidth.transfer_size", "bandwidth.io_depth",
            "dataset.num_files", "train.epochs", "checkpoint.model", "keep_files", "verify"} <= keys

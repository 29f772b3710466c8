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
    assert cfg.io.depth == "auto"
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
    ("bandwidth.overwrit=true", "did you mean 'overwrite'"),
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
    ("io.depth=0", "at least 1"),
    ("io.depth=deep", "or 'auto'"),
])
def test_bad_values(override, fragment):
    with pytest.raises(ConfigError) as info:
        build(override)
    assert fragment in info.value.line()


@pytest.mark.parametrize(("old", "new", "value"), [("bandwidth.io_depth", "io.depth", 4),
                                                     ("bandwidth.io_engine", "io.engine", "threads")])
def test_moved_keys_name_their_new_place(tmp_path, old, new, value):
    """A key that moved to the shared io: section is refused with one line naming where it
    went, given in a YAML file or as an override; the new key takes the value."""
    with pytest.raises(ConfigError) as info:
        build(f"{old}={value}")
    assert info.value.line() == f"{old} moved to {new}"
    section, key = old.split(".")
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({**BASE, section: {"transfer_size": "1MiB", key: value}}))
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.line().endswith(f"{old} moved to {new}") and "\n" not in info.value.line()
    cfg = build(f"{new}={value}")
    assert getattr(cfg.io, new.split(".")[1]) == value


def test_null_storage_needs_no_root_and_keeps_no_data():
    """storage.type=null (also a bare YAML null) needs no root; what reads data back and
    looks at it is refused with one line: it would check bytes that were never stored."""
    cfg = build_config({"workload": "bandwidth", "storage": {"type": None}})
    assert cfg.storage.type == "null" and cfg.storage.root == ""
    assert build("storage.type=null").storage.type == "null"
    for overrides, fragment in ((["verify=true"], "verify needs storage that keeps data"),
                                (["workload=checkpoint", "checkpoint.verify=true"], "verify needs storage"),
                                (["workload=train"], "workload train reads its dataset's manifest back"),
                                (["workload=datagen"], "workload datagen reads its dataset's manifest back")):
        with pytest.raises(ConfigError) as info:
            build("storage.type=null", *overrides)
        assert fragment in info.value.line() and "storage.type=null keeps none" in info.value.line()


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
    assert {"storage.type", "storage.root", "bandwidth.transfer_size", "io.depth",
            "dataset.num_files", "train.epochs", "checkpoint.model", "keep_files", "verify"} <= keys


def test_duplicate_keys_are_refused(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("workload: bandwidth\nstorage:\n  root: /tmp/x\nbandwidth:\n  block_size: 1MiB\n"
                    "  transfer_size: 4KiB\n  block_size: 2MiB\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.line() == (f"config file {path}: configuration key 'block_size' is given twice in the "
                                 "same mapping (line 5 and line 7); keep one of them")
    path.write_text("workload: bandwidth\nstorage:\n  root: /tmp/x\nworkload: train\n")
    with pytest.raises(ConfigError, match="'workload' is given twice"):
        load_config(str(path))
    path.write_text("storage: &s\n  root: /tmp/x\nbandwidth:\n  block_size: 1MiB\n  transfer_size: 4KiB\n")
    assert load_config(str(path)).bandwidth.block_size == 2**20  # anchors and plain files still load


def test_yaml11_number_strings_are_numbers(tmp_path):
    # YAML 1.1 reads 1e-9 (no dot) as a string: it is a number where one is expected.
    with pytest.raises(ConfigError) as info:
        build("metrics.interval=1e-9")
    assert info.value.line() == "configuration key 'metrics.interval' must be at least 0.01, got 1e-09"
    assert build("metrics.interval=5E-1").metrics.interval == 0.5
    assert build("workload=checkpoint", "checkpoint.scale=1e-3").checkpoint.scale == 1e-3
    with pytest.raises(ConfigError, match=r"checkpoint.scale. must be at most 1, got 2.0"):
        build("workload=checkpoint", "checkpoint.scale=2e0")
    for text in ("fast", "1e", "inf", "nan", "0x1p-3"):
        with pytest.raises(ConfigError, match="must be a number"):
            build(f"metrics.interval={text}")
    path = tmp_path / "c.yaml"
    path.write_text("storage:\n  root: /tmp/x\nmetrics:\n  interval: 2e0\n")
    assert load_config(str(path)).metrics.interval == 2.0


@pytest.mark.parametrize("rid, fragment", [
    ("r" * 129, "run_id is 129 characters long, more than 128; use a run_id of at most 128 characters"),
    ("r" * 300, "run_id is 300 characters long"),
    ("a b", "is not a plain name; use 1 to 128 letters, digits, '-', '_' and '.'"),
    ("..", "is not a plain name"),
    (".", "is not a plain name"),
    ("x/y", "is not a plain name"),
    ("", "is not a plain name"),
    ("caf\u00e9", "is not a plain name"),
])
def test_run_id_rules(rid, fragment):
    with pytest.raises(ConfigError) as info:
        build(f"run_id={rid}" if rid else "run_id=''")
    assert fragment in info.value.line()


def test_good_run_ids():
    for rid in ("r" * 128, "2026-01-01_a.b", "x"):
        assert build(f"run_id={rid}").run_id == rid


def test_nul_bytes_are_refused():
    for key in ("storage.root", "dataset.name", "run_id", "storage.endpoint"):
        data = {"workload": "bandwidth", "storage": {"type": "s3", "root": "s3://b/p"}}
        section, _, name = key.rpartition(".")
        (data.setdefault(section, {}) if section else data)[name] = "a\0b"
        with pytest.raises(ConfigError) as info:
            build_config(data)
        assert info.value.line().startswith(f"configuration key '{key}' holds a NUL byte")
        assert "\0" not in info.value.line()
    with pytest.raises(ConfigError, match="'storage.endpoints' holds a NUL byte"):
        build("storage.type=s3", "storage.root=s3://b/p", "storage.endpoints=[\"http://a\\0:1\"]")


def test_compression_only_where_the_format_compresses():
    with pytest.raises(ConfigError) as info:
        build("workload=datagen", "dataset.format=npz", "dataset.compression=gzip")
    assert info.value.line() == ("dataset.compression=gzip applies to dataset.format=hdf5 only, not npz; "
                                 "set dataset.compression=none, or dataset.format=hdf5")
    with pytest.raises(ConfigError, match="not raw"):
        build("workload=train", "dataset.format=raw", "dataset.compression=lzf")
    assert build("workload=datagen", "dataset.format=hdf5", "dataset.compression=gzip").dataset.compression == "gzip"


def test_endpoints_only_for_s3():
    for kind in ("local_fs", "direct_fs"):
        with pytest.raises(ConfigError) as info:
            build(f"storage.type={kind}", "storage.endpoints=http://a:1,http://b:1")
        assert info.value.line() == (f"storage.endpoints applies to storage.type=s3 only, not {kind}; remove "
                                     "storage.endpoints, or set storage.type=s3 with an s3://bucket/prefix root")
        with pytest.raises(ConfigError, match="storage.endpoint applies to storage.type=s3 only"):
            build(f"storage.type={kind}", "storage.endpoint=http://a:1")
        with pytest.raises(ConfigError, match="storage.sign_payload applies to storage.type=s3 only"):
            build(f"storage.type={kind}", "storage.sign_payload=false")
        assert build(f"storage.type={kind}", "storage.sign_payload=true").storage.sign_payload  # the default
    cfg = build("storage.type=s3", "storage.root=s3://b/p", "storage.endpoints=http://a:1,http://b:1")
    assert cfg.storage.endpoints == ["http://a:1", "http://b:1"]
    assert build("storage.type=s3", "storage.root=s3://b/p", "storage.sign_payload=false").storage.sign_payload is False


def test_alignment_hint_names_each_size_once():
    from mpibench.workloads.bandwidth import check_alignment

    cases = {(256, 512): "use a multiple of 512 such as 512 or 4KiB",
             (1000, 4096): "use a multiple of 4096 such as 4KiB or 8KiB",
             (1000, 512): "use 512 or 1KiB",
             (5000, 4096): "use 4KiB or 8KiB"}
    for (value, alignment), hint in cases.items():
        with pytest.raises(ConfigError) as info:
            check_alignment("bandwidth.transfer_size", value, alignment)
        assert info.value.hint == hint


def test_bandwidth_overwrite_is_a_checked_files_only_option():
    """bandwidth.overwrite (IOR -k): off by default, a boolean, and refused on s3, where a PUT
    replaces the whole object and no iteration could overwrite in place."""
    assert build().bandwidth.overwrite is False
    assert build("bandwidth.overwrite=true").bandwidth.overwrite is True
    with pytest.raises(ConfigError, match="'bandwidth.overwrite' must be true or false"):
        build("bandwidth.overwrite=sometimes")
    s3 = {"workload": "bandwidth", "storage": {"type": "s3", "root": "s3://bucket/prefix"}}
    assert build(base=s3).bandwidth.overwrite is False
    with pytest.raises(ConfigError, match="bandwidth.overwrite applies to files only") as info:
        build("bandwidth.overwrite=true", base=s3)
    assert "local_fs or direct_fs" in info.value.line()


S3_BASE = {"workload": "bandwidth", "storage": {"type": "s3", "root": "s3://bench/x"}}


@pytest.mark.parametrize("overrides, cpus, ranks, expected", [
    # One object per transfer: as many workers as PUTs/GETs in flight, at most the CPUs per rank.
    (["io.depth=1"], 16, 1, 1),
    (["io.depth=8"], 16, 1, 8),
    (["io.depth=16"], 16, 4, 4),
    (["io.depth=auto"], 16, 2, 8),
    # One object per block: each stream is a multipart upload with parts_in_flight parts on the way.
    (["io.depth=1", "bandwidth.object_size=null", "storage.parts_in_flight=3"], 16, 1, 3),
    (["workload=train", "train.read_threads=2"], 16, 1, 2),
    (["workload=datagen"], 16, 1, 1),
    (["storage.threads=3", "io.depth=1"], 16, 1, 3),  # set by the user: kept
    # direct:// files through s3dlio: the CPUs per rank, whatever the depth.
    (["storage.type=direct_fs", "storage.root=/tmp/x", "storage.library=s3dlio", "bandwidth.object_size=null",
      "io.depth=1"], 16, 2, 8),
])
def test_runtime_threads_auto_follow_the_requests_in_flight(overrides, cpus, ranks, expected):
    """storage.threads auto: the node's usable CPUs over its ranks, but on S3 never more
    s3dlio workers than the rank has requests in flight (more only pass requests between
    threads); direct:// keeps the CPUs per rank."""
    from mpibench.comm import NodeLayout
    from mpibench.run import rank_threads

    base = {**S3_BASE, "bandwidth": {"transfer_size": "1MiB", "object_size": "1MiB", "block_size": "64MiB"}}
    layout = NodeLayout(host="n0", node_index=0, num_nodes=1, local_rank=0, local_size=ranks,
                        ranks_per_node=[ranks], hosts=["n0"], usable_cpus=cpus)
    assert rank_threads(build(*overrides, base=base), layout) == expected

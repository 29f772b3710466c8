"""MLPerf Storage shapes: accelerator timings, the datasize rule, the run protocol, and the
JPEG, TFRecord and Parquet files read back by readers that are not mpibench's."""

from __future__ import annotations

import json
import os
import struct

import google_crc32c  # another CRC32C implementation than the one datagen uses (crc32c)
import numpy as np
import pytest
from conftest import CONFIGS, run_cli

from mpibench import formats
from mpibench import mlperf_formats as mf
from mpibench.backends.posix import DirectFsBackend
from mpibench.config import build_config, load_config
from mpibench.errors import ConfigError, VerifyError
from mpibench.mlperf import (
    COLUMN_SETS,
    SHAPES,
    effective,
    min_dataset,
    row_bytes,
    run_verdicts,
    timing_of,
)

GIB = 2**30


def dataset(root: str = "/tmp/unused", workload: str = "datagen", **keys: object):
    return build_config({"workload": workload, "storage": {"type": "local_fs", "root": root},
                         "dataset": {"name": "d", **keys}}).dataset


def train(**keys: object):
    return build_config({"workload": "train", "storage": {"type": "local_fs", "root": "/tmp/x"},
                         "train": keys}).train


# hosts, memory of all hosts, accelerators, batch, samples per file, record bytes ->
# files for 500 steps, files for 5 x memory, minimum files, minimum bytes (worked by hand:
# ceil(500 x accelerators x batch / samples per file), ceil(5 x memory / file bytes)).
DATASIZE_CASES = [
    # resnet50 on one small host: 1,600,000 / 1251 = 1278.98 -> 1279 files; 5 GiB / 143,439,660 -> 38
    ((1, 1 * GIB, 8, 400, 1251, 114660), (1279, 38, 1279, 1279 * 1251 * 114660)),
    # unet3d b200, 4 hosts of 1 TiB: 20 TiB / 146,600,628 = 150,000.06 -> 150,001 files
    ((4, 4 * 1024 * GIB, 8, 7, 1, 146600628), (28000, 150001, 150001, 150001 * 146600628)),
    # an exact division is not rounded up: 1000 GiB of 1 GiB files
    ((1, 200 * GIB, 1, 1, 1, GIB), (500, 1000, 1000, 1000 * GIB)),
    # dlrm b200: 65,536,000 / 4,718,592 = 13.9 -> 14; 3840 GiB / 3,590,848,512 = 1148.2 -> 1149
    ((1, 768 * GIB, 8, 16384, 4718592, 761), (14, 1149, 1149, 1149 * 4718592 * 761)),
    # retinanet mi355, 2 hosts of 512 GiB: 5 TiB / 322,957 = 17,022,569.96 -> 17,022,570
    ((2, 1024 * GIB, 16, 32, 1, 322957), (256000, 17022570, 17022570, 17022570 * 322957)),
]


@pytest.mark.parametrize("inputs,expected", DATASIZE_CASES)
def test_datasize_follows_the_rules_formula(inputs, expected):
    need = min_dataset(*inputs)
    assert (need.files_by_steps, need.files_by_memory, need.num_files, need.total_bytes) == expected
    assert need.bound_by == ("memory" if expected[1] > expected[0] else "steps")


def test_datasize_command_prints_the_override():
    done = run_cli(0, "datasize", os.path.join(CONFIGS, "unet3d-b200.yaml"), "--hosts", "4",
                   "--memory-per-host", "1TiB", "--accelerators-per-host", "8")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "dataset.num_files=150001"
    assert "minimum: 150001 files, 21990240800628 bytes" in done.stdout
    done = run_cli(0, "datasize", os.path.join(CONFIGS, "retinanet-b200.yaml"), "--hosts", "2",
                   "--memory-per-host", "512GiB", "--accelerators-per-host", "8", "--accelerator", "mi355",
                   "--json")
    doc = json.loads(done.stdout)
    assert doc["batch_size"] == 32 and doc["min_num_files"] == 17022570  # mi355's published batch
    assert doc["override"] == "dataset.num_files=17022570"
    done = run_cli(0, "datasize", os.path.join(CONFIGS, "unet3d-b200.yaml"), "--hosts", "1",
                   "--memory-per-host", "1TiB", "--accelerators-per-host", "8", "--accelerator", "mi355")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "mpibench: error: mlcommons/storage publishes no unet3d config for mi355; choose train.accelerator "
        "from b200, h100, a100, or set train.computation_time and train.batch_size"]


def test_the_accelerator_sets_compute_batch_and_au_and_explicit_keys_win():
    eff = effective(train(model="retinanet", accelerator="mi355"))
    assert (eff.computation_time, eff.batch_size, eff.min_au_pct) == (0.0634, 32, 85.0)
    assert eff.computation_source.endswith("configs/dlio/workload/retinanet_mi355.yaml)")
    eff = effective(train(model="retinanet", accelerator="b200", computation_time=0.5, min_au=50))
    assert (eff.computation_time, eff.batch_size, eff.min_au_pct) == (0.5, 24, 50.0)
    assert eff.computation_source == "train.computation_time" and eff.au_source == "train.min_au"
    assert "retinanet_b200.yaml" in eff.batch_source
    eff = effective(train())
    assert (eff.computation_time, eff.batch_size, eff.min_au_pct) == (0.0, 4, None)
    with pytest.raises(ConfigError, match="needs train.model"):
        train(accelerator="b200")
    with pytest.raises(ConfigError, match="publishes no unet3d config for mi355"):
        train(model="unet3d", accelerator="mi355")


def test_published_shapes():
    assert timing_of("unet3d", "b200").computation_time == 0.162
    assert timing_of("dlrm", "mi355").computation_time == 0.0005625
    assert row_bytes(COLUMN_SETS["dlrm"]) == SHAPES["dlrm"].record_size == 761
    assert row_bytes(COLUMN_SETS["flux"]) == SHAPES["flux"].record_size == 2164832
    assert sum(c.read for c in COLUMN_SETS["dlrm"]) == 40 and len(COLUMN_SETS["dlrm"]) == 200
    with pytest.raises(ConfigError, match="rows are 761 bytes"):
        dataset(format="parquet", columns="dlrm", record_size=760)
    with pytest.raises(ConfigError, match="one image a file"):
        dataset(format="jpeg", samples_per_file=2)


def run_of(rate: float, au: float | None) -> dict:
    return {"samples_per_s": rate, "au_pct_mean": au}


def test_run_protocol_verdicts():
    runs = [run_of(50.0, 20.0), run_of(100.0, 91.0), run_of(104.0, 95.0), run_of(96.0, 90.0)]
    doc = run_verdicts(runs, 90.0)
    assert [r["warmup"] for r in runs] == [True, False, False, False]
    assert [r["verdict"] for r in runs] == ["FAIL", "PASS", "PASS", "PASS"]
    assert doc["verdict"] == "PASS"  # the warm-up does not count
    assert doc["measured_runs"] == 3 and doc["samples_per_s_mean"] == pytest.approx(100.0)
    assert doc["samples_per_s_spread_pct"] == pytest.approx(4.0) and doc["runs_agree"] is True
    assert doc["au_pct_mean"] == pytest.approx(92.0)
    runs = [run_of(50.0, 95.0), run_of(100.0, 95.0), run_of(120.0, 89.9)]
    doc = run_verdicts(runs, 90.0)
    assert doc["verdict"] == "FAIL" and doc["runs_agree"] is False  # 10% off the mean
    single = [run_of(80.0, None)]
    doc = run_verdicts(single, None)
    assert doc["verdict"] is None and doc["runs_agree"] is None and not single[0]["warmup"]


def write(path: str, encoded) -> None:
    with open(path, "wb") as handle:
        handle.write(bytes(encoded.view()[: encoded.size]))


def masked(data: bytes) -> int:
    crc = int.from_bytes(google_crc32c.value(data).to_bytes(4, "big"), "big")
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_tfrecord_files_read_back_with_an_independent_reader(tmp_path):
    import tfrecord

    ds = dataset(format="tfrecord", samples_per_file=6, record_size=3000, record_size_stdev=1000)
    for index in range(3):
        path = str(tmp_path / f"f{index}.tfrecord")
        write(path, formats.encode(ds, index, alignment=4096))  # padded, then cut to the true size
        record = formats.record_size_of(ds, index)
        expected = formats.file_samples(ds, index)
        # the framing and both CRCs, checked from the spec with google-crc32c
        data = open(path, "rb").read()
        offset, count = 0, 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            assert struct.unpack_from("<I", data, offset + 8)[0] == masked(data[offset: offset + 8])
            body = data[offset + 12: offset + 12 + length]
            assert struct.unpack_from("<I", data, offset + 12 + length)[0] == masked(body)
            offset += 16 + length
            count += 1
        assert offset == len(data) and count == 6
        # the tf.train.Example of each record, parsed by the tfrecord package's protobuf
        records = list(tfrecord.tfrecord_loader(path, None, {"image": "byte", "size": "int"}))
        assert len(records) == 6
        for i, rec in enumerate(records):
            assert list(rec["size"]) == [record]
            assert np.array_equal(np.frombuffer(rec["image"], dtype=np.uint8), expected[i])


def test_tfrecord_decode_catches_a_flipped_byte(tmp_path):
    ds = dataset(format="tfrecord", samples_per_file=2, record_size=500)
    enc = formats.encode(ds, 0)
    data = bytearray(enc.view()[: enc.size])
    assert formats.decode(ds, 0, memoryview(data), len(data), "f", verify=True) == 2
    data[100] ^= 1
    with pytest.raises(VerifyError, match="fails its CRC32C"):
        formats.decode(ds, 0, memoryview(data), len(data), "f")


def test_parquet_files_read_back_with_an_independent_reader(tmp_path):
    import fastparquet

    ds = dataset(format="parquet", columns="dlrm", record_size=761, samples_per_file=7000, num_files=2)
    path = str(tmp_path / "f.parquet")
    write(path, formats.encode(ds, 1, alignment=4096))
    pf = fastparquet.ParquetFile(path)
    assert [rg.num_rows for rg in pf.row_groups] == [6144, 7000 - 6144]  # the published row group size
    assert pf.columns == [c.name for c in COLUMN_SETS["dlrm"]]
    frame = pf.to_pandas(columns=["feature_000", "feature_007", "feature_011", "feature_199"])
    for name in frame.columns:
        j = int(name[-3:])
        want = mf.column_values(ds, 1, j).tobytes()
        if COLUMN_SETS["dlrm"][j].dtype == "float16":  # fastparquet gives the 2-byte values as bytes
            assert np.array(list(frame[name]), dtype="S2").tobytes() == want  # NUL-padded back
        else:
            values = frame[name].to_numpy(dtype=COLUMN_SETS["dlrm"][j].dtype)  # pandas' Int8 -> int8
            assert values.tobytes() == want

    flux = dataset(format="parquet", columns="flux", record_size=2164832, samples_per_file=3)
    path = str(tmp_path / "flux.parquet")
    write(path, formats.encode(flux, 0))
    frame = fastparquet.ParquetFile(path).to_pandas(columns=["clip_encodings", "timestamp"])
    assert np.stack(frame["timestamp"].to_numpy()).shape == (3, 7)
    assert np.stack(frame["clip_encodings"].to_numpy()).tobytes() == mf.column_values(flux, 0, 1).tobytes()


def test_parquet_training_read_fetches_only_the_columns_read(tmp_path):
    """On O_DIRECT files: the footer and the 40 read columns' chunks, not the whole file."""
    storage = build_config({"workload": "train", "storage": {"type": "direct_fs", "root": str(tmp_path)}}).storage
    alignment, _source = DirectFsBackend.probe_alignment(str(tmp_path))
    backend = DirectFsBackend(storage, alignment=alignment)
    ds = dataset(format="parquet", columns="dlrm", record_size=761, samples_per_file=20000)
    enc = formats.encode(ds, 0, alignment=backend.alignment)
    write(str(tmp_path / "f.parquet"), enc)
    handle = backend.open("f.parquet", "r")
    try:
        source = mf.BackendFile(backend, handle, backend.size_of("f.parquet"))
        groups: list[tuple[int, int]] = []  # (rows, bytes fetched so far) at each callback
        assert mf.read_parquet(ds, 0, source, "f.parquet", verify=True,
                               on_rows=lambda rows: groups.append((rows, source.fetched))) == 20000
    finally:
        backend.close(handle)
    # Each row group is handed on as soon as it is read, before the next one is fetched.
    assert [rows for rows, _ in groups] == [6144, 6144, 6144, 20000 - 3 * 6144]
    assert groups[0][1] < groups[1][1] < groups[2][1] < groups[3][1] == source.fetched
    read_width = row_bytes(COLUMN_SETS["dlrm"], only_read=True)  # 160 of 761 bytes a row
    assert 20000 * read_width <= source.fetched < enc.size / 2


def test_parquet_verification_catches_a_changed_value_in_a_later_row_group(tmp_path):
    """Verified row group by row group: the first groups pass, the changed one fails."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ds = dataset(format="parquet", columns="dlrm", record_size=761, samples_per_file=7000)
    table = pq.read_table(pa.BufferReader(formats.encode(ds, 0).view()[: formats.encode(ds, 0).size]))
    column = next(j for j, c in enumerate(COLUMN_SETS["dlrm"]) if c.read)
    name = COLUMN_SETS["dlrm"][column].name
    values = table.column(name).to_numpy().copy()
    values[6500] += 1  # in the second row group
    table = table.set_column(column, table.schema.field(column), pa.array(values))
    path = str(tmp_path / "f.parquet")
    pq.write_table(table, path, row_group_size=6144, compression="none", use_dictionary=False)
    groups: list[int] = []
    with open(path, "rb") as source, pytest.raises(VerifyError, match=f"column {name} differs"):
        mf.read_parquet(ds, 0, source, path, verify=True, on_rows=groups.append)
    assert groups == [6144]


def test_jpeg_files_have_the_published_mean_size():
    import io

    from PIL import Image

    ds = dataset(format="jpeg", record_size=322957, num_files=40)
    sizes = []
    for index in range(40):
        enc = formats.encode(ds, index)
        data = bytes(enc.view()[: enc.size])
        assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"  # SOI ... EOI
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG" and image.size == mf.jpeg_shape(322957)[::-1]
        sizes.append(len(data))
    assert abs(np.mean(sizes) - 322957) < 0.05 * 322957
    assert formats.decode(ds, 5, formats.encode(ds, 5).view(), formats.encode(ds, 5).size, "f", verify=True) == 1


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(CONFIGS)
                                        if n.split("-")[0] in SHAPES or n.split(".")[0] in SHAPES))
def test_shape_configs_use_the_published_figures(name):
    config = load_config(os.path.join(CONFIGS, name))
    tc, ds = config.train, config.dataset
    assert tc.model in SHAPES and tc.accelerator != "none"
    shape = SHAPES[tc.model]
    eff = effective(tc)
    assert eff.min_au_pct == timing_of(tc.model, tc.accelerator).min_au_pct
    if "quick" not in name:
        assert ds.format in (shape.format,) or (tc.model == "cosmoflow" and ds.format == "hdf5")
        assert (eff.computation_time, eff.batch_size) == (timing_of(tc.model, tc.accelerator).computation_time,
                                                          timing_of(tc.model, tc.accelerator).batch_size)
        if tc.accelerator in ("b200", "mi355"):
            assert (ds.samples_per_file, ds.record_size) == (shape.samples_per_file, shape.record_size)


def checkpoint_config(**keys: object):
    return build_config({"workload": "checkpoint", "storage": {"type": "local_fs", "root": "/tmp/x"},
                         "checkpoint": keys})


def test_checkpoint_accelerator_memory_and_subset_rules():
    from mpibench.presets import resolve_model
    from mpibench.workloads.checkpoint import check_mlperf_rules

    ok = checkpoint_config(model="llama3-8b", accelerator="h100", subset=True).checkpoint
    check_mlperf_rules(ok, resolve_model(ok))  # 8 x 80 GiB hold 105 GiB
    small = checkpoint_config(model="llama3-70b", ranks=8, accelerator="h100").checkpoint
    with pytest.raises(ConfigError, match=r"8 emulated h100 accelerators hold 640.00 GiB, less than the 911.00 GiB"):
        check_mlperf_rules(small, resolve_model(small))
    big = checkpoint_config(model="llama3-70b", ranks=8, accelerator="mi355").checkpoint
    check_mlperf_rules(big, resolve_model(big))  # 8 x 288 GiB hold 911 GiB
    subset = checkpoint_config(model="llama3-70b", subset=True).checkpoint
    with pytest.raises(ConfigError, match="subset applies to llama3-8b on exactly 8"):
        check_mlperf_rules(subset, resolve_model(subset))
    with pytest.raises(ConfigError, match="needs checkpoint.folder"):
        checkpoint_config(mode="read")


def phase(name: str, nbytes: int, **meta: object) -> dict:
    return {"name": name, "bytes": nbytes, **meta}


def test_checkpoint_rules_warn_on_small_data_and_late_reads():
    from mpibench.presets import resolve_model
    from mpibench.workloads.checkpoint import checkpoint_rules

    config = checkpoint_config(model="llama3-8b", fsync=False)
    model = resolve_model(config.checkpoint)
    memory = [100 * GIB, 100 * GIB]  # two nodes
    writes = [phase("write", 20 * GIB, node_memory_bytes=memory) for _ in range(10)]
    reads = [phase("read", 20 * GIB, cache={"state": "cold", "evicted": False}) for _ in range(10)]
    rules = checkpoint_rules(config, model, writes + reads, direct=False)
    assert rules["ten_and_ten"] and rules["data_per_node_bytes"] == 100 * GIB and not rules["caches_cleared"]
    assert len(rules["warnings"]) == 2  # under 3 x memory with caches kept, and no fsync
    assert "under 3x its memory" in rules["warnings"][0] and "fsync" in rules["warnings"][1]
    evicted = [phase("read", 20 * GIB, cache={"state": "cold", "evicted": True}) for _ in range(10)]
    assert checkpoint_rules(config, model, writes + evicted, direct=False)["caches_cleared"]
    assert len(checkpoint_rules(config, model, writes + reads, direct=True)["warnings"]) == 1
    late = checkpoint_config(model="llama3-8b", mode="read", folder="c")
    gap = [phase("read", 20 * GIB, read_gap_s=31.0, node_memory_bytes=memory, cache={"evicted": True})
           for _ in range(10)]
    rules = checkpoint_rules(late, model, gap, direct=False)
    assert rules["read_gap_s"] == 31.0 and rules["ten_and_ten"] and rules["data_per_node_bytes"] == 100 * GIB
    assert rules["warnings"] == ["the read run started 31.0 s after the write run ended, more than 30 s: "
                                 "the two do not make one checkpoint run"]


@pytest.mark.parametrize("args,line", [
    (["--memory-per-host", "lots"], "mpibench: error: --memory-per-host: "),
    (["--memory-per-host", "0"], "mpibench: error: --memory-per-host must be a positive size; give a size such as 512GiB"),
    (["--memory-per-host", "1GiB", "--hosts", "0"], "mpibench: error: --hosts and --accelerators-per-host must be at least 1"),
])
def test_datasize_refuses_bad_input_in_one_line(args, line):
    base = {"--hosts": "1", "--accelerators-per-host": "8"}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    done = run_cli(0, "datasize", os.path.join(CONFIGS, "unet3d-b200.yaml"),
                   *[part for item in base.items() for part in item])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line)


def test_jpeg_decode_verify_catches_changed_bytes():
    ds = dataset(format="jpeg", record_size=20000)
    enc = formats.encode(ds, 2)
    data = bytearray(enc.view()[: enc.size])
    data[len(data) // 2] ^= 0x10  # inside the entropy-coded image: still a decodable JPEG
    with pytest.raises(VerifyError, match="differs from what datagen wrote"):
        formats.decode(ds, 2, memoryview(data), len(data), "f.jpeg", verify=True)
    with pytest.raises(VerifyError, match="not a readable JPEG"):
        formats.decode(ds, 2, memoryview(b"not a jpeg"), 10, "f.jpeg")

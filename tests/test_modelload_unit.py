"""modelload without MPI: the HF layout and who-loads-what maths, the files as safetensors
reads them, config rules, the FUSE refusal and `mpibench plan`."""

from __future__ import annotations

import json
import os
from collections import Counter

import ml_dtypes  # noqa: F401  (numpy's bfloat16, which safetensors needs for framework="numpy")
import numpy as np
import pytest
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from s3fixture import s3_fixture  # noqa: F401
from safetensors import safe_open

from mpibench.comm import Comm
from mpibench.config import build_config
from mpibench.errors import ConfigError, PreflightError
from mpibench.presets import PRESETS
from mpibench.run import execute
from mpibench.safetensors_layout import (
    HF_SHARD_BYTES,
    INDEX_NAME,
    aligned_runs,
    model_files,
    parse_header,
    rank_extents,
    resolve_parallelism,
)
from mpibench.schema import validation_errors
from mpibench.workloads.modelload import refuse_reader

QUICK = {"model": "llama3-8b", "scale": 0.002, "shard_size": "16MB", "buffer_size": "1MiB"}


def test_llama3_8b_has_the_shards_of_the_published_model():
    # meta-llama/Meta-Llama-3-8B: 4 shards of exactly these sizes, 291 tensors, total_size 16060522496
    model = model_files("llama3-8b", 1.0, HF_SHARD_BYTES)
    assert [s.name for s in model.shards] == [f"model-0000{k}-of-00004.safetensors" for k in range(1, 5)]
    assert [s.file_bytes for s in model.shards] == [4976698672, 4999802720, 4915916176, 1168138808]
    assert model.tensor_bytes == 16060522496 and model.num_tensors == 291
    index = model.index()
    assert index["metadata"] == {"total_size": 16060522496}
    assert index["weight_map"]["lm_head.weight"] == "model-00004-of-00004.safetensors"
    assert index["weight_map"]["model.embed_tokens.weight"] == "model-00001-of-00004.safetensors"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_shards_into_contiguous_files_below_the_limit(preset):
    model = model_files(preset, 0.001, 64 * 10**6)
    names = set()
    for shard in model.shards:
        length, doc = parse_header(shard.prefix())
        assert length % 8 == 0 and shard.data_start == 8 + length
        offsets = sorted((v["data_offsets"] for k, v in doc.items() if k != "__metadata__"))
        assert offsets[0][0] == 0 and all(a[1] == b[0] for a, b in zip(offsets, offsets[1:], strict=False))
        assert shard.data_bytes <= 64 * 10**6 or len(shard.tensors) == 1
        names |= {t.spec.name for t in shard.tensors}
    assert len(names) == model.num_tensors == 9 * PRESETS[preset].layers + 3


@settings(max_examples=40, deadline=None)
@given(layout=st.sampled_from(["tensor_parallel", "pipeline_parallel", "tensor_pipeline"]),
       tp=st.sampled_from([1, 2, 4, 8]), pp=st.integers(1, 6), dp=st.integers(1, 2))
def test_the_ranks_of_one_replica_load_every_tensor_byte_exactly_once(layout, tp, pp, dp):
    model = model_files("llama3-8b", 0.0005, 4 * 10**6)
    preset = PRESETS["llama3-8b"]
    t = tp if layout != "pipeline_parallel" else 1
    p = pp if layout != "tensor_parallel" else 1
    world = t * p * dp
    par = resolve_parallelism(layout, t, p, preset, world)
    assert (par.tp, par.pp) == (t, p)
    counts = {s.name: np.zeros(s.file_bytes, dtype=np.int8) for s in model.shards}
    for rank in range(t * p):  # the first replica (dp = 0)
        for e in rank_extents(model, par, rank):
            for start in e.starts():
                counts[e.file][start:start + e.length] += 1
    for shard in model.shards:
        c = counts[shard.name]
        norms = [t for t in shard.tensors if t.spec.split == "whole"]
        assert not c[:shard.data_start].any()  # the header is no tensor
        data = c[shard.data_start:]
        for placed in shard.tensors:
            piece = data[placed.begin:placed.end]
            # a norm is loaded whole by every TP rank of its stage; the rest once
            assert (piece == (t if placed in norms else 1)).all(), placed.spec.name


def test_replicated_loads_everything_and_aligned_runs_merge():
    model = model_files("llama3-8b", 0.002, 16 * 10**6)
    par = resolve_parallelism("replicated", "auto", "auto", PRESETS["llama3-8b"], 3)
    extents = rank_extents(model, par, 2)
    assert sum(e.nbytes for e in extents) == model.tensor_bytes
    for shard in model.shards:
        runs = aligned_runs([e for e in extents if e.file == shard.name], 4096)
        assert runs == [(shard.data_start // 4096 * 4096, -(-shard.file_bytes // 4096) * 4096
                         - shard.data_start // 4096 * 4096)]


def test_layout_rules_are_one_line_errors():
    preset = PRESETS["llama3-8b"]
    with pytest.raises(ConfigError, match="multiple of 4 ranks"):
        resolve_parallelism("tensor_parallel", 4, "auto", preset, 6)
    with pytest.raises(ConfigError, match="more pipeline stages"):
        resolve_parallelism("pipeline_parallel", 1, 33, preset, 33)
    assert resolve_parallelism("tensor_parallel", "auto", "auto", preset, 2).tp == 2
    assert resolve_parallelism("tensor_pipeline", "auto", "auto", PRESETS["llama3-405b"], 256).pp == 32


def _config(root: str, workload: str, **ml: object):
    return build_config({"workload": workload, "storage": {"type": "local_fs", "root": root},
                         "dataset": {"name": "m", "format": "safetensors"}, "modelload": {**QUICK, **ml}})


def test_config_rules(tmp_path):
    root = str(tmp_path)
    with pytest.raises(ConfigError, match="reads a safetensors model"):
        build_config({"workload": "modelload", "storage": {"type": "local_fs", "root": root}})
    with pytest.raises(ConfigError, match="does not read storage.type=local_fs"):
        _config(root, "modelload", reader="direct")
    with pytest.raises(ConfigError, match="for workload=modelload"):
        build_config({"workload": "train", "storage": {"type": "local_fs", "root": root},
                      "dataset": {"format": "safetensors"}})
    with pytest.raises(ConfigError, match="did you mean 'reader'"):
        build_config({"workload": "modelload", "storage": {"type": "local_fs", "root": root},
                      "dataset": {"format": "safetensors"}, "modelload": {"readr": "mmap"}})


def test_fuse_refusal_names_the_mount_option(tmp_path):
    probe = {"shared_mmap": "ENODEV", "private_mmap": "ok", "o_direct": "ok", "direct_io": True}
    with pytest.raises(PreflightError) as info:
        refuse_reader(_config(str(tmp_path), "modelload", mmap_mapping="shared"), probe, "/mnt/hf")
    assert info.value.line() == (
        "mmap (MAP_SHARED) on this FUSE mount /mnt/hf fails with ENODEV: it is mounted with direct_io without "
        "FUSE_DIRECT_IO_ALLOW_MMAP; use modelload.mmap_mapping=private (as safetensors maps) or "
        "modelload.reader=read")
    refuse_reader(_config(str(tmp_path), "modelload"), probe, "/mnt/hf")  # private: served


def test_datagen_writes_files_safetensors_opens_and_a_load_reads(tmp_path):
    root = str(tmp_path / "data")
    os.mkdir(root)
    comm = Comm()
    gen = execute(_config(root, "datagen"), comm, output=None)
    model = model_files("llama3-8b", 0.002, 16 * 10**6)
    folder = os.path.join(root, "m")
    assert gen["datagen"]["bytes"] == model.file_bytes and gen["datagen"]["format"] == "safetensors"
    with open(os.path.join(folder, INDEX_NAME), encoding="utf-8") as f:
        index = json.load(f)
    assert index["metadata"]["total_size"] == model.tensor_bytes
    seen = 0
    for name in sorted(set(index["weight_map"].values())):
        path = os.path.join(folder, name)
        with safe_open(path, framework="numpy") as handle, open(path, "rb") as raw:
            assert handle.metadata() == {"format": "pt"}
            data_start = parse_header(raw.read(1 << 20))[0] + 8
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                placed = next(t for s in model.shards for t in s.tensors if t.spec.name == key)
                assert tensor.dtype == np.dtype("bfloat16") and tensor.shape == placed.spec.shape
                raw.seek(data_start + placed.begin)
                assert tensor.tobytes() == raw.read(placed.spec.nbytes)  # safetensors' offsets are ours
                seen += 1
    assert seen == model.num_tensors
    with pytest.raises(PreflightError, match="already holds"):
        execute(_config(root, "datagen"), comm, output=None)
    doc = execute(_config(root, "modelload", reader="read"), comm, output=None)
    m = doc["modelload"]
    assert validation_errors(json.loads(json.dumps(doc))) == [] and validation_errors(gen) == []
    assert [r["load"] for r in m["loads"]] == ["cold", "warm"]
    assert all(r["tensor_bytes"] == model.tensor_bytes for r in m["loads"])
    from mpibench.reporting import html_page, render_figures, summary_text

    figures = render_figures(doc)
    assert "modelload_cold_warm.png" in figures
    text = summary_text(doc)
    assert "cold    0    read" in text and "warm    0    read" in text
    assert "modelload: cold and warm loads" in html_page(doc, text, figures)
    with pytest.raises(PreflightError, match="differs from the modelload section"):
        execute(_config(root, "modelload", scale=0.004), comm, output=None)


def test_plan_lists_each_ranks_extents(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"workload": "modelload", "storage": {"type": "local_fs", "root": str(tmp_path)},
                                  "dataset": {"name": "m", "format": "safetensors"},
                                  "modelload": {**QUICK, "layout": "tensor_parallel"}}))
    done = run_cli(0, "plan", str(config), "--ranks", "2", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    ranks = plan["per_rank"]
    assert [r["rank"] for r in ranks] == [0, 1] and plan["totals"]["tp"] == 2
    o_proj = [e for e in ranks[1]["extents"] if e["tensor"].endswith("o_proj.weight")]
    assert ranks[0]["tensor_bytes"] == ranks[1]["tensor_bytes"]
    assert all(e["count"] > 1 and e["stride"] == 2 * e["length"] for e in o_proj)  # one half of every row


@pytest.mark.s3
def test_s3_objects_fetch_each_shard_in_one_get_per_load(s3, tmp_path):
    """modelload.s3_fetch=objects on the real S3 server, through a recording gateway: every
    rank GETs each shard whole exactly once per load (no ranged pieces, no HEAD before it)."""
    from test_s3 import Forwarder

    root = f"{s3.root}/modelload-objects"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"workload": "modelload", "storage": {"type": "s3", "root": root},
                               "dataset": {"name": "m", "format": "safetensors"},
                               "modelload": {**QUICK, "s3_fetch": "objects", "layout": "tensor_parallel"}}))
    model = model_files("llama3-8b", 0.002, 16 * 10**6)
    gateway = Forwarder(s3.endpoint)
    try:
        done = run_cli(1, "run", str(cfg), "workload=datagen", env=s3.cli_env(), timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        output = tmp_path / "r.json"
        done = run_cli(2, "run", str(cfg), f"storage.endpoint={gateway.endpoint}", "--output", str(output),
                       env=s3.cli_env(), timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        gateway.close()
        s3.delete(list(s3.listing(f"{root[len('s3://'):].split('/', 1)[1]}/")))
    doc = json.loads(output.read_text())
    loads = len(doc["phases"])
    assert [p["name"] for p in doc["phases"]] == ["cold_load", "warm_load"]
    for phase in doc["phases"]:  # each rank: every shard, one read each
        assert phase["bytes"] == 2 * model.file_bytes and phase["ops"] == 2 * len(model.shards)
    requests = [(method, path.partition("?")[0]) for method, path, _ in gateway.requests]
    gets = Counter(path.rsplit("/", 1)[-1] for method, path in requests
                   if method == "GET" and path.endswith(".safetensors"))
    heads = Counter(path.rsplit("/", 1)[-1] for method, path in requests
                    if method == "HEAD" and path.endswith(".safetensors"))
    assert gets == {s.name: 2 * loads for s in model.shards}  # 2 ranks x (cold, warm)
    assert heads == {s.name: 1 for s in model.shards}  # rank 0's preflight size check only, none in a load


@pytest.mark.s3
def test_s3_objects_refuses_a_shard_that_does_not_fit_in_memory(s3, tmp_path):
    """The shard-sized buffer of s3_fetch=objects is in the memory preflight: one line, the fix."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"workload": "modelload", "storage": {"type": "s3", "root": s3.root},
                               "dataset": {"name": "m", "format": "safetensors"},
                               "modelload": {"model": "llama3-405b", "scale": 1.0, "shard_size": "100TB",
                                             "s3_fetch": "objects"}}))
    done = run_cli(1, "run", str(cfg), env=s3.cli_env(), timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "the largest shard" in done.stderr and "use modelload.s3_fetch=ranges" in done.stderr

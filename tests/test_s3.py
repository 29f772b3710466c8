"""storage.type=s3: unit rules, then the command line against a real S3 server.

The command-line tests launch ``mpiexec -n 2|4 mpibench ...`` with the server's
credentials in the environment, and scan every byte of output and every results file for
the secret key.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from conftest import BIN, CONFIGS, run_cli
from s3fixture import PREFIX, assert_untouched, s3_fixture  # noqa: F401

from mpibench.backends.s3 import (
    S3Backend,
    check_access,
    check_bucket,
    classify,
    configured_endpoints,
    credential_source,
    endpoint_index,
    parse_root,
    reach_endpoint,
    scrub,
)
from mpibench.buffers import KEEP_HEAP
from mpibench.config import StorageConfig, build_config
from mpibench.errors import ConfigError, PreflightError
from mpibench.s3server import signed_request
from mpibench.workloads import get_workload

S3_YAML = os.path.join(CONFIGS, "s3.yaml")
MiB = 2**20


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- rules that need no server ------------------------------------------------------------------
def test_parse_root():
    assert parse_root("s3://bkt") == ("bkt", "")
    assert parse_root("s3://bkt/") == ("bkt", "")
    assert parse_root("s3://bkt/a/b/") == ("bkt", "a/b")
    for bad in ("/tmp/x", "s3://", "s3://a b/x", "s3://bkt/a//b", "s3://bkt/a/../b"):
        with pytest.raises(ConfigError):
            parse_root(bad)


def test_endpoint_precedence():
    storage = StorageConfig(type="s3", root="s3://b/p")
    env = {"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "http://b:2/"}
    assert configured_endpoints(storage, env) == ["http://b:2"]  # _S3 wins, as in s3dlio
    assert configured_endpoints(storage, {"AWS_ENDPOINT_URL": "http://a:1"}) == ["http://a:1"]
    assert configured_endpoints(storage, {}) == []  # the AWS default of the region
    assert configured_endpoints(StorageConfig(type="s3", root="s3://b", endpoint="https://c"), env) == ["https://c"]
    many = StorageConfig(type="s3", root="s3://b", endpoints=["http://x:1", "http://y:1"])
    assert configured_endpoints(many, env) == ["http://x:1", "http://y:1"]
    with pytest.raises(ConfigError, match="not an endpoint URL"):
        configured_endpoints(StorageConfig(type="s3", root="s3://b", endpoint="minio:9000"), {})


def test_endpoint_assignment():
    # One gateway per node: every rank of node n uses gateway n.
    assert {endpoint_index(4, n, 4, local) for n in range(4) for local in range(8) if n == 2} == {2}
    # One node: round robin over the ranks; rank 0 always gets endpoint 0 (it ran preflight).
    assert [endpoint_index(3, 0, 1, local) for local in range(6)] == [0, 1, 2, 0, 1, 2]
    # Fewer nodes than endpoints: all endpoints are used, evenly.
    used = [endpoint_index(8, n, 2, local) for n in range(2) for local in range(4)]
    assert sorted(used) == list(range(8))


def test_credentials_are_named_never_shown(tmp_path):
    secret = "s3cr3t-value-never-shown"
    with pytest.raises(PreflightError) as missing:
        credential_source({"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")})
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set" in str(missing.value)
    with pytest.raises(PreflightError) as half:
        credential_source({"AWS_SECRET_ACCESS_KEY": secret})
    assert "AWS_ACCESS_KEY_ID is not set" in str(half.value) and secret not in str(half.value)
    profile = tmp_path / "credentials"
    profile.write_text(f"[lab]\naws_access_key_id = AKIAEXAMPLE1234\naws_secret_access_key = {secret}\n")
    env = {"AWS_PROFILE": "lab", "AWS_SHARED_CREDENTIALS_FILE": str(profile)}
    assert credential_source(env) == "profile lab"
    assert credential_source({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": secret}) == "environment"
    assert scrub(f"error with {secret} inside", {"AWS_SECRET_ACCESS_KEY": secret}) == "error with *** inside"


def test_server_errors_become_one_line():
    reason, hint = classify("S3 PUT for s3://b/k failed: service error: SignatureDoesNotMatch (The request "
                            "signature we calculated does not match) — AWS_SECRET_ACCESS_KEY is wrong")
    assert reason == "S3 rejected the credentials (SignatureDoesNotMatch)" and "AWS_SECRET_ACCESS_KEY" in hint
    assert classify("... InvalidAccessKeyId ...")[1] == "check AWS_ACCESS_KEY_ID"
    assert classify("HEAD for s3://b/x failed: dispatch failure (... Connection refused (os error 111))")[0] \
        == "cannot reach the S3 endpoint: connection refused"
    assert "\n" not in classify("first line\nsecond line")[0]


def check_workload(config):
    """The S3 backend's refusal of what the workload's access hints ask for."""
    check_access(get_workload(config.workload).access_hints(config))


def test_rules_object_storage_cannot_honour():
    def bw(**bandwidth):
        return build_config({"workload": "bandwidth", "storage": {"type": "s3", "root": "s3://b/p"},
                             "bandwidth": {"transfer_size": MiB, "block_size": 4 * MiB, **bandwidth}})

    with pytest.raises(ConfigError, match="exactly one writer"):
        check_workload(bw(file_mode="shared"))
    with pytest.raises(ConfigError, match="out of order"):
        check_workload(bw(access="random"))
    check_workload(bw(access="random", object_size=MiB))  # one object per transfer: any order
    # the backend sees the workload's neutral access hints, never its settings
    with pytest.raises(ConfigError, match="5 MiB"):
        build_config({"storage": {"type": "s3", "root": "s3://b/p", "part_size": "1MiB"}})
    with pytest.raises(ConfigError, match="object_size must divide"):
        bw(object_size=3 * MiB)


def test_unreachable_endpoint_fails_at_once():
    port = closed_port()
    with pytest.raises(PreflightError) as err:
        reach_endpoint(f"http://127.0.0.1:{port}", 30.0)
    # "connection refused", not the 30 s probe's timeout: it failed at once.
    assert str(err.value).startswith(f"cannot reach S3 endpoint http://127.0.0.1:{port}/: connection refused")


def test_silent_endpoint_times_out():
    """A server that accepts connections but never answers fails in the probe's timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        reach_endpoint(url, 1.0)  # the kernel completes the connection
        with pytest.raises(PreflightError, match="did not answer within 0.5 s"):
            check_bucket(url, "bkt", "p/", "us-east-1", {"access_key": "k", "secret_key": "s"}, 0.5)


class _NotS3Handler(http.server.BaseHTTPRequestHandler):
    """Answers every request with the server's (status, body, headers); records the requests."""

    answer: tuple[int, bytes, dict[str, str]] = (404, b"", {})
    seen: list[str] = []

    def _reply(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        status, body, headers = self.answer
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _reply

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def not_s3(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server on loopback that is not S3 (a web server, a console port)."""
    seen: list[str] = []
    handler = type("Handler", (_NotS3Handler,), {"answer": (status, body, headers or {}), "seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


HTML_404 = b"<html><head><title>404 Not Found</title></head><body>not here</body></html>"
NOT_S3_CASES = {
    "301-empty": (301, b"", {"Location": "https://example.invalid/"}, "answered HTTP 301 with no S3 error"),
    "404-html": (404, HTML_404, {"Content-Type": "text/html"}, "answered HTTP 404 with no S3 error"),
    "404-other-code": (404, b"<Error><Code>NoSuchKey</Code><Message>x</Message></Error>", {},
                       "answered HTTP 404 with error code NoSuchKey"),
}


@pytest.mark.parametrize("case", sorted(NOT_S3_CASES))
def test_endpoint_that_is_not_s3(case):
    status, body, headers, fragment = NOT_S3_CASES[case]
    with not_s3(status, body, headers) as (url, _seen):
        with pytest.raises(PreflightError) as err:
            check_bucket(url, "bkt", "p/", "us-east-1", {"access_key": "k", "secret_key": "s"}, 2.0)
    line = err.value.line()
    assert line.startswith(f"S3 endpoint {url}/ {fragment}")
    assert "for bucket bkt: it does not look like an S3 server" in line
    assert line.endswith("; check storage.endpoint / storage.endpoints / AWS_ENDPOINT_URL")
    assert "does not exist" not in line and "no details" not in line


def test_missing_bucket_is_told_by_its_s3_error():
    body = b"<?xml version='1.0'?><Error><Code>NoSuchBucket</Code><Message>gone</Message></Error>"
    with not_s3(404, body) as (url, _seen):
        assert check_bucket(url, "bkt", "p/", "us-east-1", {"access_key": "k", "secret_key": "s"}, 2.0) == "missing"


@pytest.mark.parametrize("ranks", [2])
@pytest.mark.parametrize("case", ["301-empty", "404-html"])
def test_endpoint_that_is_not_s3_from_the_command_line(tmp_path, ranks, case):
    """Every rank ends with the one line, exit 2; nothing is written to the endpoint."""
    status, body, headers, fragment = NOT_S3_CASES[case]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3DLIO_"))}
    env.update(AWS_ACCESS_KEY_ID="AKIAFAKEFAKEFAKE", AWS_SECRET_ACCESS_KEY="fake-secret", AWS_REGION="us-east-1",
               HOME=str(tmp_path))
    output = tmp_path / "result.json"
    with not_s3(status, body, headers) as (url, seen):
        done = run_cli(ranks, "run", S3_YAML, "storage.root=s3://bkt/p", f"storage.endpoint={url}",
                       "storage.create_bucket=true", "--output", str(output), env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"mpibench: error: S3 endpoint {url}/ {fragment}"), done.stderr
    assert "it does not look like an S3 server; check storage.endpoint" in lines[0]
    assert "Traceback" not in done.stdout + done.stderr
    assert not output.exists()
    assert seen and all(request.startswith("GET /bkt?") for request in seen), seen  # only the listing


# -- the command line against a real server -------------------------------------------------------
def scan_for_secrets(texts: list[str], *secrets: str) -> None:
    """No secret value appears in any output or results file."""
    for text in texts:
        for secret in filter(None, secrets):
            assert secret not in text


@pytest.mark.s3
def test_every_workload_from_the_command_line(s3, tmp_path):
    """bandwidth, datagen, train and checkpoint through `mpiexec -n 2 mpibench run`."""
    before = s3.listing()
    env = s3.cli_env()
    dataset = f"{PREFIX}-cli-ds"
    runs = {
        "bandwidth": [S3_YAML, "bandwidth.transfer_size=1MiB", "bandwidth.block_size=4MiB",
                      "bandwidth.iterations=1"],
        "datagen": [os.path.join(CONFIGS, "unet3d-quick.yaml"), "workload=datagen", "dataset.num_files=6",
                    "dataset.record_size=256KiB", "dataset.record_size_stdev=0", f"dataset.name={dataset}"],
        "train": [os.path.join(CONFIGS, "unet3d-quick.yaml"), "dataset.num_files=6", "dataset.record_size=256KiB",
                  "dataset.record_size_stdev=0", f"dataset.name={dataset}", "train.computation_time=0",
                  "verify=true"],
        "checkpoint": [os.path.join(CONFIGS, "llama3-8b-quick.yaml"), "checkpoint.scale=0.0002",
                       "checkpoint.num_checkpoints_write=1", "checkpoint.num_checkpoints_read=1",
                       "checkpoint.verify=true"],
    }
    texts = []
    for name, args in runs.items():
        output = tmp_path / f"{name}.json"
        done = run_cli(2, "run", *args, "storage.type=s3", f"storage.root={s3.root}", "--output", str(output),
                       env=env, timeout=120)
        assert done.returncode == 0, (name, done.stderr[-2000:])
        doc = json.loads(output.read_text())
        assert doc["complete"] and doc["environment"]["backend"]["backend"] == "s3"
        texts += [done.stdout, done.stderr, output.read_text()]
    scan_for_secrets(texts, s3.secret_key, s3.access_key)
    kept = [k for k in s3.listing(f"{PREFIX}/{dataset}/")]
    assert len(kept) == 7  # the dataset stays (6 files and the manifest); nothing else does
    s3.delete(kept)
    assert_untouched(s3, before)


def error_cases(s3, tmp_path) -> dict[str, tuple[list[str], dict[str, str], str]]:
    """name -> (extra arguments, environment overrides, expected error line)."""
    port = closed_port()
    return {
        "wrong-secret": ([], {"AWS_SECRET_ACCESS_KEY": "wrong-" + s3.secret_key[::-1]},
                         "S3 rejected the credentials (SignatureDoesNotMatch) at "),
        "wrong-key-id": ([], {"AWS_ACCESS_KEY_ID": "AKIANOTAKEY00000"},
                         "S3 rejected the credentials (InvalidAccessKeyId) at "),
        "endpoint-down": ([f"storage.endpoint=http://127.0.0.1:{port}"], {},
                          f"cannot reach S3 endpoint http://127.0.0.1:{port}/: connection refused"),
        "bucket-missing": (["storage.root=s3://no-such-bucket-mpibench/p"], {},
                           f"bucket no-such-bucket-mpibench does not exist at {s3.endpoint}"),
        "local-path": ([f"storage.root={tmp_path}"], {}, "storage.type=s3 needs an s3://bucket/prefix root"),
        "no-credentials": ([], {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "HOME": str(tmp_path)},
                           "S3 credentials missing: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set"),
    }


@pytest.mark.s3
@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("case", ["wrong-secret", "wrong-key-id", "endpoint-down", "bucket-missing", "local-path",
                                  "no-credentials"])
def test_errors_end_every_rank_with_one_line(s3, tmp_path, ranks, case):
    before = s3.listing()
    args, overrides, expected = error_cases(s3, tmp_path)[case]
    output = tmp_path / "result.json"
    done = run_cli(ranks, "run", S3_YAML, f"storage.root={s3.root}", "bandwidth.block_size=8MiB", *args,
                   "--output", str(output), env=s3.cli_env(**overrides), timeout=60)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mpibench: error: " + expected), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not output.exists()
    scan_for_secrets([done.stdout, done.stderr], s3.secret_key, overrides.get("AWS_SECRET_ACCESS_KEY", s3.secret_key))
    assert_untouched(s3, before)
    assert not s3.bucket_exists("no-such-bucket-mpibench")


@pytest.mark.s3
def test_create_bucket_and_remove_it_when_empty(s3, tmp_path):
    bucket = "mpibench-created-" + str(os.getpid())
    done = run_cli(2, "run", S3_YAML, f"storage.root=s3://{bucket}/x", "storage.create_bucket=true",
                   "bandwidth.transfer_size=1MiB", "bandwidth.block_size=2MiB", "bandwidth.iterations=1",
                   "--output", str(tmp_path / "r.json"), env=s3.cli_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["environment"]["backend"]["created_bucket"] is True
    assert any(f"created bucket {bucket}" in check for check in doc["preflight"]["checks"])
    assert not s3.bucket_exists(bucket)  # empty at the end, so deleted again


class Forwarder:
    """A TCP forwarder to the server on another port: a second 'gateway' that counts its clients
    and records the method, path and x-amz-content-sha256 header of each request it passes on."""

    REQUEST = re.compile(rb"(PUT|POST|GET|HEAD|DELETE) (\S+) HTTP/1\.1\r\n(?:[^\r\n]+\r\n)*?"
                         rb"(?i:x-amz-content-sha256): *([^\r\n]*)\r\n")

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.requests: list[tuple[str, str, str]] = []  # (method, path, x-amz-content-sha256)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(self.target)
            for a, b, tap in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, tap), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, tap: bool) -> None:
        window, start = b"", 0  # the stream's last bytes (a request head may span reads), and
        seen = 0                # the stream offset of window[0]; requests found before `seen`
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
                if not tap:
                    continue
                window += data
                for match in self.REQUEST.finditer(window):
                    if start + match.start() >= seen:
                        self.requests.append(tuple(part.decode() for part in match.groups()))
                        seen = start + match.end()
                cut = max(0, len(window) - 8192)
                window, start = window[cut:], start + cut
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


@pytest.mark.s3
def test_ranks_spread_over_endpoints(s3, tmp_path):
    """storage.endpoints: rank 0 uses the first, rank 1 the second (one node: round robin)."""
    before = s3.listing()
    gateway = Forwarder(s3.endpoint)
    try:
        output = tmp_path / "r.json"
        done = run_cli(2, "run", S3_YAML, f"storage.root={s3.root}", f"storage.endpoints=[{s3.endpoint}, "
                       f"{gateway.endpoint}]", "bandwidth.transfer_size=1MiB", "bandwidth.block_size=2MiB",
                       "bandwidth.iterations=1", "verify=true", "--output", str(output), env=s3.cli_env(),
                       timeout=60)
        assert done.returncode == 0, done.stderr
        preflight_connections = 2  # rank 0's preflight: a TCP probe and a signed listing per endpoint
        assert gateway.connections > preflight_connections  # rank 1's traffic went through it
    finally:
        gateway.close()
    backend = json.loads(output.read_text())["environment"]["backend"]
    assert backend["endpoints"] == [s3.endpoint, gateway.endpoint]
    assert backend["endpoint"] == s3.endpoint  # rank 0's
    assert "interleaved over nodes" in backend["endpoint_assignment"]
    assert_untouched(s3, before)


@pytest.mark.s3
@pytest.mark.parametrize("depth", [1, 2])
def test_runtime_workers_follow_the_requests_in_flight(s3, tmp_path, depth):
    """storage.threads auto on S3: one rank gets the CPUs it may use, but no more s3dlio
    runtime workers than it keeps requests in flight (one object per transfer: io_depth)."""
    output = tmp_path / "r.json"
    done = run_cli(1, "run", S3_YAML, f"storage.root={s3.root}", "bandwidth.transfer_size=1MiB",
                   "bandwidth.object_size=1MiB", "bandwidth.block_size=2MiB", "bandwidth.iterations=1",
                   f"io.depth={depth}", "--output", str(output), env=s3.cli_env(), timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(output.read_text())
    cpus = doc["environment"]["usable_cpus_per_node"]
    assert doc["environment"]["backend"]["runtime_threads"] == min(cpus, depth)
    assert doc["config"]["storage"]["threads"] == "auto"


@pytest.mark.s3
@pytest.mark.parametrize(("access", "skip_head"), [("sequential", None), ("random", None), ("sequential", "0")],
                         ids=["sequential", "random", "user-wants-head"])
def test_whole_objects_one_request_each(s3, tmp_path, access, skip_head):
    """One object per transfer without verification (the shortest request path): every
    object is PUT once and read back with one GET per read, no HEAD before it (s3dlio's
    get asks for the size first unless told not to; a S3DLIO_SKIP_HEAD the user set is
    kept), the sizes are checked, and the ranks' s3dlio keep their freed heap and run as
    many runtime workers as they have requests in flight (recorded in the results)."""
    before = s3.listing()
    gateway = Forwarder(s3.endpoint)
    env = s3.cli_env() | ({"S3DLIO_SKIP_HEAD": skip_head} if skip_head else {})
    try:
        output = tmp_path / "r.json"
        done = run_cli(2, "run", S3_YAML, f"storage.root={s3.root}", f"storage.endpoint={gateway.endpoint}",
                       "bandwidth.transfer_size=1MiB", "bandwidth.object_size=1MiB", "bandwidth.block_size=4MiB",
                       f"bandwidth.access={access}", "bandwidth.iterations=2", "verify=false",
                       "--output", str(output), env=env, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        gateway.close()
    doc = json.loads(output.read_text())
    assert [(p["name"], p["bytes"], p["ops"]) for p in doc["phases"]] == [("write", 8 * MiB, 8), ("read", 8 * MiB, 8)] * 2
    backend = doc["environment"]["backend"]
    assert backend["malloc"] == {"applied": True, **KEEP_HEAP}
    assert backend["head_before_get"] is (skip_head == "0")
    # s3dlio's runtime: the CPUs per rank, but no more workers than requests in flight.
    cpus_per_rank = doc["environment"]["usable_cpus_per_node"] // 2
    assert backend["runtime_threads"] == max(1, min(cpus_per_rank, doc["phases"][0]["io_depth"]))
    objects = re.compile(r"/rank-\d+\.dat/obj-\d{6}$")
    requests = [(method, path.partition("?")[0]) for method, path, _ in gateway.requests]
    puts = Counter(path for method, path in requests if method == "PUT" and objects.search(path))
    gets = Counter(path for method, path in requests if method == "GET" and objects.search(path))
    heads = Counter(path for method, path in requests if method == "HEAD" and objects.search(path))
    assert len(puts) == 2 * 4  # 2 ranks x 4 objects, written afresh in each iteration
    assert set(puts.values()) == {2} and gets == puts  # one PUT and one GET per object and iteration
    # Asked for, s3dlio sends a HEAD before an object's first GET (it caches the size a while)
    assert set(heads) == (set(gets) if skip_head == "0" else set())
    assert_untouched(s3, before)


@pytest.mark.s3
@pytest.mark.parametrize("sign", [True, False])
def test_payload_signing(s3, tmp_path, sign):
    """storage.sign_payload: every PUT (whole objects, multipart parts, the preflight probe)
    carries its body's SHA-256, or UNSIGNED-PAYLOAD when false; the server takes both and
    the data reads back intact."""
    before = s3.listing()
    gateway = Forwarder(s3.endpoint)
    try:
        for name, layout in (("objects", ["bandwidth.object_size=1MiB"]), ("multipart", ["storage.part_size=5MiB"])):
            output = tmp_path / f"{name}.json"
            done = run_cli(2, "run", S3_YAML, f"storage.root={s3.root}", f"storage.endpoint={gateway.endpoint}",
                           f"storage.sign_payload={str(sign).lower()}", "bandwidth.transfer_size=1MiB",
                           "bandwidth.block_size=12MiB", "bandwidth.iterations=1", "verify=true", *layout,
                           "--output", str(output), env=s3.cli_env(), timeout=120)
            assert done.returncode == 0, done.stderr[-2000:]
            doc = json.loads(output.read_text())
            assert doc["config"]["storage"]["sign_payload"] is sign
            assert doc["environment"]["backend"]["sign_payload"] is sign
    finally:
        gateway.close()
    puts = [(path, digest) for method, path, digest in gateway.requests if method == "PUT"]
    parts = [path for path, _ in puts if "partNumber=" in path]
    assert len(parts) >= 2 * 3 and len(puts) >= 2 * 12 + len(parts)  # 12 objects per rank, 3 parts per rank
    for path, digest in puts:
        if sign:
            assert re.fullmatch("[0-9a-f]{64}", digest), (path, digest)
        else:
            assert digest == "UNSIGNED-PAYLOAD", (path, digest)
    assert_untouched(s3, before)


@pytest.mark.s3
def test_preflight_command(s3):
    before = s3.listing()
    done = run_cli(2, "preflight", S3_YAML, f"storage.root={s3.root}", env=s3.cli_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert "accepts the credentials" in done.stdout and "preflight passed" in done.stdout
    assert "probe object" in done.stdout
    assert_untouched(s3, before)


def test_s3_server_command(tmp_path):
    """`mpibench s3-server` prints the exports, serves S3, and removes everything on Ctrl-C."""
    from mpibench.s3server import S3ServerError, find_weed

    try:
        find_weed()
    except S3ServerError as exc:
        pytest.skip(str(exc))
    errors = tmp_path / "stderr"
    with open(errors, "w") as err:
        proc = subprocess.Popen([os.path.join(BIN, "mpibench"), "s3-server", "--bucket", "demo"],
                                stdout=subprocess.PIPE, stderr=err, text=True, stdin=subprocess.DEVNULL)
    try:
        env = {}
        deadline = time.monotonic() + 60
        while len(env) < 5 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            name, _, value = line.strip().removeprefix("export ").partition("=")
            env[name] = value
        assert set(env) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                            "AWS_REGION"}, env
        assert env["AWS_ENDPOINT_URL_S3"] == env["AWS_ENDPOINT_URL"]
        status, _, _ = signed_request(env["AWS_ENDPOINT_URL"], "GET", "/demo", query={"list-type": "2"},
                                      access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"],
                                      region=env["AWS_REGION"], timeout=5)
        assert status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    text = errors.read_text()
    assert code == 0, text
    data_dir = text.split("(data: ", 1)[1].split(",", 1)[0]
    assert data_dir.startswith("/") and not os.path.exists(data_dir)
    assert "mpibench run configs/s3.yaml storage.root=s3://demo/" in text


def test_backend_protocol_without_server():
    """Objects are written front to back; the message says why and what to do."""
    storage = StorageConfig(type="s3", root="s3://bkt/p")
    backend = S3Backend.__new__(S3Backend)  # no s3dlio settings needed for this rule
    backend.storage, backend.bucket, backend.prefix = storage, "bkt", "p"
    backend.object_size, backend.part_size = None, 16 * MiB
    handle = backend.open("k", "w")
    assert backend.write_at(handle, memoryview(bytearray(10)), 0) == 10
    with pytest.raises(Exception, match="written front to back"):
        backend.write_at(handle, memoryview(bytearray(10)), 100)
    assert backend.path_of("k") == "s3://bkt/p/k"


@pytest.mark.s3
def test_s3_report_labels(s3, tmp_path):
    """The header names the endpoint and bucket, the cache column says `object`, and a multipart
    upload's write latencies are named buffer hand-offs, in `run` and in `report`."""
    before = s3.listing()
    output = tmp_path / "s3.json"
    done = run_cli(2, "run", S3_YAML, f"storage.root={s3.root}", "bandwidth.transfer_size=1MiB",
                   "bandwidth.block_size=8MiB", "bandwidth.iterations=1", "--output", str(output),
                   env=s3.cli_env(), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = run_cli(0, "report", str(output))
    assert report.returncode == 0, report.stderr
    doc = json.loads(output.read_text())
    assert {p["cache"]["state"] for p in doc["phases"]} == {"object"}
    for text in (done.stdout, report.stdout):
        header = text.splitlines()[2]
        assert header.endswith(f"endpoint {s3.endpoint}, bucket {s3.root[len('s3://'):].split('/')[0]}"), header
        assert "alignment" not in text and "fsync" not in text.splitlines()[3] and "direct" not in text
        assert "note: write: S3 multipart upload (each object written in 1.00 MiB pieces)" in text
        assert "note: read" not in text
    assert_untouched(s3, before)

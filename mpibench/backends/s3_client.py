"""The process's s3dlio client: its settings (read once per process), its version, and its
errors turned into one-line messages."""

from __future__ import annotations

import errno as errno_mod
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import s3dlio

from mpibench.backends.s3_locations import (
    CREDENTIAL_NAMES,
    aws_default_endpoint,
    profile_credentials,
    region,
    scrub,
)
from mpibench.buffers import keep_freed_heap
from mpibench.config import StorageConfig
from mpibench.errors import BenchIOError

MIN_PART_SIZE = 5 * 1024**2  # S3's smallest multipart part (all but the last)
DELETE_THREADS = 16


# -- process-wide s3dlio settings ---------------------------------------------------------------
_PROCESS: dict[str, Any] = {}
_PROCESS_LOCK = threading.Lock()


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
            found = profile_credentials(dict(env))
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
REASONS: tuple[tuple[str, str, str], ...] = (
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
    for needle, reason, hint in REASONS:
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

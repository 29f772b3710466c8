"""Rank 0's S3 preflight and final cleanup: credentials, endpoints, bucket, permissions,
an empty run prefix and its marker; afterwards every object under the prefix removed."""

from __future__ import annotations

import json
import os
import socket
import ssl
import time
import urllib.parse
import warnings
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

import s3dlio

from mpibench.backends.base import AccessHints, StoragePlan
from mpibench.backends.s3_client import (
    MIN_PART_SIZE,
    REASONS,
    classify,
    configure_process,
    delete_objects,
    io_failure,
    library_version,
)
from mpibench.backends.s3_locations import (
    ENDPOINT_ASSIGNMENT,
    aws_default_endpoint,
    configured_endpoints,
    credential_source,
    current_credentials,
    key_id_tail,
    object_uri,
    parse_root,
    region,
    scrub,
)
from mpibench.backends.s3_sign import error_code, parse_list, signed_request
from mpibench.errors import ConfigError, PreflightError
from mpibench.plan import RUN_MARKER

if TYPE_CHECKING:
    from mpibench.comm import NodeLayout
    from mpibench.config import Config

PROBE_TIMEOUT_S = 3.0  # preflight's own requests: a dead endpoint fails in seconds, not minutes
PROBE_NAME = ".mpibench-write-probe"


def preflight(config: Config, run_key: str, planned_bytes: int, layout: NodeLayout,
              hints: AccessHints, threads: int) -> StoragePlan:
    """Credentials, endpoints, bucket, permissions and an empty run prefix; then the run marker."""
    storage = config.storage
    bucket, prefix = parse_root(storage.root)
    check_access(hints)
    checks: list[str] = []
    source = credential_source()
    checks.append(f"S3 credentials from the {source} (access key id {key_id_tail()})")
    endpoints = configured_endpoints(storage)
    region_name = region()
    probed = endpoints or [aws_default_endpoint(region_name)]
    creds = current_credentials()
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
        undo(config, StoragePlan(run_key=run_key, created_root=created_bucket))
        raise
    record = {
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
        "objects": object_layout(hints, storage.part_size),
    }
    return StoragePlan(run_key=run_key, checks=tuple(checks), created_root=created_bucket, record=record,
                       alignment=1, alignment_source="none (object storage)", endpoints=tuple(endpoints),
                       filesystem={"fstype": "s3", "source": probed[0], "mount": f"s3://{bucket}"})


def undo(config: Config, plan: StoragePlan) -> None:
    """Delete every object left under the run prefix, then the bucket if the run created it.

    The run prefix was empty when the run started, so all of it is the run's own;
    nothing outside it is listed or touched. A bucket is deleted only when a listing
    shows it empty (some servers delete non-empty buckets).
    """
    bucket, prefix = parse_root(config.storage.root)
    configure_process(config.storage, None, None)
    run_uri = object_uri(bucket, prefix, f"{plan.run_key}/")
    try:
        delete_objects(s3dlio.list(run_uri, recursive=True))
        left = s3dlio.list(run_uri, recursive=True)
    except RuntimeError as exc:
        raise io_failure("clean up", run_uri, exc) from None
    if left:
        warnings.warn(f"{len(left)} object(s) could not be deleted under {run_uri}: {left[:3]}", stacklevel=2)
    if plan.created_root:
        try:
            if not s3dlio.list(f"s3://{bucket}/", recursive=True):
                s3dlio.delete_bucket(bucket)
        except RuntimeError:
            pass  # the bucket stays; it is empty or holds data that is not ours


def check_access(hints: AccessHints) -> None:
    """Access that object storage cannot honour, refused before any I/O."""
    if hints.shared_file:
        raise ConfigError("a shared file (bandwidth.file_mode=shared) is not possible on s3: an object has "
                          "exactly one writer", "use bandwidth.file_mode=per_rank")
    per_transfer = hints.object_size is not None and hints.object_size == hints.transfer_size
    if hints.random_writes and not per_transfer and hints.block_size > hints.transfer_size:
        raise ConfigError("random writes (bandwidth.access=random) cannot write an S3 object out of order",
                          "set bandwidth.object_size equal to bandwidth.transfer_size (one object per transfer)")


def object_layout(hints: AccessHints, part_size: int) -> dict[str, Any]:
    """How the workload's data is cut into objects (recorded in results)."""
    if hints.block_size:
        size = hints.object_size or hints.block_size
        return {"layout": "one object per transfer" if size == hints.transfer_size and size < hints.block_size
                else ("one object per rank per iteration" if size == hints.block_size else "objects of object_size"),
                "object_size_bytes": size, "objects_per_rank_per_iteration": hints.block_size // size}
    if hints.object_size is not None:  # whole objects of this size, one request each
        return {"layout": f"one object per {hints.unit}", "object_size_bytes": hints.object_size}
    return {"layout": f"one object per {hints.unit} (multipart upload of part_size parts)",
            "part_size_bytes": max(MIN_PART_SIZE, part_size)}


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
    for needle, reason, hint in REASONS:
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

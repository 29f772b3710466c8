"""S3 requests that s3dlio's Python API lacks, through botocore: ListObjectsV2 page by page
and DeleteObjects (many keys in one request).

s3dlio 0.10 hands back a listing whole (so neither its pages nor the time to the first one
can be seen) and deletes one key per call. The botocore client uses the endpoint s3dlio was
given for this process (backends.s3.configure_process), the same credentials (environment,
then the shared credentials file), region, timeout and retries.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import botocore.session
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from mpibench.config import StorageConfig

MAX_KEYS = 1000  # S3's most keys per ListObjectsV2 page and per DeleteObjects request
#: error codes with which a store says it does not do DeleteObjects
REFUSALS = ("NotImplemented", "MethodNotAllowed", "InvalidRequest", "InvalidArgument", "501", "405")
S3ClientError = (ClientError, BotoCoreError)


def make_client(storage: StorageConfig, endpoint: str, region_name: str) -> Any:
    """A botocore S3 client for `endpoint` with the storage's timeout and retries."""
    session = botocore.session.get_session()
    config = BotoConfig(connect_timeout=min(5.0, storage.timeout), read_timeout=storage.timeout,
                        retries={"max_attempts": storage.retries + 1, "mode": "standard"},
                        s3={"addressing_style": "path"}, max_pool_connections=4)
    return session.create_client("s3", endpoint_url=endpoint, region_name=region_name, config=config)


def list_pages(client: Any, bucket: str, prefix: str, max_keys: int) -> Iterator[list[str]]:
    """The names (keys less `prefix`) one level below `prefix`, one ListObjectsV2 page at a time."""
    token: str | None = None
    while True:
        args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/", "MaxKeys": max_keys}
        if token:
            args["ContinuationToken"] = token
        page = client.list_objects_v2(**args)
        yield [item["Key"][len(prefix):] for item in page.get("Contents", ())]
        token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
        if not token:
            return


def delete_keys(client: Any, bucket: str, keys: list[str]) -> list[tuple[str, str]]:
    """One DeleteObjects of up to MAX_KEYS keys; the (key, error code) the store did not delete."""
    answer = client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
    return [(e.get("Key", "?"), e.get("Code", "?")) for e in answer.get("Errors", ())]


def error_code(exc: BaseException) -> str:
    """The S3 error code (or HTTP status) of a botocore error, '' when there is none."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")
    return ""


def probe_delete_objects(client: Any, bucket: str, prefix: str) -> dict[str, Any]:
    """Whether the store deletes with DeleteObjects: two probe objects under `prefix` (the
    run's), deleted in one request, then listed. 'batched' or 'single' with the reason; the
    probe objects are gone either way."""
    keys = [f"{prefix}delete-probe-{i}" for i in range(2)]
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=b"")
    reason = ""
    try:
        failed = delete_keys(client, bucket, keys)
        if failed:
            reason = f"DeleteObjects left {len(failed)} of 2 probe objects ({failed[0][1]})"
    except ClientError as exc:
        reason = f"the store refused DeleteObjects ({error_code(exc) or exc})"
    left = [k for k in keys if client.list_objects_v2(Bucket=bucket, Prefix=k, MaxKeys=1).get("Contents")]
    if left and not reason:
        reason = f"DeleteObjects answered success but {len(left)} of 2 probe objects remain"
    for key in left:
        client.delete_object(Bucket=bucket, Key=key)
    if reason:
        return {"mode": "single", "max_keys": 1, "method": "one DELETE per object", "reason": reason}
    return {"mode": "batched", "max_keys": MAX_KEYS, "method": f"DeleteObjects, up to {MAX_KEYS} keys per request"}

"""Where S3 objects are and who may touch them: s3:// roots, endpoints and their assignment
to ranks, the region, and the credentials (whose values are never printed)."""

from __future__ import annotations

import configparser
import os
import re
import urllib.parse
from collections.abc import Mapping

from mpibench.config import StorageConfig
from mpibench.errors import ConfigError, PreflightError

CREDENTIAL_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
ENDPOINT_ASSIGNMENT = ("interleaved over nodes: rank with node index n and node-local rank l uses "
                       "endpoints[(n + l * num_nodes) % len(endpoints)]")

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
def profile_credentials(environ: Mapping[str, str]) -> tuple[str, dict[str, str]] | None:
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
    found = profile_credentials(env)
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


def current_credentials() -> dict[str, str]:
    """The credential values for preflight's own signed requests (never printed)."""
    env = dict(os.environ)
    if not all(env.get(name) for name in CREDENTIAL_NAMES):
        found = profile_credentials(env)
        if found is not None:
            env.update(found[1])
    return {"access_key": env.get("AWS_ACCESS_KEY_ID", ""), "secret_key": env.get("AWS_SECRET_ACCESS_KEY", ""),
            "session_token": env.get("AWS_SESSION_TOKEN", "")}

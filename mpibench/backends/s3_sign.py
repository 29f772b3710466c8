"""SigV4-signed S3 requests with the standard library alone (the preflight's own probes,
sent before and without s3dlio, with a timeout of our choosing), and the S3 XML answers
they get: error codes and object listings."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ssl
import urllib.error
import urllib.parse
import urllib.request
from xml.etree import ElementTree


def _hmac(key: bytes, msg: str) -> bytes:
    """HMAC-SHA256 of `msg` under `key` (one SigV4 key-derivation step)."""
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _uri_encode(text: str, keep_slash: bool) -> str:
    """SigV4 URI encoding: everything but unreserved characters (and '/' in paths)."""
    return urllib.parse.quote(text, safe="-_.~/" if keep_slash else "-_.~")


def signed_request(
    endpoint: str,
    method: str,
    path: str = "/",
    *,
    access_key: str,
    secret_key: str,
    region: str = "us-east-1",
    query: dict[str, str] | None = None,
    body: bytes = b"",
    session_token: str | None = None,
    timeout: float = 10.0,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Send one SigV4-signed (path-style) S3 request; return (status, headers, body).

    Only the standard library is used, so it works before (and without) s3dlio, with a
    timeout of our choosing. HTTP errors are returned, not raised; network errors raise
    OSError (URLError, TimeoutError, ConnectionRefusedError, ...).
    """
    url = urllib.parse.urlsplit(endpoint)
    base_path = url.path.rstrip("/")
    canonical_path = _uri_encode(base_path + path, keep_slash=True)
    query = query or {}
    canonical_query = "&".join(
        f"{_uri_encode(k, False)}={_uri_encode(v, False)}" for k, v in sorted(query.items())
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload_hash = hashlib.sha256(body).hexdigest()
    headers = {"host": url.netloc, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    if session_token:
        headers["x-amz-security-token"] = session_token
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [
            method,
            canonical_path,
            canonical_query,
            *(f"{k}:{headers[k]}" for k in sorted(headers)),
            "",
            signed,
            payload_hash,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = b"AWS4" + secret_key.encode()
    for part in (day, region, "s3", "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    target = f"{url.scheme}://{url.netloc}{canonical_path}"
    if canonical_query:
        target += "?" + canonical_query
    req = urllib.request.Request(target, data=body or None, method=method, headers=headers)
    # Redirects are answers too (a bucket in another region says so with a 301).
    opener = urllib.request.build_opener(
        _NoRedirect, urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hand 3xx answers back to the caller instead of following them."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def error_code(body: bytes) -> tuple[str, str]:
    """(Code, Message) of an S3 XML error body ('' where absent)."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return "", ""
    return root.findtext("Code") or "", root.findtext("Message") or ""


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_list(body: bytes) -> tuple[list[tuple[str, int]], str | None]:
    """(key, size) pairs and the continuation token of a ListObjectsV2 answer."""
    root = ElementTree.fromstring(body)
    found: list[tuple[str, int]] = []
    token = None
    for child in root:
        name = _local_name(child.tag)
        if name == "Contents":
            fields = {_local_name(c.tag): c.text or "" for c in child}
            found.append((fields.get("Key", ""), int(fields.get("Size", "0") or 0)))
        elif name == "NextContinuationToken":
            token = child.text
    return found, token

"""Redaction of secrets from every line mpibench prints, logs or saves.

One function, `redact`, for all of them: the user and password of a URL
(`http://user:PASS@host` in storage.endpoint or AWS_ENDPOINT_URL), the signature and
credential of a presigned URL, and the values of the credential variables of this
process's environment wherever they appear. It is applied to each error line
(errors.one_line), to the whole text of a results or CSV file before it is written, and,
by `RedactingStream`, to everything the CLI writes to stdout and stderr (warnings,
tracebacks with --debug, the report).
"""

from __future__ import annotations

import os
import re
from typing import Any

MASK = "***"
#: the variables whose values are secrets (their names may be printed, never their values)
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
# scheme://userinfo@ : userinfo runs up to the first '@' before any '/', space or quote
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s\"'<>]+)@")
_SIGNED_QUERY = re.compile(r"(?P<name>[?&](?:X-Amz-(?:Signature|Credential|Security-Token)|Signature|"
                           r"AWSAccessKeyId|x-amz-security-token)=)[^&\s\"'<>]+", re.IGNORECASE)
_SHORTEST_SECRET = 4  # shorter values would mask ordinary words


def redact(text: str, environ: Any = None) -> str:
    """`text` with URL credentials, presigned-URL signatures and credential values masked."""
    if "://" in text or "=" in text:
        text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
        text = _SIGNED_QUERY.sub(lambda m: f"{m['name']}{MASK}", text)
    env = os.environ if environ is None else environ
    for name in SECRET_VARIABLES:
        value = env.get(name)
        if value and len(value) >= _SHORTEST_SECRET and value in text:
            text = text.replace(value, MASK)
    return text


class RedactingStream:
    """A text stream that passes each whole line through `redact` before the stream it
    wraps gets it (a URL split over two writes is still redacted); every other attribute
    is the wrapped stream's."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        """Buffer up to the last newline, pass the whole lines on redacted."""
        data = self._pending + text
        cut = max(data.rfind("\n"), data.rfind("\r"))
        if cut < 0:
            self._pending = data
        else:
            self._pending = data[cut + 1:]
            self._stream.write(redact(data[:cut + 1]))
        return len(text)

    def flush(self) -> None:
        """Pass on what is buffered (a line without its end), then flush."""
        if self._pending:
            pending, self._pending = self._pending, ""
            self._stream.write(redact(pending))
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

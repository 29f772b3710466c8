"""The results document's versions, in one place: what each changed, and the migrations that
bring an older document to the current version when it is loaded.

A reader (report, compare, the schema check) sees only the current version: every
difference between versions is handled here, once, never in the readers. Raise
SCHEMA_VERSION with every change of meaning (a field added that readers rely on, a value
whose meaning changes), add a line to HISTORY and a function to MIGRATIONS that turns a
document of the previous version into one of the new (docs/results.md lists the same
history).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from mpibench.phase_notes import write_cache_warning

SCHEMA_VERSION = 2

#: version -> what it changed (docs/results.md, "Versions", says the same)
HISTORY: dict[int, str] = {
    1: "the first format (mpibench up to the backend protocol): a storage's meaning was derived by "
       "readers from config.storage.type; queue depth and engine in config.bandwidth (io_depth, "
       "io_engine) before they moved to config.io (depth, engine)",
    2: "what the storage means is recorded, not derived: environment.backend has kernel_counted "
       "(/proc/self/io counts its bytes), object_store, uploads_at_close (S3 writes happen mostly at "
       "close); a phase's cache record is the backend's own (object on S3, none on null storage); "
       "the page-cache warning of an unsynced buffered write is always in the phase's cache record; "
       "queue depth and engine only in config.io",
}

#: what version 1 left to readers to derive from config.storage.type, by type (a closed
#: history: a backend added later writes version 2 or newer and records its own)
_V1_BACKENDS: dict[str, dict[str, Any]] = {
    "local_fs": {"direct": False, "kernel_counted": True},
    "direct_fs": {"direct": True, "kernel_counted": True},
    "s3": {"direct": True, "kernel_counted": False, "object_store": True},
    "null": {"direct": True, "kernel_counted": False},
}
_V1_OBJECT_CACHE = {"state": "object", "method": "s3: no client cache, every request goes to the server"}


def _v1_to_v2(document: dict[str, Any]) -> dict[str, Any]:
    """Record what version 1 readers derived from the storage type."""
    config = document.setdefault("config", {})
    bandwidth = config.get("bandwidth") or {}
    io = config.setdefault("io", {})
    for old, new in (("io_depth", "depth"), ("io_engine", "engine")):
        if old in bandwidth:
            io.setdefault(new, bandwidth.pop(old))
    storage = config.get("storage") or {}
    traits = _V1_BACKENDS.get(str(storage.get("type", "")), {})
    environment = document.setdefault("environment", {})
    backend = environment.setdefault("backend", {})
    for key, value in traits.items():
        backend.setdefault(key, value)
    backend.setdefault("direct", False)
    backend.setdefault("kernel_counted", False)
    workload = str(config.get("workload", ""))
    object_size = bandwidth.get("object_size") if workload == "bandwidth" else None
    for phase in document.get("phases") or []:
        cache = phase.get("cache")
        if traits.get("object_store") and cache is not None and cache.get("state") == "direct":
            phase["cache"] = dict(_V1_OBJECT_CACHE)
        if not backend.get("direct"):
            warning = write_cache_warning(phase, True, workload)
            if warning and not (cache or {}).get("warning"):
                phase["cache"] = {**(cache or {"state": "buffered", "method": "page cache"}), "warning": warning}
    if traits.get("object_store"):
        transfer = bandwidth.get("transfer_size")
        backend.setdefault("uploads_at_close",
                           not (object_size and transfer and int(object_size) <= int(transfer)))
    return document


#: from version n to n + 1
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}


def migrate(document: dict[str, Any]) -> dict[str, Any]:
    """The document brought to SCHEMA_VERSION (a copy when it was older), with
    `migrated_from` naming the version it was written in."""
    version = int(document["schema_version"])
    if version == SCHEMA_VERSION:
        return document
    document = copy.deepcopy(document)
    written = version
    while version < SCHEMA_VERSION:
        document = MIGRATIONS[version](document)
        version += 1
    document["schema_version"] = SCHEMA_VERSION
    document["migrated_from"] = written
    return document

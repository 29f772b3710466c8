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
import threading
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import s3dlio

from mpibench.backends.base import AccessHints, Backend, StoragePlan
from mpibench.backends.s3_pages import (
    MAX_KEYS,
    S3ClientError,
    delete_keys,
    list_pages,
    make_client,
    probe_delete_objects,
)
from mpibench.backends.s3_client import (  # noqa: F401  (the names callers take from here)
    MIN_PART_SIZE,
    classify,
    configure_process,
    delete_objects,
    io_failure,
    library_version,
    wrong_size,
)
from mpibench.backends.s3_locations import (  # noqa: F401
    configured_endpoints,
    credential_source,
    endpoint_index,
    key_id_tail,
    object_uri,
    parse_root,
    region,
    scrub,
)
from mpibench.backends.s3_preflight import check_access, check_bucket, object_layout, reach_endpoint  # noqa: F401
from mpibench.backends.s3_preflight import preflight as preflight_s3
from mpibench.backends.s3_preflight import undo as undo_s3
from mpibench.buffers import aligned_buffer
from mpibench.config import StorageConfig
from mpibench.errors import BenchIOError, PreflightError

if TYPE_CHECKING:
    from mpibench.comm import NodeLayout
    from mpibench.config import Config

GET_COPY_LIMIT = 4 * 1024**2  # whole objects up to this size: s3dlio.get + copy (see _read_whole)
S3_CACHE = {"state": "object", "method": "s3: no client cache, every request goes to the server"}
S3_OBJECT_IO = {"state": "object", "method": "s3: one PUT / HEAD / GET / DELETE per object, no client cache"}
_THREAD = threading.local()  # each I/O thread's own asyncio loop for get_into_async


class _ThreadLoop:
    """An asyncio loop owned by one thread, closed when the thread (and its locals) end."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def __del__(self) -> None:
        self.loop.close()


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
    preflight_checks = (
        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are set (values never printed)",
        "every endpoint answers a signed request within 3 s and accepts the credentials",
        "the bucket exists (or is created with storage.create_bucket=true)",
        "the run prefix <prefix>/mpibench-<run_id>/ holds no objects",
        "a tiny object can be put, read and deleted under the run prefix (through s3dlio)")

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
        # One object per transfer: every write is a whole PUT, so threads may write at once;
        # otherwise objects are written front to back.
        self.random_write = object_size is not None and object_size == transfer_size
        # A write hands a buffer to a multipart upload that mostly happens at close, unless
        # each transfer is one whole object.
        self.uploads_at_close = not (object_size and transfer_size and object_size <= transfer_size)
        self._objects_written: dict[str, set[int]] = {}
        self._lock = threading.Lock()
        self._boto: Any = None  # botocore client, made on first use (metadata LIST and DeleteObjects)

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
            "object_store": True,
            "uploads_at_close": self.uploads_at_close,
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

    def read_object(self, handle: _Read, buf: memoryview) -> int:
        """One GET of the whole object, no range and no HEAD before it (S3DLIO_SKIP_HEAD):
        the object must be exactly len(buf) bytes."""
        return self._read_whole(handle.uri, buf)

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

    def cache_state(self) -> dict[str, Any] | None:
        return dict(S3_CACHE)

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
        """One DELETE (S3 does not say whether the object existed: missing_ok either way)."""
        uri = self.path_of(f"{handle}/{name}")
        try:
            s3dlio.delete(uri)
        except RuntimeError as exc:
            raise io_failure("delete", uri, exc) from None

    def _client(self) -> Any:
        """This rank's botocore client (s3dlio has no paged LIST and no DeleteObjects)."""
        if self._boto is None:
            self._boto = make_client(self.storage, self.endpoint, region())
        return self._boto

    def open_dir(self, key: str) -> str:
        """The key prefix; the botocore client is made here, outside the timed phases (its
        service model takes hundreds of milliseconds to load)."""
        self._client()
        return key

    def _key_of(self, key: str) -> str:
        return self.path_of(key)[len(f"s3://{self.bucket}/"):]

    def list_in(self, handle: str, page: int) -> Any:
        """ListObjectsV2 of the prefix, one level deep, page by page (MaxKeys `page`)."""
        prefix = self._key_of(handle) + "/"
        try:
            yield from list_pages(self._client(), self.bucket, prefix, min(page, MAX_KEYS))
        except S3ClientError as exc:
            raise io_failure("list", f"s3://{self.bucket}/{prefix}", exc) from None

    def probe_batch_delete(self, key: str) -> dict[str, Any] | None:
        prefix = self._key_of(key) + "/"
        try:
            return probe_delete_objects(self._client(), self.bucket, prefix)
        except S3ClientError as exc:
            reason, hint = classify(str(exc))
            raise PreflightError(f"DeleteObjects probe under s3://{self.bucket}/{prefix} failed: {reason}",
                                 hint) from None

    def unlink_many_in(self, handle: str, names: list[str]) -> None:
        """One DeleteObjects of `names`; an error naming the first object the store kept."""
        prefix = self._key_of(handle) + "/"
        try:
            kept = delete_keys(self._client(), self.bucket, [prefix + name for name in names])
        except S3ClientError as exc:
            raise io_failure("delete", f"s3://{self.bucket}/{prefix}{names[0]}", exc) from None
        if kept:
            uri = f"s3://{self.bucket}/{kept[0][0]}"
            raise BenchIOError(f"delete {uri} failed: DeleteObjects kept {len(kept)} of {len(names)} objects "
                               f"({kept[0][1]})", "check the bucket policy and object lock", path=uri)

    # -- rank 0: preflight and final cleanup -------------------------------------------------------
    @classmethod
    def preflight(cls, config: Config, run_key: str, planned_bytes: int, layout: NodeLayout,
                  hints: AccessHints, threads: int) -> StoragePlan:
        """Credentials, endpoints, bucket, permissions and an empty run prefix; then the run marker."""
        return preflight_s3(config, run_key, planned_bytes, layout, hints, threads)

    @classmethod
    def undo(cls, config: Config, plan: StoragePlan) -> None:
        """Delete every object left under the run prefix, then the bucket if the run created it."""
        undo_s3(config, plan)

    @classmethod
    def runtime_threads(cls, config: Config, layout: NodeLayout, in_flight: int) -> int:
        """The CPUs per rank, but no more s3dlio workers than the rank's requests in flight:
        more only pass each request from thread to thread (one 1 MiB GET at a time cost 12-27 %
        more client CPU with two workers than with one; docs/performance.md, "The s3dlio
        runtime's workers")."""
        if config.storage.threads != "auto":
            return int(config.storage.threads)
        return max(1, min(super().runtime_threads(config, layout, in_flight), in_flight))

    @classmethod
    def for_rank(cls, config: Config, plan: StoragePlan, layout: NodeLayout, hints: AccessHints,
                 in_flight: int) -> Backend:
        """This rank's endpoint, runtime threads, and the object layout of the hints."""
        endpoints = list(plan.endpoints) or configured_endpoints(config.storage)
        endpoint = None
        if endpoints:
            endpoint = endpoints[endpoint_index(len(endpoints), layout.node_index, layout.num_nodes,
                                                layout.local_rank)]
        split = hints.object_size if hints.object_size and hints.object_size < hints.block_size else None
        return cls(config.storage, endpoint=endpoint, threads=cls.runtime_threads(config, layout, in_flight),
                   object_size=split, transfer_size=hints.transfer_size if split else None)

"""direct_fs through s3dlio's ``direct://`` (O_DIRECT) whole-file put and ranged get.

s3dlio writes a ``direct://`` file only as a whole (``put_bytes``: open with O_TRUNC,
one pwrite straight from a page-aligned buffer, no fsync) and reads any range of it
(``get_range``: one O_DIRECT pread of the aligned blocks around the range). The offset
based Backend protocol maps onto that as follows:

- A file written with one write (a dataset file, a manifest, a bandwidth block of one
  transfer) is one ``put_bytes`` of a plain file, as on any filesystem.
- A file written with several writes is a folder of whole files, one per write, named by
  offset (``<key>/<offset:020d>.part``): each write is one ``put_bytes``. The first write,
  made as a plain file, is moved into the folder when the second write arrives (three
  metadata operations, once per file). Writes to one file may run in parallel threads.
- ``read_at`` is one ``get_range`` of the plain file or of the parts it overlaps, copied
  from s3dlio's buffer into ours (``get_into_async`` does not support ``direct://``).
- ``fsync`` fsyncs the files written through the handle (s3dlio's put does none).

Preflight, alignment and O_DIRECT probing are the native direct_fs backend's (s3dlio
silently falls back to buffered I/O below 4 KiB and where O_DIRECT is refused, so the
probe must be our own), and the sizes must be multiples of that alignment, so every put
goes out straight from our aligned buffer with no bounce copy.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import s3dlio

from mpibench.backends.base import AccessHints, Backend, StoragePlan, io_error
from mpibench.backends.posix import DirectFsBackend
from mpibench.buffers import keep_freed_heap
from mpibench.config import StorageConfig
from mpibench.errors import BenchIOError, ConfigError

if TYPE_CHECKING:
    from mpibench.comm import NodeLayout
    from mpibench.config import Config

PART_SUFFIX = ".part"

_THREADS_LOCK = threading.Lock()
_THREADS_SET: list[int] = []


def configure_threads(threads: int | None) -> None:
    """Size s3dlio's runtime before its first call in this process (later calls are ignored)."""
    keep_freed_heap()  # s3dlio allocates each request's buffers: reuse, not re-fault, them
    with _THREADS_LOCK:
        if threads and not _THREADS_SET:
            os.environ["S3DLIO_RT_THREADS"] = str(threads)
            s3dlio.configure_tokio_threads(int(threads))
            _THREADS_SET.append(int(threads))


def part_name(offset: int) -> str:
    """File name of the part written at `offset`."""
    return f"{offset:020d}{PART_SUFFIX}"


def _parts_of(folder: str) -> tuple[list[int], list[int], list[str]]:
    """(offsets, sizes, paths) of the parts in a folder, by offset."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(PART_SUFFIX) and entry.name[: -len(PART_SUFFIX)].isdigit():
                found.append((int(entry.name[: -len(PART_SUFFIX)]), entry.stat(follow_symlinks=False).st_size,
                              entry.path))
    found.sort()
    return [f[0] for f in found], [f[1] for f in found], [f[2] for f in found]


class _WriteHandle:
    __slots__ = ("path", "lock", "cond", "mode", "plain_busy", "plain_len", "unsynced")

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.mode: str | None = None  # "plain" (one file) or "parts" (a folder of parts)
        self.plain_busy = False
        self.plain_len = 0
        self.unsynced: set[str] = set()


class _ReadHandle:
    __slots__ = ("path", "size", "offsets", "sizes", "paths")

    def __init__(self, path: str, size: int, offsets: list[int] | None = None,
                 sizes: list[int] | None = None, paths: list[str] | None = None) -> None:
        self.path = path
        self.size = size
        self.offsets = offsets
        self.sizes = sizes
        self.paths = paths


class S3dlioDirectBackend(DirectFsBackend):
    """O_DIRECT files through s3dlio's direct:// put_bytes / get_range."""

    name = "s3dlio_direct"
    direct = True
    file_descriptors = False  # every write is its own whole-file put through s3dlio

    # The native backend's per-call fast paths use file descriptors; ours go through s3dlio.
    writer = Backend.writer
    reader = Backend.reader

    def __init__(self, storage: StorageConfig, alignment: int = 1, threads: int | None = None) -> None:
        super().__init__(storage, alignment)
        configure_threads(threads)

    def describe(self) -> dict[str, Any]:
        from mpibench.backends.s3_client import library_version

        return {**super().describe(), "library": "s3dlio", "library_version": library_version(),
                "uri_scheme": "direct://", "malloc": keep_freed_heap(),
                "runtime_threads": _THREADS_SET[0] if _THREADS_SET else None,
                "layout": "one write: one file; several writes: a folder of one file per write"}

    @classmethod
    def preflight(cls, config: Config, run_key: str, planned_bytes: int, layout: NodeLayout,
                  hints: AccessHints, threads: int) -> StoragePlan:
        """The native direct_fs checks (root, free space, our own O_DIRECT probe), plus ours."""
        if hints.shared_file:
            raise ConfigError("a shared file is not possible with storage.library=s3dlio: "
                              "direct:// writes whole files, so ranks cannot share one",
                              "use bandwidth.file_mode=per_rank, or storage.library=native")
        plan = super().preflight(config, run_key, planned_bytes, layout, hints, threads)
        return dataclasses.replace(
            plan, record={**plan.record, "library": "s3dlio"},
            checks=(*plan.checks, "s3dlio direct:// puts whole files from page-aligned buffers whose sizes "
                    f"are multiples of {plan.alignment} bytes (no bounce copy)"))

    @classmethod
    def for_rank(cls, config: Config, plan: StoragePlan, layout: NodeLayout, hints: AccessHints,
                 in_flight: int) -> Backend:
        """The rank's instance with s3dlio's runtime threads (runtime_threads)."""
        return cls(config.storage, plan.alignment, cls.runtime_threads(config, layout, in_flight))

    def fd_for(self, handle: Any) -> int | None:
        return None  # s3dlio opens its own files

    def _uri(self, path: str) -> str:
        return "direct://" + path

    def _put(self, path: str, buf: Any) -> None:
        try:
            s3dlio.put_bytes(self._uri(path), buf)
        except (RuntimeError, OSError, TypeError, ValueError) as exc:
            raise BenchIOError(f"write {path} failed: {exc}", "is the filesystem full?", path=path) from None

    # -- writing -----------------------------------------------------------------------------
    def open(self, key: str, mode: str) -> Any:
        path = self.path_of(key)
        if mode == "w":
            handle = _WriteHandle(path)
            if os.path.isdir(path) and not os.path.islink(path):
                handle.mode = "parts"  # written before with several writes: overwrite its parts
            return handle
        try:
            st = os.stat(path)
        except OSError as exc:
            raise io_error("open", path, exc) from None
        if os.path.isdir(path):
            offsets, sizes, paths = _parts_of(path)
            size = offsets[-1] + sizes[-1] if offsets else 0
            return _ReadHandle(path, size, offsets, sizes, paths)
        return _ReadHandle(path, st.st_size)

    def write_at(self, handle: Any, buf: memoryview, offset: int) -> int:
        with handle.cond:
            if handle.mode is None and offset == 0:
                handle.mode = "plain"
                handle.plain_busy = True
                target = handle.path
            else:
                while handle.plain_busy:
                    handle.cond.wait()
                if handle.mode != "parts":
                    self._to_parts(handle)
                target = os.path.join(handle.path, part_name(offset))
        try:
            self._put(target, buf)
        finally:
            if target == handle.path:
                with handle.cond:
                    handle.plain_busy = False
                    handle.plain_len = len(buf)
                    handle.cond.notify_all()
        handle.unsynced.add(target)
        return len(buf)

    def _to_parts(self, handle: _WriteHandle) -> None:
        """Turn the handle's file into a folder of parts (its first write becomes part 0)."""
        path = handle.path
        try:
            if handle.mode == "plain":
                moving = path + ".mpibench-part0"
                os.rename(path, moving)
                os.mkdir(path)
                os.rename(moving, os.path.join(path, part_name(0)))
                handle.unsynced.discard(path)
                handle.unsynced.add(os.path.join(path, part_name(0)))
            else:
                if os.path.isfile(path) and not os.path.islink(path):
                    os.unlink(path)  # "w" truncates: an older plain file of that name goes
                os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise io_error("make parts folder", path, exc) from None
        handle.mode = "parts"

    def truncate(self, handle: Any, size: int) -> None:
        """Cut the file (the padding of an O_DIRECT write) to `size` bytes."""
        try:
            if handle.mode == "plain":
                os.truncate(handle.path, size)
            elif handle.mode == "parts":
                offsets, sizes, paths = _parts_of(handle.path)
                for off, length, path in zip(offsets, sizes, paths, strict=True):
                    if off >= size:
                        os.unlink(path)
                        handle.unsynced.discard(path)
                    elif off + length > size:
                        os.truncate(path, size - off)
        except OSError as exc:
            raise io_error("truncate", handle.path, exc) from None

    def fsync(self, handle: Any) -> None:
        """fsync every file written through the handle (and the parts folder)."""
        targets = sorted(handle.unsynced)
        if handle.mode == "parts":
            targets.append(handle.path)
        for path in targets:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise io_error("fsync", path, exc) from None
        handle.unsynced.clear()

    def close(self, handle: Any) -> None:
        pass  # every put already completed

    # -- reading -----------------------------------------------------------------------------
    def read_at(self, handle: Any, buf: memoryview, offset: int) -> int:
        if handle.offsets is None:
            return self._read_range(handle.path, buf, offset, handle.size)
        done = 0
        total = len(buf)
        while done < total:
            at = offset + done
            i = bisect.bisect_right(handle.offsets, at) - 1
            if i < 0:
                break
            within = at - handle.offsets[i]
            if within >= handle.sizes[i]:
                break  # a hole or the end
            n = self._read_range(handle.paths[i], buf[done:], within, handle.sizes[i])
            if n == 0:
                break
            done += n
        return done

    def _read_range(self, path: str, buf: memoryview, offset: int, size: int) -> int:
        want = min(len(buf), size - offset)
        if want <= 0:
            return 0
        try:
            data = s3dlio.get_range(self._uri(path), offset, want)
        except (RuntimeError, OSError) as exc:
            raise BenchIOError(f"read {path} at offset {offset} failed: {exc}", path=path) from None
        n = len(data)
        np.copyto(np.frombuffer(buf, dtype=np.uint8, count=n), np.frombuffer(data, dtype=np.uint8))
        return n

    # -- whole files and the namespace ----------------------------------------------------------
    def put(self, key: str, buf: memoryview, fsync: bool = False) -> int:
        handle = _WriteHandle(self.path_of(key))
        written = self.write_at(handle, buf, 0)
        if fsync:
            self.fsync(handle)
        return written

    def get(self, key: str, buf: memoryview) -> int:
        return self.read_at(self.open(key, "r"), buf, 0)

    def remove(self, key: str) -> None:
        path = self.path_of(key)
        if os.path.isdir(path) and not os.path.islink(path):
            for part in _parts_of(path)[2]:
                try:
                    os.unlink(part)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise io_error("remove", part, exc) from None
            self.remove_dir(key)
            return
        super().remove(key)

    def size_of(self, key: str) -> int:
        path = self.path_of(key)
        if os.path.isdir(path) and not os.path.islink(path):
            return sum(_parts_of(path)[1])
        return super().size_of(key)

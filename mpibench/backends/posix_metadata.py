"""The metadata workload's operations on files (local_fs, direct_fs), mixed into PosixBackend.

A directory handle is an open file descriptor of the directory, and each operation names its
entry relative to it (openat, fstatat, unlinkat, renameat), as data loaders do: the kernel
does not walk the directories of a full path on every call (0.77-0.79 of the per-stat cost of
a path, docs/performance.md). A process keeps at most half of its file-descriptor limit on
directories; beyond that, handles name their directory by path. Creates are exclusive
(O_EXCL) and no operation follows a link in the last component. On direct_fs, file data moves with O_DIRECT when its
size is a multiple of the direct-I/O alignment, through the page cache otherwise, and
data_io says which.
"""

from __future__ import annotations

import errno
import os
import resource
from typing import Any

from mpibench.backends.base import io_error

O_DIRECT = getattr(os, "O_DIRECT", 0)
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # readable: list_in scans it
_SPARE_FDS = 64  # descriptors left for everything else when directories take half the limit
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW


#: (dir_fd, prefix, path): entries are prefix + name relative to dir_fd (None: the working
#: directory, prefix the directory's path and a slash)
DirHandle = tuple[int | None, str, str]


def _dir_fd_budget() -> int:
    """How many directories a process may hold open: half its descriptor limit, less spares."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(0, (soft if soft != resource.RLIM_INFINITY else 1 << 20) // 2 - _SPARE_FDS)


class PosixMetadataOps:
    """Backend metadata operations (see backends.base) for files below `root`."""

    _dir_fds_open = 0  # per backend instance once set

    has_directories = True
    can_rename = True
    open_flags = 0
    alignment = 1

    def path_of(self, key: str) -> str:  # provided by PosixBackend
        raise NotImplementedError

    def direct_for(self, size: int) -> bool:
        """True when files of `size` bytes are written and read with O_DIRECT."""
        return bool(self.open_flags & O_DIRECT) and size > 0 and size % self.alignment == 0

    def data_io(self, size: int) -> dict[str, Any]:
        if size == 0:
            return {"state": "none", "method": "0-byte files: no data is written or read"}
        if self.direct_for(size):
            return {"state": "direct", "method": f"O_DIRECT, {size} bytes a multiple of the {self.alignment}-byte alignment"}
        if self.open_flags & O_DIRECT:
            return {"state": "buffered", "method": "page cache",
                    "warning": f"file_size {size} is not a multiple of the direct-I/O alignment {self.alignment} "
                               "bytes: files are written and read without O_DIRECT, through the page cache"}
        return {"state": "buffered", "method": "page cache"}

    def free_entries(self, key: str) -> int | None:
        try:
            found = os.statvfs(self.path_of(key))
        except OSError:
            return None
        return found.f_favail if found.f_files else None  # f_files 0: no inode count (btrfs)

    def mkdir(self, key: str) -> None:
        path = self.path_of(key)
        try:
            os.mkdir(path, 0o755)
        except OSError as exc:
            raise io_error("mkdir", path, exc) from None

    def rmdir(self, key: str) -> None:
        path = self.path_of(key)
        try:
            os.rmdir(path)
        except OSError as exc:
            raise io_error("rmdir", path, exc) from None

    def open_dir(self, key: str) -> DirHandle:
        """An open descriptor of the directory (its path once the budget of descriptors is used)."""
        path = self.path_of(key)
        if self._dir_fds_open < _dir_fd_budget():
            try:
                fd = os.open(path, _DIR)
            except OSError as exc:
                raise io_error("open directory", path, exc) from None
            self._dir_fds_open += 1
            return (fd, "", path)
        return (None, f"{path}/", path)

    def close_dir(self, handle: DirHandle) -> None:
        fd = handle[0]
        if fd is not None:
            self._dir_fds_open -= 1
            os.close(fd)

    def where_in(self, handle: DirHandle, name: str) -> str:
        return f"{handle[2]}/{name}"

    def create_in(self, handle: DirHandle, name: str, buf: memoryview, fsync: bool = False) -> int:
        size = len(buf)
        at, prefix, _ = handle
        try:
            fd = os.open(prefix + name, _CREATE | (self.open_flags if self.direct_for(size) else 0), 0o644,
                         dir_fd=at)
        except OSError as exc:
            raise io_error("create", self.where_in(handle, name), exc) from None
        done = 0
        try:
            while done < size:
                n = os.write(fd, buf[done:])
                if n <= 0:
                    raise OSError(errno.ENOSPC, "short write")
                done += n
            if fsync:
                os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            raise io_error("write", self.where_in(handle, name), exc, done) from None
        try:
            os.close(fd)
        except OSError as exc:
            raise io_error("close", self.where_in(handle, name), exc) from None
        return done

    def stat_in(self, handle: DirHandle, name: str) -> int:
        at, prefix, _ = handle
        try:
            return os.stat(prefix + name, dir_fd=at, follow_symlinks=False).st_size
        except OSError as exc:
            raise io_error("stat", self.where_in(handle, name), exc) from None

    def read_in(self, handle: DirHandle, name: str, buf: memoryview) -> int:
        size = len(buf)
        at, prefix, _ = handle
        done = 0
        try:
            fd = os.open(prefix + name, _READ | (self.open_flags if self.direct_for(size) else 0), dir_fd=at)
            try:
                while done < size:
                    n = os.readv(fd, [buf[done:]])
                    if n == 0:
                        break
                    done += n
            finally:
                os.close(fd)
        except OSError as exc:
            raise io_error("read", self.where_in(handle, name), exc, done) from None
        return done

    def rename_in(self, handle: DirHandle, name: str, new_name: str) -> None:
        at, prefix, _ = handle
        try:
            os.rename(prefix + name, prefix + new_name, src_dir_fd=at, dst_dir_fd=at)
        except OSError as exc:
            raise io_error("rename", self.where_in(handle, name), exc) from None

    def unlink_in(self, handle: DirHandle, name: str, missing_ok: bool = False) -> None:
        at, prefix, _ = handle
        try:
            os.unlink(prefix + name, dir_fd=at)
        except OSError as exc:
            if not (missing_ok and exc.errno == errno.ENOENT):
                raise io_error("remove", self.where_in(handle, name), exc) from None

    def list_in(self, handle: DirHandle, page: int) -> Any:
        """readdir of the directory: the first name alone (so that the first page's time is the
        time to the first entry), then pages of `page` names (readdir has no pages of its own)."""
        try:
            # scandir of a descriptor reads a duplicate and rewinds it when done: listable again
            with os.scandir(handle[0] if handle[0] is not None else handle[2]) as entries:
                names: list[str] = []
                entry_seen = False
                for entry in entries:
                    names.append(entry.name)
                    if len(names) == page or not entry_seen:
                        yield names
                        names = []
                        entry_seen = True
                if names:
                    yield names
        except OSError as exc:
            raise io_error("list", handle[2], exc) from None

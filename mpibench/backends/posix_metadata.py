"""The metadata workload's operations on files (local_fs, direct_fs), mixed into PosixBackend.

Each names its entry by path, as mdtest's operations do: the kernel walks the (cached)
directories of the path on every call. Creates are exclusive (O_EXCL) and no operation
follows a link in the last component. On direct_fs, file data moves with O_DIRECT when its
size is a multiple of the direct-I/O alignment, through the page cache otherwise, and
data_io says which.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from mpibench.backends.base import io_error

O_DIRECT = getattr(os, "O_DIRECT", 0)
LIST_PAGE = 1024  # names per page of a directory listing (readdir has no pages of its own)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW


class PosixMetadataOps:
    """Backend metadata operations (see backends.base) for files below `root`."""

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

    def open_dir(self, key: str) -> str:
        """The directory's path: each operation then names its entry by path, as mdtest's do."""
        return self.path_of(key)

    def where_in(self, handle: str, name: str) -> str:
        return f"{handle}/{name}"

    def create_in(self, handle: str, name: str, buf: memoryview, fsync: bool = False) -> int:
        size = len(buf)
        path = f"{handle}/{name}"
        try:
            fd = os.open(path, _CREATE | (self.open_flags if self.direct_for(size) else 0), 0o644)
        except OSError as exc:
            raise io_error("create", path, exc) from None
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
            raise io_error("write", path, exc, done) from None
        try:
            os.close(fd)
        except OSError as exc:
            raise io_error("close", path, exc) from None
        return done

    def stat_in(self, handle: str, name: str) -> int:
        try:
            return os.stat(f"{handle}/{name}", follow_symlinks=False).st_size
        except OSError as exc:
            raise io_error("stat", f"{handle}/{name}", exc) from None

    def read_in(self, handle: str, name: str, buf: memoryview) -> int:
        size = len(buf)
        path = f"{handle}/{name}"
        done = 0
        try:
            fd = os.open(path, _READ | (self.open_flags if self.direct_for(size) else 0))
            try:
                while done < size:
                    n = os.readv(fd, [buf[done:]])
                    if n == 0:
                        break
                    done += n
            finally:
                os.close(fd)
        except OSError as exc:
            raise io_error("read", path, exc, done) from None
        return done

    def rename_in(self, handle: str, name: str, new_name: str) -> None:
        try:
            os.rename(f"{handle}/{name}", f"{handle}/{new_name}")
        except OSError as exc:
            raise io_error("rename", f"{handle}/{name}", exc) from None

    def unlink_in(self, handle: str, name: str, missing_ok: bool = False) -> None:
        try:
            os.unlink(f"{handle}/{name}")
        except OSError as exc:
            if not (missing_ok and exc.errno == errno.ENOENT):
                raise io_error("remove", f"{handle}/{name}", exc) from None

    def list_in(self, handle: str) -> Any:
        """readdir of the directory: the first name alone (so that the first page's time is the
        time to the first entry), then pages of LIST_PAGE names."""
        try:
            with os.scandir(handle) as entries:
                page: list[str] = []
                entry_seen = False
                for entry in entries:
                    page.append(entry.name)
                    if len(page) == LIST_PAGE or not entry_seen:
                        yield page
                        page = []
                        entry_seen = True
                if page:
                    yield page
        except OSError as exc:
            raise io_error("list", handle, exc) from None

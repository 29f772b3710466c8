"""Reading files mpibench did not create: regular files of a plausible size only.

A name given by a user (a config, a results file, a credentials file) or found on the
storage (a dataset's manifest and files) may be a FIFO, which blocks `open` until a
writer comes, a device such as /dev/zero, which never ends, or a socket. Every such read
goes through `open_regular`: the name is looked at first (a device node is never opened:
opening one can act, as a tape rewinds), then opened with O_NONBLOCK (so a FIFO swapped in
meanwhile cannot block), checked again on the descriptor itself, and only then set back
to blocking I/O.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from mpibench.units import format_size

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISLNK, "a symbolic link"),
)


class UnsafeFile(OSError):
    """The name is not a regular file of a plausible size (an OSError, so callers that
    report an OSError's strerror report this one as well)."""


def kind_of(mode: int) -> str:
    """What a file of this st_mode is, in words ('a FIFO (named pipe)', 'a regular file')."""
    for test, words in _KINDS:
        if test(mode):
            return words
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def check_regular(info: os.stat_result, path: str, limit: int | None = None) -> None:
    """Raise UnsafeFile unless `info` is a regular file of at most `limit` bytes."""
    if not stat.S_ISREG(info.st_mode):
        code = errno.EISDIR if stat.S_ISDIR(info.st_mode) else errno.EINVAL
        raise UnsafeFile(code, f"{kind_of(info.st_mode)}, not a regular file", path)
    if limit is not None and info.st_size > limit:
        raise UnsafeFile(errno.EFBIG, f"{info.st_size} bytes ({format_size(info.st_size)}), over the {limit} "
                                      f"bytes ({format_size(limit)}) such a file may have", path)


def open_regular(path: str, limit: int | None = None, *, flags: int = 0, follow: bool = True) -> int:
    """A read-only descriptor of `path`, only if it is a regular file of at most `limit`
    bytes; never blocks in open. `flags` are added (O_DIRECT); follow=False refuses a link."""
    info = os.stat(path, follow_symlinks=follow)
    if stat.S_ISLNK(info.st_mode):  # what O_NOFOLLOW says of a link
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
    check_regular(info, path, limit)
    opened = os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW) | flags
    fd = os.open(path, opened | os.O_NONBLOCK)
    try:
        check_regular(os.fstat(fd), path, limit)  # the name may point elsewhere since the stat
        fcntl.fcntl(fd, fcntl.F_SETFL, opened)  # blocking again (one call: the flags are ours)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str, limit: int) -> bytes:
    """The whole content of a regular file of at most `limit` bytes (UnsafeFile otherwise,
    also when it grew past the limit while being read)."""
    fd = open_regular(path, limit)
    try:
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise UnsafeFile(errno.EFBIG, f"over the {limit} bytes ({format_size(limit)}) such a file may "
                                              "have (it grew while being read)", path)
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_text(path: str, limit: int, encoding: str = "utf-8") -> str:
    """read_regular decoded (UnicodeDecodeError when it is not `encoding` text)."""
    return read_regular(path, limit).decode(encoding)

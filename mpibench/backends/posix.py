"""POSIX files: buffered through the page cache (local_fs) or with O_DIRECT (direct_fs)."""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import errno
import functools
import json
import os
import socket
import time
import warnings
from typing import TYPE_CHECKING, Any, ClassVar

from mpibench import environment
from mpibench.backends.base import READ_FOREIGN, AccessHints, Backend, StoragePlan, io_error
from mpibench.backends.posix_metadata import O_DIRECT, PosixMetadataOps
from mpibench.buffers import aligned_buffer
from mpibench.config import StorageConfig
from mpibench.errors import PreflightError
from mpibench.pagecache import evict_file
from mpibench.plan import RUN_MARKER
from mpibench.safeio import open_regular
from mpibench.units import format_size

if TYPE_CHECKING:
    from mpibench.comm import NodeLayout
    from mpibench.config import Config

#: kernel interfaces that look like directories but are no storage (statvfs says 0 B free)
PSEUDO_FILESYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
    "pstore", "bpf", "configfs", "fusectl", "mqueue", "binfmt_misc", "autofs", "efivarfs", "nsfs",
    "rpc_pipefs", "selinuxfs",
})
# Filesystems whose files live in RAM: O_DIRECT there (tmpfs allows it since Linux 6.6)
# measures memory copies, not storage.
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
RUN_PATH_ROOM = 128  # bytes the run's own names add below its directory (checkpoint_<n>/<shard>)


def _filesystem_record(root: str) -> dict[str, str]:
    """Where root is (mount, type, device) and, on Lustre with `lfs` installed, its striping."""
    fs = environment.filesystem_of(root)
    if fs["fstype"] == "lustre":
        fs.update(environment.lustre_stripe(root))
    return fs


def _refuse_pseudo(root: str, fs: dict[str, str]) -> None:
    """A PreflightError when `fs` (where root is or would be) is a kernel pseudo-filesystem."""
    if fs["fstype"] in PSEUDO_FILESYSTEMS:
        raise PreflightError(f"storage.root {root} is on {fs['fstype']} at {fs['mount']}, a kernel "
                             "pseudo-filesystem that holds no files of its own",
                             "choose a directory on a real, writable filesystem")


@functools.cache
def _syncfs() -> Any:
    """libc's syncfs(2), or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name, use_errno=True).syncfs if name else None
    except (OSError, AttributeError):
        return None
    if function is not None:
        function.argtypes = [ctypes.c_int]
        function.restype = ctypes.c_int
    return function


def _mkdir_hint(exc: OSError) -> str:
    """What to do when a directory of the run cannot be created."""
    if exc.errno == errno.ENAMETOOLONG:
        return "use a shorter storage.root or run_id"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "check the permissions of storage.root, or choose another"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free space (or inodes) on the filesystem, or choose another storage.root"
    return "check storage.root, or choose another"


class _PosixHandle:
    __slots__ = ("fd", "path")

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path


class PosixBackend(PosixMetadataOps, Backend):
    """Files below a root directory, moved with os.pwritev/os.preadv."""

    name = "posix"
    open_flags = 0
    file_descriptors = True
    kernel_counted = True
    preflight_checks: ClassVar[tuple[str, ...]] = (
        "storage.root exists and is a writable directory (the leaf is created if its parent exists)",
        "free space covers the planned bytes",
        "the I/O buffers of a node's ranks fit in its available memory (MemAvailable or the cgroup's limit)",
        "the run directory mpibench-<run_id> does not exist yet, and is created")

    def __init__(self, storage: StorageConfig, alignment: int = 1) -> None:
        super().__init__(storage)
        root = storage.root
        for scheme in ("file://", "direct://"):
            if root.startswith(scheme):
                root = root[len(scheme):]
        self.root = os.path.abspath(root)
        self._prefix = os.path.join(self.root, "")
        self.alignment = alignment

    def path_of(self, key: str) -> str:
        # os.path.join(root, key) without its per-call checks (a loader names every file)
        return key if key.startswith("/") else self._prefix + key

    def local_root(self) -> str | None:
        return self.root

    # -- preflight (rank 0 only) -------------------------------------------------------------
    @classmethod
    def preflight_root(cls, storage: StorageConfig, planned_bytes: int) -> dict[str, Any]:
        """Check storage.root: create its leaf if needed, then directory, writable, free space."""
        root = cls(storage).root
        checks: list[str] = []
        created: list[str] = []  # the directories made here, deepest (the root leaf) first
        if not os.path.lexists(root):
            missing = root
            parent = os.path.dirname(root)
            while parent and not os.path.lexists(parent):
                missing = parent
                parent = os.path.dirname(parent)
            if missing != root and not storage.create_parents:
                raise PreflightError(
                    f"storage.root {root} cannot be created: directory {missing} does not exist",
                    "create it first, or set storage.create_parents=true",
                )
            if not os.path.isdir(parent):
                raise PreflightError(f"storage.root {root} cannot be created: {parent} is not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise PreflightError(f"storage.root {root} cannot be created: {parent} is not writable",
                                     "choose a writable storage.root")
            _refuse_pseudo(root, environment.filesystem_of(parent))
            chain = []  # root, its parent, ... up to the topmost missing directory
            path = root
            while path != parent:
                chain.append(path)
                path = os.path.dirname(path)
            try:
                for path in reversed(chain):
                    os.mkdir(path)
                    created.insert(0, path)
            except OSError as exc:
                cls.remove_created(created)
                raise PreflightError(f"cannot create storage.root {root}: {exc.strerror}",
                                     _mkdir_hint(exc)) from None
            checks.append(f"created storage.root {root}"
                          + (f" and its missing parents from {chain[-1]}" if len(chain) > 1 else ""))
        created_root = bool(created)
        try:
            if not os.path.isdir(root):
                raise PreflightError(f"storage.root {root} is not a directory", "give a directory path")
            if not os.access(root, os.W_OK | os.X_OK):
                raise PreflightError(f"storage.root {root} is not writable", "choose a directory you can write to")
            stats = os.statvfs(root)
            fs = environment.filesystem_of(root)
            if stats.f_flag & os.ST_RDONLY:
                raise PreflightError(f"storage.root {root} is on a read-only filesystem ({fs['fstype']} at {fs['mount']})",
                                     "choose a directory on a writable filesystem")
            _refuse_pseudo(root, fs)
            checks.append(f"storage.root {root} is a writable directory")
            if stats.f_files > 0 and stats.f_favail == 0:
                raise PreflightError(f"no free inodes in {root} ({fs['fstype']} at {fs['mount']}): no new file "
                                     "can be created there", "remove files there or choose another storage.root")
            free = stats.f_bavail * stats.f_frsize
            if stats.f_blocks == 0:  # ramfs and the like report no size at all: nothing to compare
                free = None
                checks.append(f"{fs['fstype']} at {fs['mount']} reports no size: free space not checked")
            elif planned_bytes > free:
                raise PreflightError(
                    f"not enough free space in {root}: the run writes {format_size(planned_bytes)} "
                    f"({planned_bytes} bytes), {format_size(free)} ({free} bytes) are free",
                    "lower the sizes or choose another storage.root",
                )
            else:
                checks.append(f"free space {format_size(free)} covers the planned {format_size(planned_bytes)}")
        except BaseException:
            cls.remove_created(created)
            raise
        return {"root": root, "created_root": created_root, "created_dirs": created, "free_bytes": free,
                "filesystem": _filesystem_record(root), "checks": checks}

    @classmethod
    def preflight(cls, config: Config, run_key: str, planned_bytes: int, layout: NodeLayout,
                  hints: AccessHints, threads: int) -> StoragePlan:
        """Rank 0: check the root, create the run directory and its marker, probe O_DIRECT."""
        found = cls.preflight_root(config.storage, planned_bytes)
        created = tuple(found["created_dirs"])
        run_dir = os.path.join(found["root"], run_key)
        try:
            limit = os.pathconf(found["root"], "PC_PATH_MAX")
        except (OSError, ValueError):
            limit = 4096
        if len(os.fsencode(run_dir)) + RUN_PATH_ROOM >= limit:
            cls.remove_created(created)
            raise PreflightError(
                f"run directory {run_dir} is {len(os.fsencode(run_dir))} bytes long: with the run's own "
                f"file names its paths would pass the system's limit of {limit} bytes (PATH_MAX)",
                "use a shorter storage.root or run_id")
        try:
            os.mkdir(run_dir, 0o755)
        except OSError as exc:
            cls.remove_created(created)  # the run directory is not ours: left alone
            if isinstance(exc, FileExistsError):
                raise PreflightError(
                    f"run directory {run_dir} already exists",
                    "choose another run_id: mpibench writes only into a directory it created itself",
                ) from None
            raise PreflightError(f"cannot create run directory {run_dir}: {exc.strerror}",
                                 _mkdir_hint(exc)) from None
        plan = StoragePlan(run_key=run_key, free_bytes=found["free_bytes"], filesystem=found["filesystem"],
                           created_root=found["created_root"], created_dirs=created,
                           alignment_source="buffered I/O")
        checks = list(found["checks"])
        try:
            try:
                with open(os.path.join(run_dir, RUN_MARKER), "x", encoding="utf-8") as marker:
                    json.dump({"run_id": run_key[len("mpibench-"):], "created": time.time(),
                               "host": socket.gethostname(), "pid": os.getpid()}, marker)
            except OSError as exc:
                raise PreflightError(f"cannot create the run marker in {run_dir}: {exc.strerror}",
                                     _mkdir_hint(exc)) from None
            checks.append(f"created run directory {run_dir}")
            if cls.direct:
                alignment, source = cls.probe_alignment(run_dir)
                plan = dataclasses.replace(plan, alignment=alignment, alignment_source=source)
                checks.append(f"O_DIRECT works in {run_dir}; alignment {alignment} bytes ({source})")
                fs = found["filesystem"]
                if fs.get("fstype") in MEMORY_FILESYSTEMS:
                    plan = dataclasses.replace(plan, warnings=(*plan.warnings, (
                        f"storage.root {found['root']} is on {fs['fstype']} at {fs['mount']}, a filesystem in "
                        "memory: direct_fs there measures RAM, not storage; choose a directory on a disk or a "
                        "parallel filesystem")))
        except BaseException:
            cls.undo(config, plan)
            raise
        return dataclasses.replace(plan, checks=tuple(checks))

    @staticmethod
    def remove_created(created: Any) -> None:
        """Remove directories the preflight made (deepest first), each only while empty."""
        for path in created:
            try:
                os.rmdir(path)
            except OSError:
                return  # not empty (something else is in it now): it and its parents stay

    @classmethod
    def undo(cls, config: Config, plan: StoragePlan) -> None:
        """Remove the run directory's empty folders and marker, and the root leaf (with the
        parents storage.create_parents made) if we made it.

        Only empty directories are removed (rmdir) and nothing is followed: a file or
        link that is not the run's own keeps its directory, and a warning says so.
        """
        root = cls(config.storage).root
        run_key = plan.run_key
        run_dir = os.path.join(root, run_key)
        marker = os.path.join(run_dir, RUN_MARKER)
        if os.path.isdir(run_dir) and not os.path.islink(run_dir):
            for current, dirs, _files in os.walk(run_dir, topdown=False, followlinks=False):
                for name in dirs:
                    path = os.path.join(current, name)
                    if not os.path.islink(path):
                        try:
                            os.rmdir(path)
                        except OSError:
                            pass
            try:
                os.unlink(marker)
            except OSError:
                pass  # never written (the preflight failed first): rmdir below tells what is left
            try:
                os.rmdir(run_dir)
            except OSError:
                leftovers = sorted(os.listdir(run_dir))[:5]
                if not os.path.exists(marker):
                    with open(marker, "w", encoding="utf-8") as handle:
                        json.dump({"run_id": run_key[len("mpibench-"):], "left": leftovers}, handle)
                warnings.warn(f"run directory {run_dir} kept: it holds entries the run did not create "
                              f"or could not remove: {leftovers}",
                              stacklevel=2)
        if plan.created_root:
            cls.remove_created(list(plan.created_dirs) or [root])

    @classmethod
    def probe_alignment(cls, directory: str) -> tuple[int, str]:
        """Direct-I/O alignment for files in `directory`, and how it was found.

        Opens a probe file with O_DIRECT (a filesystem that refuses it is an error, never
        a silent fallback), asks statx for STATX_DIOALIGN, else the block device's
        logical block size, else assumes 4096; then proves it with an aligned write and
        read of the probe file.
        """
        probe = os.path.join(directory, ".mpibench-odirect-probe")
        fstype = environment.filesystem_of(directory)["fstype"]
        try:
            fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL | O_DIRECT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise PreflightError(
                f"the filesystem at {directory} ({fstype}) refuses O_DIRECT: {exc.strerror}",
                "use storage.type=local_fs for buffered I/O on it",
            ) from None
        try:
            found = environment.statx_dio_alignment(probe)
            if found:
                alignment, source = max(found[1], 1), "statx STATX_DIOALIGN"
            else:
                lbs = environment.logical_block_size(directory)
                alignment, source = (lbs, "block device logical block size") if lbs else (4096, "default 4096")
            for size in (alignment, 4096):
                buf = aligned_buffer(size)
                try:
                    os.pwritev(fd, [memoryview(buf)[:size]], 0)
                    os.preadv(fd, [memoryview(buf)[:size]], 0)
                except OSError as exc:
                    if size == 4096:
                        raise PreflightError(
                            f"O_DIRECT I/O fails on {directory} ({fstype}): {exc.strerror}",
                            "use storage.type=local_fs",
                        ) from None
                    continue
                return size, source if size == alignment else "probe (4096)"
            raise AssertionError("unreachable")
        finally:
            os.close(fd)
            os.unlink(probe)

    def open(self, key: str, mode: str) -> _PosixHandle:
        path = self.path_of(key)
        try:
            if mode == READ_FOREIGN:  # a FIFO or a device at a file's name is refused, never waited on
                fd = open_regular(path, flags=self.open_flags, follow=False)
            elif mode == "r":  # the run's own file
                fd = os.open(path, os.O_RDONLY | self.open_flags | os.O_CLOEXEC | os.O_NOFOLLOW)
            else:  # "x": a new file only (O_EXCL), never one that someone else's
                flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if mode == "x" else 0)
                fd = os.open(path, flags | self.open_flags | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise io_error("open", path, exc) from None
        return _PosixHandle(fd, path)

    #: datagen may write small files through open_buffered (the page cache) on direct_fs
    small_files_buffered = True

    def open_buffered(self, key: str) -> _PosixHandle:
        """Create `key` (a new file only, O_EXCL) for writing through the page cache, also
        on direct_fs (small files that O_DIRECT would pad and truncate: see datagen)."""
        path = self.path_of(key)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise io_error("open", path, exc) from None
        return _PosixHandle(fd, path)

    def write_at(self, handle: _PosixHandle, buf: memoryview, offset: int) -> int:
        total = len(buf)
        done = 0
        try:
            while done < total:
                n = os.pwritev(handle.fd, [buf[done:]], offset + done)
                if n <= 0:
                    raise OSError(28, "short write")  # ENOSPC is what a 0-byte write means here
                done += n
        except OSError as exc:
            raise io_error("write", handle.path, exc, offset + done) from None
        return done

    def read_at(self, handle: _PosixHandle, buf: memoryview, offset: int) -> int:
        total = len(buf)
        done = 0
        try:
            while done < total:
                n = os.preadv(handle.fd, [buf[done:]], offset + done)
                if n == 0:
                    break
                done += n
        except OSError as exc:
            raise io_error("read", handle.path, exc, offset + done) from None
        return done

    def writer(self, handle: _PosixHandle, view: memoryview) -> Any:
        """os.pwrite itself, bound to the file and buffer: no Python frame per operation.

        A short write is returned as such and an OSError raised as such; the engine
        finishes the one with write_at and reports the other with the path and offset.
        """
        return functools.partial(os.pwrite, handle.fd, view)

    def reader(self, handle: _PosixHandle, view: memoryview, keep: bool = True) -> Any:
        """os.preadv itself, bound to the file and buffer (see writer); the kernel reads
        into `view` whatever `keep` says."""
        return functools.partial(os.preadv, handle.fd, [view])

    def fd_for(self, handle: _PosixHandle) -> int | None:
        return handle.fd

    def fsync(self, handle: _PosixHandle) -> None:
        try:
            os.fsync(handle.fd)
        except OSError as exc:
            raise io_error("fsync", handle.path, exc) from None

    def close(self, handle: _PosixHandle) -> None:
        try:
            os.close(handle.fd)
        except OSError as exc:
            raise io_error("close", handle.path, exc) from None

    def truncate(self, handle: _PosixHandle, size: int) -> None:
        try:
            os.ftruncate(handle.fd, size)
        except OSError as exc:
            raise io_error("truncate", handle.path, exc) from None

    def _parent_beneath(self, key: str) -> tuple[int, str] | None:
        """(fd of the directory holding `key`, its name), reached from the root without
        following any symlink; None when a directory on the way is gone or is a link
        (then what the key names is not the run's, and is left alone)."""
        *parents, name = [part for part in key.split("/") if part and part != "."]
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parents:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                dir_fd=fd)
                os.close(fd)
                fd = child
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            raise
        return fd, name

    def remove(self, key: str) -> None:
        # Neither the file nor a directory on its way is followed: a link planted in the
        # run directory goes (or keeps its place), its target stays.
        path = self.path_of(key)
        try:
            found = self._parent_beneath(key)
            if found is not None:
                fd, name = found
                try:
                    os.unlink(name, dir_fd=fd)
                finally:
                    os.close(fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise io_error("remove", path, exc) from None

    def size_of(self, key: str) -> int:
        path = self.path_of(key)
        try:
            return os.lstat(path).st_size
        except OSError as exc:
            raise io_error("stat", path, exc) from None

    def makedirs(self, key: str) -> None:
        path = self.path_of(key)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise io_error("mkdir", path, exc) from None

    def create_exclusive(self, key: str, data: bytes) -> bool:
        path = self.path_of(key)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise io_error("create", path, exc) from None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as exc:
            raise io_error("write", path, exc) from None
        finally:
            os.close(fd)
        return True

    def first_entry(self, key: str) -> str | None:
        pending = [self.path_of(key)]
        try:
            while pending:
                try:
                    listing = os.scandir(pending.pop())
                except (FileNotFoundError, NotADirectoryError):
                    continue
                with listing:
                    for entry in listing:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
                        else:  # a file, a link, a FIFO: anything is someone's
                            return entry.path
        except OSError as exc:
            raise io_error("list", self.path_of(key), exc) from None
        return None

    def not_a_dir(self, key: str) -> str | None:
        path = self.root
        for part in [p for p in key.split("/") if p and p != "."]:
            path = os.path.join(path, part)
            if not os.path.lexists(path):
                return None
            if not os.path.isdir(path):  # a file, a device, or a link to anything but a directory
                return path
        return None

    def remove_dir(self, key: str) -> None:
        try:
            found = self._parent_beneath(key)
            if found is not None:
                fd, name = found
                try:
                    os.rmdir(name, dir_fd=fd)
                finally:
                    os.close(fd)
        except OSError:
            pass  # not empty (something not ours is inside), a link, or already gone: leave it

    def sync_filesystem(self) -> None:
        """syncfs(2) on the file system holding the root (sync(2) where there is no syncfs):
        commits the journal, with the frees of removed files and their discards (a
        filesystem mounted with `discard` sends them at the commit), and writes back dirty
        data."""
        syncfs = _syncfs()
        if syncfs is not None:
            try:
                fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                fd = -1
            if fd >= 0:
                try:
                    if syncfs(fd) == 0:
                        return
                finally:
                    os.close(fd)
        os.sync()

    def evict(self, key: str, *, synced: bool = False) -> bool:
        """posix_fadvise(DONTNEED) on the file; confirmed when mincore-free reads follow."""
        return evict_file(self.path_of(key), synced=synced)


class LocalFsBackend(PosixBackend):
    """Ordinary buffered POSIX I/O through the page cache."""

    name = "local_fs"
    direct = False

    @classmethod
    def default_io_depth(cls, layout: NodeLayout) -> int:
        """One I/O at a time: buffered I/O goes through the page cache, which a queue does not feed."""
        return 1

    @classmethod
    def io_depth_reason(cls, cpus: int, ranks: int) -> str:
        return "local_fs goes through the page cache, which absorbs writes and reads ahead: one I/O in flight"


class DirectFsBackend(PosixBackend):
    """O_DIRECT I/O: aligned buffers, offsets and lengths; no page cache."""

    name = "direct_fs"
    direct = True
    open_flags = O_DIRECT
    preflight_checks = (*PosixBackend.preflight_checks,
                        "O_DIRECT opens and transfers in the run directory; sizes are multiples of the "
                        "direct-I/O alignment (statx STATX_DIOALIGN, else the logical block size, else 4096)")

    def evict(self, key: str, *, synced: bool = False) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "o_direct": True}

"""An in-memory backend: lets the driver and the workloads be tested without storage."""

from __future__ import annotations

import threading
from typing import Any

from mpibench.backends.base import Backend
from mpibench.config import StorageConfig


class MemoryBackend(Backend):
    """Files are bytearrays in a dict (one process only)."""

    name = "memory"
    direct = True

    def __init__(self, storage: StorageConfig) -> None:
        super().__init__(storage)
        self.files: dict[str, bytearray] = {}
        self._lock = threading.Lock()

    def open(self, key: str, mode: str) -> Any:
        with self._lock:
            if mode == "x" and key in self.files:
                raise FileExistsError(key)
            if mode in ("w", "x"):
                self.files.setdefault(key, bytearray())
            elif key not in self.files:
                raise FileNotFoundError(key)
        return key

    def create_exclusive(self, key: str, data: bytes) -> bool:
        with self._lock:
            if key in self.files:
                return False
            self.files[key] = bytearray(data)
        return True

    def first_entry(self, key: str) -> str | None:
        with self._lock:
            return next((k for k in sorted(self.files) if k.startswith(key.rstrip("/") + "/")), None)

    def write_at(self, handle: Any, buf: memoryview, offset: int) -> int:
        with self._lock:
            data = self.files[handle]
            end = offset + len(buf)
            if len(data) < end:
                data.extend(b"\0" * (end - len(data)))
            data[offset:end] = buf
        return len(buf)

    def read_at(self, handle: Any, buf: memoryview, offset: int) -> int:
        data = self.files[handle]
        chunk = data[offset: offset + len(buf)]
        buf[: len(chunk)] = chunk
        return len(chunk)

    def close(self, handle: Any) -> None:
        pass

    def truncate(self, handle: Any, size: int) -> None:
        with self._lock:
            del self.files[handle][size:]

    def remove(self, key: str) -> None:
        self.files.pop(key, None)

    def size_of(self, key: str) -> int:
        return len(self.files[key])

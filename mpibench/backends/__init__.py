"""Backend registry: chosen by storage.type and storage.library, imported lazily."""

from __future__ import annotations

import importlib

from mpibench.backends.base import Backend
from mpibench.config import StorageConfig
from mpibench.errors import ConfigError

# (storage type, library) -> (module, class, package to install when the import fails)
REGISTRY: dict[tuple[str, str], tuple[str, str, str]] = {
    ("local_fs", "native"): ("mpibench.backends.posix", "LocalFsBackend", ""),
    ("direct_fs", "native"): ("mpibench.backends.posix", "DirectFsBackend", ""),
    ("direct_fs", "s3dlio"): ("mpibench.backends.s3dlio_direct", "S3dlioDirectBackend", "s3dlio"),
    ("s3", "native"): ("mpibench.backends.s3", "S3Backend", "s3dlio"),
    ("s3", "s3dlio"): ("mpibench.backends.s3", "S3Backend", "s3dlio"),
    ("null", "native"): ("mpibench.backends.null", "NullBackend", ""),
}


def backend_class(storage_type: str, library: str) -> type[Backend]:
    """The Backend class for a storage type and library, with an install hint if missing."""
    try:
        module_name, class_name, package = REGISTRY[(storage_type, library)]
    except KeyError:
        raise ConfigError(f"no backend for storage.type={storage_type} with storage.library={library}") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"pip install {package}" if package else "reinstall mpibench"
        raise ConfigError(f"storage.type={storage_type} needs {package or module_name}: {exc}", hint) from None
    return getattr(module, class_name)


def make_backend(storage: StorageConfig, **kwargs: object) -> Backend:
    """Instantiate the backend for a storage configuration."""
    return backend_class(storage.type, storage.library)(storage, **kwargs)  # type: ignore[arg-type]

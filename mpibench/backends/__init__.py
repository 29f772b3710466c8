"""Backend registry: chosen by storage.type and storage.library, imported lazily.

Adding a backend takes one module (a Backend subclass) and one `register(...)` line
(below for the built-in ones; anywhere before the configuration is read for others).
"""

from __future__ import annotations

import importlib

from mpibench.backends import faulty
from mpibench.backends.base import Backend
from mpibench.config import STORAGE_TYPES
from mpibench.errors import ConfigError

# (storage type, library) -> (module, class, package to install when the import fails)
REGISTRY: dict[tuple[str, str], tuple[str, str, str]] = {}


def register(storage_type: str, module: str, class_name: str, *, library: str = "native",
             package: str = "") -> None:
    """Make `storage.type=storage_type` (with storage.library=library) use `module`.`class_name`
    (imported when first used; `package`: what to pip install when that import fails)."""
    REGISTRY[(storage_type, library)] = (module, class_name, package)
    if storage_type not in STORAGE_TYPES:
        STORAGE_TYPES.append(storage_type)


register("local_fs", "mpibench.backends.posix", "LocalFsBackend")
register("direct_fs", "mpibench.backends.posix", "DirectFsBackend")
register("direct_fs", "mpibench.backends.s3dlio_direct", "S3dlioDirectBackend", library="s3dlio", package="s3dlio")
register("s3", "mpibench.backends.s3", "S3Backend", package="s3dlio")
register("s3", "mpibench.backends.s3", "S3Backend", library="s3dlio", package="s3dlio")
register("null", "mpibench.backends.null", "NullBackend")


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
    cls: type[Backend] = getattr(module, class_name)
    if faulty.active():  # MPIBENCH_FAULT: the reliability tests' faults, injected by the backend
        return faulty.wrap(cls)
    return cls

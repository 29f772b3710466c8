"""Workloads say WHAT to move; backends say HOW. Looked up by name, imported lazily."""

from __future__ import annotations

import importlib

from mpibench.errors import ConfigError
from mpibench.workloads.base import Workload

__all__ = ["Workload", "get_workload"]

# A workload module imports Workload from mpibench.workloads.base, never from this registry
# (which imports the modules by name): so the registry and its workloads form no import cycle.
_WORKLOADS = {
    "bandwidth": "mpibench.workloads.bandwidth",
    "datagen": "mpibench.workloads.datagen",
    "train": "mpibench.workloads.train",
    "checkpoint": "mpibench.workloads.checkpoint",
    "modelload": "mpibench.workloads.modelload",
    "kvcache": "mpibench.workloads.kvcache",
    "metadata": "mpibench.workloads.metadata",
}


def get_workload(name: str) -> Workload:
    """The workload registered under `name`."""
    try:
        module = importlib.import_module(_WORKLOADS[name])
    except KeyError:
        raise ConfigError(f"unknown workload {name!r}", f"choose one of {', '.join(_WORKLOADS)}") from None
    except ImportError as exc:
        raise ConfigError(f"workload {name} is not available: {exc}") from None
    return module.WORKLOAD

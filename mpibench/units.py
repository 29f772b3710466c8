"""Parsing and formatting of byte sizes and rates (pure, no I/O)."""

from __future__ import annotations

import re

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4

# Binary units (KiB, MiB, ...) and IOR's single letters (k, M, G, T: also binary, as in
# IOR and fio); SI units (kB, MB, GB, TB) are powers of 1000 and must be spelled out.
_MULTIPLIERS = {
    "": 1,
    "b": 1,
    "k": KiB,
    "kib": KiB,
    "m": MiB,
    "mib": MiB,
    "g": GiB,
    "gib": GiB,
    "t": TiB,
    "tib": TiB,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object) -> int:
    """Turn 4096, '4KiB', '1MiB', '2G', '1.5GiB' or '10MB' into a number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"size {value!r} is not a whole number of bytes")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as 4096, 4KiB or 1MiB, got {value!r}")
    match = _SIZE_RE.match(value)
    if not match:
        raise ValueError(f"cannot read size {value!r}; write e.g. 4096, 4KiB, 1MiB, 16MiB, 2GiB")
    number, unit = match.groups()
    multiplier = _MULTIPLIERS.get(unit.lower())
    if multiplier is None:
        raise ValueError(
            f"unknown size unit {unit!r} in {value!r}; use B, KiB, MiB, GiB, TiB "
            "(or k, M, G, T), or kB, MB, GB, TB for powers of 1000"
        )
    total = float(number) * multiplier if "." in number else int(number) * multiplier
    if isinstance(total, float) and not total.is_integer():
        raise ValueError(f"size {value!r} is not a whole number of bytes")
    return int(total)


def si_size_hint(value: object) -> str | None:
    """For a size written with a 1000-based unit ('4MB'), the hint that it is not 4 MiB; else None.

    Storage people say MB for MiB often enough that '4MB' is more likely a slip than a wish
    for 4,000,000 bytes; the value is still read as written."""
    if not isinstance(value, str):
        return None
    match = _SIZE_RE.match(value)
    if not match or match.group(2).lower() not in ("kb", "mb", "gb", "tb"):
        return None
    number, unit = match.groups()
    binary = unit[0].upper() + "iB"
    return (f"{value.strip()} is {parse_size(value)} bytes (1000-based); did you mean {number}{binary} "
            f"({parse_size(number + binary)} bytes)? Write {number}{binary}, or the bytes in digits to keep "
            "this size without the hint")


def format_size(nbytes: float) -> str:
    """Format a byte count with binary units, e.g. 1.50 GiB."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} PiB"


def format_exact_size(nbytes: int) -> str:
    """Format a byte count as the shortest exact binary unit (4KiB, 1MiB, 4100)."""
    for unit, mult in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if nbytes and nbytes % mult == 0:
            return f"{nbytes // mult}{unit}"
    return str(nbytes)


def gb_per_s(nbytes: float, seconds: float) -> float:
    """Bandwidth in GB/s (10**9 bytes per second); 0 when no time elapsed."""
    return nbytes / 1e9 / seconds if seconds > 0 else 0.0

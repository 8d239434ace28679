"""Durations and sizes as operators write them: ``500ms``, ``30s``, ``10m``, ``1h``; ``512MiB``, ``4GiB``."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, None: 1,
}


class Seconds(float):
    """A duration in seconds; config accepts a number or ``500ms``/``30s``/``10m``/``1h``/``1d``."""

    @classmethod
    def parse(cls, value: object) -> Seconds:
        if isinstance(value, bool):
            raise ValueError("expected a duration such as 500ms, 30s, 10m or 1h")
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str) and (m := _DURATION.match(value)):
            number = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        else:
            raise ValueError(f"invalid duration {value!r}: expected e.g. 500ms, 30s, 10m or 1h")
        if number < 0:
            raise ValueError(f"invalid duration {value!r}: must not be negative")
        return cls(number)

    def __repr__(self) -> str:
        return format_duration(self)


class Bytes(int):
    """A size in bytes; config accepts a number or ``512MiB``/``4GiB``/``10MB``."""

    @classmethod
    def parse(cls, value: object) -> Bytes:
        if isinstance(value, bool):
            raise ValueError("expected a size such as 512MiB or 4GiB")
        if isinstance(value, int):
            number = value
        elif isinstance(value, str) and (m := _SIZE.match(value)):
            unit = m.group(2).lower() if m.group(2) else None
            number = int(float(m.group(1)) * _SIZE_UNITS[unit])
        else:
            raise ValueError(f"invalid size {value!r}: expected e.g. 512MiB, 4GiB or 1000000")
        if number < 0:
            raise ValueError(f"invalid size {value!r}: must not be negative")
        return cls(number)

    def __repr__(self) -> str:
        return format_size(self)


def format_duration(seconds: float) -> str:
    for unit, factor in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= factor and float(seconds / factor).is_integer():
            return f"{int(seconds / factor)}{unit}"
    if seconds < 1 and float(seconds * 1000).is_integer():
        return f"{int(seconds * 1000)}ms"
    return f"{float(seconds):g}s"


def format_size(size: int) -> str:
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(int(size))

"""Single byte ranges (RFC 9110 section 14): what a player sends to fetch or resume a segment."""

from __future__ import annotations


class RangeNotSatisfiable(ValueError):
    """Answered 416 with ``Content-Range: bytes */<size>``."""


def parse_range(header: str, size: int) -> tuple[int, int]:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> (start, end exclusive) within ``size``.

    Malformed, multi-range and past-the-end requests raise :class:`RangeNotSatisfiable`.
    """
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        raise RangeNotSatisfiable("only byte ranges are supported")
    spec = spec.strip()
    if "," in spec:
        raise RangeNotSatisfiable("only one range per request is supported")
    first, dash, last = spec.partition("-")
    first, last = first.strip(), last.strip()
    if not dash or (first and not first.isdigit()) or (last and not last.isdigit()) or not (first or last):
        raise RangeNotSatisfiable(f"malformed range {header!r}")
    if not first:  # suffix range: the last N bytes (section 14.1.2)
        length = int(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable("empty suffix range")
        return max(0, size - length), size
    start = int(first)
    end = int(last) + 1 if last else size
    if start >= size or end <= start:
        raise RangeNotSatisfiable(f"range {header!r} is outside the {size} bytes of the file")
    return start, min(end, size)

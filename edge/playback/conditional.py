"""Byte ranges (RFC 9110 section 14): what a player sends to fetch or resume a segment.

Both paths (edge/playback/routes.py and edge/fastpath/protocol.py) read a ``Range`` with
:func:`parse_range`: a range to answer 206, None to answer 200 with the whole body, or
:class:`RangeNotSatisfiable` for 416.
"""

from __future__ import annotations


class RangeNotSatisfiable(ValueError):
    """Answered 416 with ``Content-Range: bytes */<size>``."""


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> (start, end exclusive) within ``size``.

    None means "ignore the header": an unknown unit or a range set that does not parse may be
    ignored (section 14.2), and several ranges are answered with the whole body rather than a
    multipart/byteranges one (also allowed there). Only a well-formed single range that lies
    wholly outside the representation raises :class:`RangeNotSatisfiable` (section 15.5.17).
    """
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    specs = [s.strip() for s in spec.split(",")]
    specs = [s for s in specs if s]  # a list rule allows empty elements (section 5.6.1)
    if len(specs) != 1:
        return None
    first, dash, last = specs[0].partition("-")
    if not dash or not (first or last) or not _digits(first) or not _digits(last):
        return None
    if not first:  # suffix range: the last N bytes (section 14.1.2)
        length = int(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable("the suffix range selects no bytes")
        return max(0, size - length), size
    start = int(first)
    if last and int(last) < start:
        return None  # an invalid range-spec (section 14.1.1)
    if start >= size:
        raise RangeNotSatisfiable(f"the range starts past the end of the {size} bytes")
    end = int(last) + 1 if last else size
    return start, min(end, size)


def _digits(text: str) -> bool:
    # str.isdigit() takes other scripts' digits and superscripts; 1*DIGIT is ASCII only.
    return text == "" or (text.isascii() and text.isdigit())

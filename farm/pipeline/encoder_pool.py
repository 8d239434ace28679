"""Warm encoder processes kept across jobs by a long-lived process (a farm worker).

Every rung of a job needs an encoder process (farm/pipeline/encoder.py). Started per job, each
pays an interpreter start and the PyAV/numpy imports, ~0.3 s of CPU apiece: on a 10 s clip with
a four-rung ladder that is ~1.2 s of a 2-core machine's CPU before the first frame is encoded.
A worker enables this pool once: it starts the encoders before any job arrives, and every
encoder that finished its job cleanly comes back here for the next job. One that failed, was
killed or cancelled is never reused (the job's clean-up kills it); a missing one is started
fresh by :func:`take`.

Disabled (the default) this module changes nothing: ``streamgate transcode`` starts its
encoders per call and nothing outlives it.
"""

from __future__ import annotations

import logging
import threading

from streamgate.farm.pipeline.encoder import EncoderHandle

log = logging.getLogger(__name__)


class _Pool:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.size = 0  # 0: disabled
        self.idle: list[EncoderHandle] = []


_pool = _Pool()


def enable(size: int) -> None:
    """Keep up to ``size`` idle encoders, and start them now.

    Call this from a thread that lives as long as the process (the worker's main thread): an
    encoder's parent-death signal follows the thread that started it.
    """
    with _pool.lock:
        _pool.size = max(0, size)
        while len(_pool.idle) < _pool.size:
            _pool.idle.append(EncoderHandle())


def enabled() -> bool:
    return _pool.size > 0


def take(count: int) -> list[EncoderHandle]:
    """``count`` encoders: warm ones first, then fresh ones (always ``count``)."""
    out: list[EncoderHandle] = []
    with _pool.lock:
        while _pool.idle and len(out) < count:
            encoder = _pool.idle.pop()
            if encoder.reusable():
                out.append(encoder)
            else:
                _discard(encoder)
    while len(out) < count:
        out.append(EncoderHandle())
    return out


def give_back(encoder: EncoderHandle) -> bool:
    """Keep ``encoder`` for the next job if the pool wants it; else the caller stops it."""
    if not encoder.reusable():
        return False
    with _pool.lock:
        if len(_pool.idle) >= _pool.size:
            return False
        encoder.recycle()
        _pool.idle.append(encoder)
        return True


def close() -> None:
    """Stop every idle encoder (closing its input ends it)."""
    with _pool.lock:
        idle, _pool.idle, _pool.size = _pool.idle, [], 0
    for encoder in idle:
        encoder.stop()


def _discard(encoder: EncoderHandle) -> None:
    encoder.kill()
    encoder.stop()

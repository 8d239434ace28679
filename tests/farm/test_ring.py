"""The shared-memory frame ring: layout, a reader's view, and unlinking."""

from __future__ import annotations

import os

import numpy as np
import pytest
from support import shm_segments

from streamgate.farm.pipeline.ring import RING_PREFIX, FrameRing, RingView, split_planes


def my_rings() -> set[str]:
    return {name for name in shm_segments() if name.startswith(f"{RING_PREFIX}{os.getpid()}-")}


def test_ring_round_trip_and_unlink() -> None:
    with FrameRing(64, 48, 3) as ring:
        assert ring.name in my_rings()
        y, u, v = ring.planes(1)
        assert (y.shape, u.shape, v.shape) == ((48, 64), (24, 32), (24, 32))
        y[:] = 7
        u[:] = 8
        v[:] = 9
        view = RingView(ring.name, 64, 48, 3)
        ring.unlink()  # a mapping outlives the name
        assert ring.name not in my_rings()
        ry, ru, rv = split_planes(view.slot(1), 64, 48)
        assert int(ry.sum()) == 7 * 64 * 48 and int(ru.max()) == 8 and int(rv.min()) == 9
        assert not np.any(view.slot(0))
        view.close()
    assert not my_rings()


def test_ring_needs_even_sizes() -> None:
    with pytest.raises(ValueError, match="even"):
        FrameRing(63, 48, 2)
    assert not my_rings()

"""The shared-memory frame ring between the decoder and the encoder processes.

``slots`` frames of ``width`` x ``height`` yuv420p (I420: Y plane, then U, then V, no padding),
in one ``multiprocessing.shared_memory`` segment. The decoder (the creator) writes slot
``n % slots`` only after every encoder has released it, which bounds memory to the ring size
and gives back-pressure. Who may read or reuse a slot is said over each encoder's pipes
(see ``farm/pipeline/encoder.py``); the ring itself only holds pixels.

Leaks: the creator unlinks the name as soon as every encoder has mapped it (a mapping outlives
its name), so ``/dev/shm`` is clean from then on whatever happens to any process.
"""

from __future__ import annotations

import mmap
import os
import secrets
from multiprocessing import shared_memory

import numpy as np

RING_PREFIX = "streamgate-ring-"


def frame_bytes(width: int, height: int) -> int:
    return width * height * 3 // 2


class FrameRing:
    """The decoder's side: creates, writes and unlinks the segment."""

    def __init__(self, width: int, height: int, slots: int) -> None:
        if width % 2 or height % 2:
            raise ValueError("ring frames are yuv420p: width and height must be even")
        self.width, self.height, self.slots = width, height, slots
        self.slot_size = frame_bytes(width, height)
        # A recognisable name (``ls /dev/shm``), unique per creating process and ring.
        name = f"{RING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self._shm: shared_memory.SharedMemory | None = shared_memory.SharedMemory(
            name=name, create=True, size=self.slot_size * slots)
        self.name = self._shm.name
        self._unlinked = False
        self._frames = np.ndarray((slots, height * 3 // 2, width), dtype=np.uint8, buffer=self._shm.buf)

    def slot(self, index: int) -> np.ndarray:
        """The I420 array of slot ``index``: shape (height * 3 / 2, width)."""
        return self._frames[index]

    def planes(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return split_planes(self._frames[index], self.width, self.height)

    def unlink(self) -> None:
        """Remove the name (idempotent); mappings stay valid until closed."""
        if self._shm is not None and not self._unlinked:
            self._unlinked = True
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass

    def close(self) -> None:
        self.unlink()
        if self._shm is not None:
            shm, self._shm = self._shm, None
            del self._frames
            try:
                shm.close()
            except BufferError:  # a numpy view is still alive somewhere; the OS frees it at exit
                pass

    def __enter__(self) -> FrameRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def split_planes(frame: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, U and V views of one I420 frame array."""
    flat = frame.reshape(-1)
    ysize, csize = width * height, (width // 2) * (height // 2)
    y = flat[:ysize].reshape(height, width)
    u = flat[ysize:ysize + csize].reshape(height // 2, width // 2)
    v = flat[ysize + csize:ysize + 2 * csize].reshape(height // 2, width // 2)
    return y, u, v


class RingView:
    """An encoder's side: maps the segment by name without the resource tracker (the creator
    owns the name; a reader registering it would unlink it or warn at exit). Mapped writable
    only because PyAV wraps buffers as writable memoryviews; encoders never write."""

    def __init__(self, name: str, width: int, height: int, slots: int) -> None:
        self.width, self.height, self.slots = width, height, slots
        size = frame_bytes(width, height) * slots
        fd = os.open(f"/dev/shm/{name.lstrip('/')}", os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._frames = np.ndarray((slots, height * 3 // 2, width), dtype=np.uint8, buffer=self._map)

    def slot(self, index: int) -> np.ndarray:
        return self._frames[index]

    def close(self) -> None:
        del self._frames
        try:
            self._map.close()
        except BufferError:
            pass

"""How a farm worker should read a source object: a scratch download, or ranged reads under PyAV.

One command (``.venv/bin/python bench/farm_source_read.py``): starts a SeaweedFS (the tests'
helper), generates a 30-60 MB source, stores it, then times what the pipeline does with a source
(probe: open and read the headers; decode pass: open again and demux every packet) two ways:

- scratch: ``store.download`` into a local file, then PyAV on the path (farm/publish.py);
- ranged: PyAV ``av.open`` on a file-like object whose reads are ranged GETs (1 MiB aligned blocks, the last 16 kept).

Prints the medians of the rounds and the ratio; the faster way is what farm/publish.py does.
"""

from __future__ import annotations

import argparse
import collections
import io
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from storage_support import start_seaweedfs, stop_seaweedfs  # noqa: E402

from streamgate.common.config import config_from_tree  # noqa: E402
from streamgate.common.synth import make_video  # noqa: E402
from streamgate.farm.publish import StoreLoop  # noqa: E402

KEY = "sources/bench/source.mp4"


class RangedFile(io.RawIOBase):
    """A seekable, read-only file over an object: aligned blocks fetched by ranged GETs, the
    last few kept (the demuxer seeks between the moov at the end and interleaved samples)."""

    def __init__(self, store_loop: StoreLoop, key: str, size: int, block: int, keep: int = 16) -> None:
        self.store_loop, self.key, self.size, self.block, self.keep = store_loop, key, size, block, keep
        self.pos = 0
        self.blocks: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self.gets = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def _block(self, index: int) -> bytes:
        data = self.blocks.get(index)
        if data is None:
            start = index * self.block
            data = self.store_loop.call(self.store_loop.store.get(self.key, start, start + self.block))
            self.gets += 1
            self.blocks[index] = data
            while len(self.blocks) > self.keep:
                self.blocks.popitem(last=False)
        else:
            self.blocks.move_to_end(index)
        return data

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.pos >= self.size:
            return 0
        index, offset = divmod(self.pos, self.block)
        data = self._block(index)
        n = min(len(target), len(data) - offset)
        target[:n] = data[offset:offset + n]
        self.pos += n
        return n


def use_source(opener) -> int:  # type: ignore[no-untyped-def]
    """The pipeline's reads of a source: a probe (headers), then a full demux."""
    with opener() as container:
        _ = [s.codec_context.name for s in container.streams]
    packets = 0
    with opener() as container:
        for _packet in container.demux():
            packets += 1
    return packets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--readahead", type=int, default=2**20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sgbench-src-"))
    proc, server = start_seaweedfs(work / "weed")
    try:
        source = make_video(work / "source.mp4", seconds=args.seconds, width=1920, height=1080, fps=30,
                            preset="ultrafast")
        size = source.stat().st_size
        config = config_from_tree({"storage": {"data_dir": str(work / "data"), **server.storage_tree()}})
        store_loop = StoreLoop(config)
        store_loop.call(store_loop.store.put(KEY, source))
        scratch_s, ranged_s, gets = [], [], 0
        for i in range(args.rounds):
            t0 = time.perf_counter()
            local = work / f"scratch-{i}.mp4"
            store_loop.call(store_loop.store.download(KEY, local))
            n1 = use_source(lambda local=local: av.open(str(local)))
            scratch_s.append(time.perf_counter() - t0)
            local.unlink()
            t0 = time.perf_counter()
            files: list[RangedFile] = []

            def ranged(files: list[RangedFile] = files) -> av.container.InputContainer:
                f = RangedFile(store_loop, KEY, size, args.readahead)
                files.append(f)
                return av.open(io.BufferedReader(f, buffer_size=256 * 1024))

            n2 = use_source(ranged)
            ranged_s.append(time.perf_counter() - t0)
            gets = sum(f.gets for f in files)
            assert n1 == n2, (n1, n2)
        store_loop.close()
        scratch, rng = statistics.median(scratch_s), statistics.median(ranged_s)
        print(f"source {size / 2**20:.1f} MiB, {n1} packets, {args.rounds} rounds (medians)")
        print(f"scratch download + local reads: {scratch:.3f} s")
        print(f"ranged reads under PyAV ({args.readahead // 1024} KiB blocks, {gets} GETs): {rng:.3f} s")
        print(f"ranged / scratch: {rng / scratch:.2f}x  -> faster: {'scratch' if scratch <= rng else 'ranged'}")
    finally:
        stop_seaweedfs(proc, server)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

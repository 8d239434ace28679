"""StreamGate: tus uploads, a PyAV transcode farm and HLS/DASH edges, on bare metal.

The code lives in four folders installed as ``streamgate.edge``, ``streamgate.farm``,
``streamgate.control`` and ``streamgate.common``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("streamgate")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

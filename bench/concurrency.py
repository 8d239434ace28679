"""Benchmark: eight 10 s jobs through two warm farm workers against the same eight ladders by
the ffmpeg CLI, at most two at a time (issue 18, goal 4: total wall <= 1.0x).

    .venv/bin/python bench/concurrency.py [--runs 1] [--jobs 8] [--workers 2] [--quick]

The farm side is what ``streamgate run`` starts for transcoding (``streamgate broker`` and
``streamgate farm``, two workers, on a data dir of its own); the jobs are submitted at once and
timed to the last one done. The harness is bench/short_clip.py's.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import short_clip  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    defaults = {"--jobs": "8", "--workers": "2", "--runs": "1"}
    for flag, value in defaults.items():
        if flag not in args:
            args += [flag, value]
    if "--quick" in args:  # short_clip's smoke run, with two jobs on two workers
        args[args.index("--jobs") + 1] = "2"
    return short_clip.main(args)


if __name__ == "__main__":
    sys.exit(main())

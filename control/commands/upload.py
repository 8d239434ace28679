from __future__ import annotations

import argparse

from ...common.config import Config
from ..cli import NotYetError

HELP = "Upload a video over tus with a progress bar, follow its transcode, print the HLS and DASH URLs."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace, config: Config) -> int:
    raise NotYetError("edge intake (issue 6) is not built yet")

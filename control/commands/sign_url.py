from __future__ import annotations

import argparse

from ...common.config import Config
from ..cli import NotYetError

HELP = "Print a signed, expiring playback URL for a private video."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace, config: Config) -> int:
    raise NotYetError("edge intake (issue 6) is not built yet")

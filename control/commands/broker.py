from __future__ import annotations

import argparse

from ...common.config import Config
from ..cli import NotYetError

HELP = "Run the farm broker (ZeroMQ job queue with a durable journal) alone, for a systemd unit."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace, config: Config) -> int:
    raise NotYetError("the farm service (issue 4) is not built yet")

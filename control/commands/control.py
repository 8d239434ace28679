from __future__ import annotations

import argparse

from ...common.config import Config
from ..cli import NotYetError

HELP = "Run the control plane (registration, fleet view, scaling) alone, for a systemd unit."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace, config: Config) -> int:
    raise NotYetError("the control plane (issue 7) is not built yet")

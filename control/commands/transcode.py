from __future__ import annotations

import argparse

from ...common.config import Config
from ..cli import NotYetError

HELP = "Run the transcode pipeline locally (no broker) on INPUT into --out DIR."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace, config: Config) -> int:
    raise NotYetError("the farm pipeline (issue 3) is not built yet")

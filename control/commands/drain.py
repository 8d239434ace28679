from __future__ import annotations

import argparse

from ...common.config import Config
from ..cli import NotYetError

HELP = "Put this node's services into maintenance (drain) in Consul."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace, config: Config) -> int:
    raise NotYetError("the control plane (issue 7) is not built yet")

from __future__ import annotations

import argparse

from streamgate.common.config import Config

HELP = "Put this node's services into maintenance (drain) in Consul."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", default="drained with streamgate drain",
                        help="the note operators see on the maintenance check")


def main(args: argparse.Namespace, config: Config) -> int:
    from streamgate.control.commands.undrain import set_maintenance_cli

    return set_maintenance_cli(config, True, args.reason)

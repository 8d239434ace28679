from __future__ import annotations

import argparse

from streamgate.common.config import Config, dump_config

HELP = "Configuration: 'config check' prints the effective config or the precise error."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["check"], help="check: validate and print the effective config")


def main(args: argparse.Namespace, config: Config) -> int:
    # Loading already validated it (the error path exits 2 in cli.main); print what is in force.
    print(dump_config(config), end="")
    return 0

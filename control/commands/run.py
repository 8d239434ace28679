from __future__ import annotations

import argparse

from streamgate.common.config import Config

HELP = "Run a single node: edge, broker, farm pool and control under one supervisor."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace, config: Config) -> int:
    from streamgate.control.supervisor import run
    from streamgate.edge.access.origin import public_origin

    public_origin(config)  # ConfigError (exit 2) before any role starts: no safe SIWE domain

    global_args = [f"--log-level={args.log_level}"]
    if args.config:
        global_args.append(f"--config={args.config}")
    return run(config, global_args)

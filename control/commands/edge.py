from __future__ import annotations

import argparse

from ...common.config import Config, supervisor_pid

HELP = "Run an edge (playback, uploads, API) alone, for a systemd unit."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, help="listen port (default: server.port)")


def main(args: argparse.Namespace, config: Config) -> int:
    import msgspec

    from ...common.service import run_service
    from ...edge.server import serve

    if args.port:
        config = msgspec.structs.replace(config, server=msgspec.structs.replace(config.server, port=args.port))
    return run_service("edge", serve, config, parent_pid=supervisor_pid())

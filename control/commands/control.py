from __future__ import annotations

import argparse

from streamgate.common.config import Config, supervisor_pid

HELP = "Run the control plane (registration, fleet view, scaling) alone, for a systemd unit."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, help="listen port (default: server.control_port)")


def main(args: argparse.Namespace, config: Config) -> int:
    import msgspec

    from streamgate.common.service import run_service
    from streamgate.control.service import serve

    if args.port:
        config = msgspec.structs.replace(
            config, server=msgspec.structs.replace(config.server, control_port=args.port))
    return run_service("control", serve, config, parent_pid=supervisor_pid())

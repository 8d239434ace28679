from __future__ import annotations

import argparse

from streamgate.common.config import Config, supervisor_pid

HELP = "Run an edge (playback, uploads, API) alone, for a systemd unit: N processes on one port."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, help="listen port (default: server.port)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="processes sharing the port with SO_REUSEPORT (default: server.workers; 0 = one per CPU)")


def main(args: argparse.Namespace, config: Config) -> int:
    import msgspec

    from streamgate.common.metrics import init_metrics

    server = config.server
    if args.port:
        server = msgspec.structs.replace(server, port=args.port)
    if args.workers is not None:
        if args.workers < 0:
            raise SystemExit("streamgate edge: --workers must be 0 (one per CPU) or more")
        server = msgspec.structs.replace(server, workers=args.workers)
    config = msgspec.structs.replace(config, server=server)
    from streamgate.edge.access.tokens import require_fleet_secret

    require_fleet_secret(config)  # ConfigError: exit 2 before any process starts

    from streamgate.edge.access.origin import public_origin

    public_origin(config)  # ConfigError (exit 2) before any process starts: no safe SIWE domain
    # Before anything imports prometheus_client: every edge process writes one shared directory.
    init_metrics(config)

    from streamgate.common.service import run_service
    from streamgate.edge import server as edge_server

    global_args = ["--log-level", args.log_level]
    if args.config:
        global_args[:0] = ["--config", args.config]
    edge_server.set_global_args(global_args)
    return run_service("edge", edge_server.serve, config, parent_pid=supervisor_pid())

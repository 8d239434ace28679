from __future__ import annotations

import argparse

from ...common.config import Config, supervisor_pid

HELP = "Run the farm worker pool alone, for a systemd unit."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, help="workers at start (default: transcoder.worker_pool_size)")


def main(args: argparse.Namespace, config: Config) -> int:
    import msgspec

    from ...common.metrics import init_metrics

    if args.workers is not None:
        config = msgspec.structs.replace(config, transcoder=msgspec.structs.replace(
            config.transcoder, worker_pool_size=args.workers))
    if config.metrics.enabled:
        init_metrics(config)  # before anything imports prometheus_client; workers inherit it
    from ...common.service import run_service
    from ...farm.pool import serve

    return run_service("farm", serve, config, parent_pid=supervisor_pid())

from __future__ import annotations

import argparse

from streamgate.common.config import Config, supervisor_pid

HELP = "Run the farm worker pool alone, for a systemd unit."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, help="workers at start (default: transcoder.worker_pool_size)")
    parser.add_argument("--runner", metavar="MODULE:FUNCTION",
                        help="what a worker runs per job (default: the farm pipeline); a file path"
                             " may stand for the module (/path/runners.py:name), as fault tests do")


def main(args: argparse.Namespace, config: Config) -> int:
    import msgspec

    from streamgate.common.metrics import init_metrics

    if args.workers is not None:
        config = msgspec.structs.replace(config, transcoder=msgspec.structs.replace(
            config.transcoder, worker_pool_size=args.workers))
    if config.metrics.enabled:
        init_metrics(config)  # before anything imports prometheus_client; workers inherit it
    from functools import partial

    from streamgate.common.service import run_service
    from streamgate.farm.failover import failover_enabled
    from streamgate.farm.pool import serve

    if failover_enabled(config):
        # A fleet with Consul: the pool runs its share of control's scaling decision (issue 7).
        from streamgate.farm.fleet_pool import serve

    runner = {"runner": args.runner} if args.runner else {}
    return run_service("farm", partial(serve, **runner), config, parent_pid=supervisor_pid())

from __future__ import annotations

import argparse

from streamgate.common.config import Config, supervisor_pid

HELP = "Run the farm broker (ZeroMQ job queue with a durable journal) alone, for a systemd unit."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace, config: Config) -> int:
    from streamgate.common.metrics import init_metrics

    if config.metrics.enabled:
        init_metrics(config)  # before anything imports prometheus_client
    from streamgate.common.service import run_service
    from streamgate.farm.broker import serve
    from streamgate.farm.failover import failover_enabled

    if failover_enabled(config):
        # A fleet with Consul: one leader among the brokers, jobs in Redis (farm/failover.py).
        from streamgate.farm.failover import serve

    return run_service("broker", serve, config, parent_pid=supervisor_pid())

from __future__ import annotations

import argparse
import sys

from streamgate.common.config import Config

HELP = "Take this node's services out of maintenance in Consul."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace, config: Config) -> int:
    return set_maintenance_cli(config, False, "")


def set_maintenance_cli(config: Config, enable: bool, reason: str) -> int:
    """Shared by drain and undrain: 0 done, 1 Consul unreachable, 2 no registry configured."""
    import asyncio

    from streamgate.common.consul.registry import CONSUL_ERRORS, set_maintenance

    verb = "drain" if enable else "undrain"
    if config.registry.type != "consul":
        print(f"streamgate {verb}: registry.type is {config.registry.type!r}; maintenance mode needs "
              "Consul (REGISTRY_TYPE=consul)", file=sys.stderr)
        return 2
    try:
        ids = asyncio.run(set_maintenance(config, enable, reason))
    except CONSUL_ERRORS as exc:
        print(f"streamgate {verb}: Consul at {config.registry.consul_address} unreachable: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if not ids:
        print(f"streamgate {verb}: no StreamGate service of node {config.node_name} is registered")
        return 0
    state = "in maintenance" if enable else "out of maintenance"
    for sid in ids:
        print(f"{sid}: {state}")
    return 0

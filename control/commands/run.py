from __future__ import annotations

import argparse
import importlib
import logging

from streamgate.common.config import Config
from streamgate.common.seed import service_role

HELP = ("Run a single node (every role under one supervisor); in a fleet with "
        "deployment.service_name set, the role doing that seed service.")

log = logging.getLogger("streamgate.run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace, config: Config) -> int:
    role = service_role(config.deployment.service_name)
    if role is not None and config.deployment.mode == "fleet":
        # The seed's microservice binary: one service per process, picked by service_name.
        log.info("deployment.service_name %s: running the %s role (streamgate %s)",
                 config.deployment.service_name, role, role)
        return _run_role(role, args, config)
    if role is not None:
        log.info("deployment.service_name %s: a single node runs every role; %s is the %s here",
                 config.deployment.service_name, config.deployment.service_name, role)
    from streamgate.control.supervisor import run
    from streamgate.edge.access.origin import public_origin

    public_origin(config)  # ConfigError (exit 2) before any role starts: no safe SIWE domain

    global_args = [f"--log-level={args.log_level}"]
    if args.config:
        global_args.append(f"--config={args.config}")
    return run(config, global_args)


def _run_role(role: str, args: argparse.Namespace, config: Config) -> int:
    from streamgate.control.cli import VERBS

    module = importlib.import_module(f"{__package__}.{VERBS[role]}")
    parser = argparse.ArgumentParser(prog=f"streamgate {role}")
    module.add_arguments(parser)
    role_args = parser.parse_args([])
    role_args.config, role_args.log_level = args.config, args.log_level
    return int(module.main(role_args, config) or 0)

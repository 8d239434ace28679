"""The ``streamgate`` command line: one verb per module in ``control/commands``.

Each command module holds ``HELP``, ``add_arguments(parser)`` and ``main(args, config) -> int``
and imports its heavy dependencies inside ``main``, so ``streamgate --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from streamgate.common.config import ConfigError, load_config, supervisor_pid
from streamgate.common.service import configure_logging

# Verbs that serve or check a config: they log the seed keys StreamGate does differently, once per
# node (not again in the processes a supervisor or an edge starts, which carry its pid).
NOTICE_VERBS = {"run", "edge", "broker", "farm", "control", "config"}

# verb -> module under streamgate.control.commands
VERBS: dict[str, str] = {
    "run": "run",
    "edge": "edge",
    "broker": "broker",
    "farm": "farm",
    "control": "control",
    "upload": "upload",
    "videos": "videos",
    "status": "status",
    "config": "config",
    "transcode": "transcode",
    "sign-url": "sign_url",
    "drain": "drain",
    "undrain": "undrain",
}


def _global_options(parser: argparse.ArgumentParser, default: object = None) -> None:
    parser.add_argument("--config", metavar="FILE", default=default,
                        help="config file (default: $STREAMGATE_CONFIG, then ./config.yaml)")
    parser.add_argument("--log-level", default="INFO" if default is None else default,
                        help="DEBUG, INFO, WARNING or ERROR")


def build_parser() -> argparse.ArgumentParser:
    from streamgate import __version__

    parser = argparse.ArgumentParser(
        prog="streamgate",
        description="StreamGate: tus uploads, a PyAV transcode farm and HLS/DASH edges.",
    )
    parser.add_argument("--version", action="version", version=f"streamgate {__version__}")
    _global_options(parser)
    # The same options after the verb (``streamgate run --config x.yaml`` is what people type):
    # SUPPRESS keeps a value given before the verb when none is given after it.
    after_verb = argparse.ArgumentParser(add_help=False)
    _global_options(after_verb, default=argparse.SUPPRESS)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, module_name in VERBS.items():
        module = importlib.import_module(f"{__package__}.commands.{module_name}")
        sub = verbs.add_parser(verb, help=module.HELP, description=module.HELP, parents=[after_verb])
        module.add_arguments(sub)
        sub.set_defaults(_command=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level.upper())
    command = args._command
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"streamgate: config error: {exc}", file=sys.stderr)
        return 2
    if args.verb in NOTICE_VERBS and supervisor_pid() is None:
        from streamgate.common.seed import notices

        for line in notices(config, args.verb):
            logging.getLogger("streamgate.config").warning("%s", line)
    try:
        return int(command.main(args, config) or 0)
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        print(f"streamgate: config error: {exc}", file=sys.stderr)
        return 2


logging.captureWarnings(True)

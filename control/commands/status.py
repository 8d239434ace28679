from __future__ import annotations

import argparse
import sys
from typing import Any

from streamgate.common.config import Config

HELP = "Show farm and fleet figures."

STATUS_STYLE = {"passing": "green", "warning": "yellow", "critical": "red", "maintenance": "magenta",
                "unknown": "dim"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the control service (default: http://127.0.0.1:<server.control_port>)")
    parser.add_argument("--json", action="store_true", help="print the fleet view as JSON")
    parser.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                        help="refresh every SECONDS (default 2) until Ctrl-C")


def main(args: argparse.Namespace, config: Config) -> int:
    import asyncio

    return asyncio.run(_main(args, config))


async def fetch_view(config: Config, url: str | None) -> tuple[dict[str, Any], str]:
    """The fleet view from the control service, or built here when no control service answers."""
    import aiohttp
    import msgspec

    base = (url or f"http://127.0.0.1:{config.server.control_port}").rstrip("/")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(f"{base}/api/v1/fleet", params={"refresh": "1"}) as r:
                r.raise_for_status()
                return await r.json(), f"control at {base}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        if url:
            raise
        from streamgate.common.consul.client import consul_client
        from streamgate.common.consul.discovery import Discovery
        from streamgate.control.fleet import gather_fleet

        client = consul_client(config.registry) if config.registry.type == "consul" else None
        try:
            async with Discovery(config) as discovery, aiohttp.ClientSession() as session:
                view = await gather_fleet(config, client, discovery, session)
        finally:
            if client is not None:
                await client.close()
        return msgspec.to_builtins(view), f"built locally (control at {base} unreachable: {type(exc).__name__})"


def render(view: dict[str, Any], source: str) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    instances = Table(title=f"Instances (registry: {view['registry']})", expand=False)
    for column in ("role", "id", "address", "node", "version", "health"):
        instances.add_column(column)
    for inst in sorted(view["instances"], key=lambda i: (i["role"], i["service_id"])):
        address = f"{inst['address']}:{inst['port']}" if inst["port"] else inst["address"]
        notes = "; ".join(c["output"] for c in inst["checks"] if c["status"] != "passing" and c["output"])
        health = Text(inst["status"], style=STATUS_STYLE.get(inst["status"], ""))
        if notes:
            health.append(f" ({notes[:60]})", style="dim")
        instances.add_row(inst["role"], inst["service_id"], address, inst["node"], inst["version"], health)

    b = view["broker"]
    title = f"Broker {b['endpoint']}" + (f" (leader: {b['leader']})" if b.get("leader") else "")
    broker = Table(title=title, show_header=False)
    broker.add_column("figure")
    broker.add_column("value", justify="right")
    if b["up"]:
        for key in ("queue_length", "total_workers", "active_workers", "idle_workers", "unhealthy_workers",
                    "running_tasks", "total_tasks_processed", "total_tasks_failed"):
            broker.add_row(key.replace("_", " "), str(b[key]))
        broker.add_row("average task time", f"{b['average_task_time']:.2f} s")
    else:
        broker.add_row("state", Text(f"down: {b['error']}", style="red"))

    edges = Table(title="Edges")
    for column in ("instance", "url", "up", "requests", "bytes sent"):
        edges.add_column(column, justify="right" if column in ("requests", "bytes sent") else "left")
    for e in view["edges"]:
        edges.add_row(e["service_id"], e["url"], Text("yes", style="green") if e["up"] else Text(e["error"][:40], style="red"),
                      f"{e['requests_total']:.0f}", f"{e['bytes_sent_total']:.0f}")

    s = view["scaling"]
    if b["up"]:
        scaling = Text.assemble(("Scaling: ", "bold"), f"{s['farm_workers']} farm workers ({s['per_farm']} per farm, "
                                f"{s['action'].replace('_', ' ')}; {s['reason']})")
    else:
        scaling = Text.assemble(("Scaling: ", "bold"), ("no decision without the broker's figures", "yellow"))
    return Group(instances, broker, edges, scaling, Text(f"source: {source}", style="dim"))


async def _main(args: argparse.Namespace, config: Config) -> int:
    import asyncio
    import json

    import aiohttp
    from rich.console import Console
    from rich.live import Live

    console = Console()
    try:
        view, source = await fetch_view(config, args.url)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        print(f"streamgate status: {args.url} unreachable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(view), flush=True) if args.watch else print(json.dumps(view, indent=2))
    elif not args.watch:
        console.print(render(view, source))
    if not args.watch:
        return 0
    try:
        # One JSON document per line under --json --watch; a live table otherwise.
        live = None if args.json else Live(render(view, source), console=console, auto_refresh=False)
        if live is not None:
            live.start()
        try:
            while True:
                await asyncio.sleep(max(args.watch, 0.2))
                try:
                    view, source = await fetch_view(config, args.url)
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    source = f"last view; refresh failed: {type(exc).__name__}"
                if live is None:
                    print(json.dumps(view), flush=True)
                else:
                    live.update(render(view, source), refresh=True)
        finally:
            if live is not None:
                live.stop()
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 0

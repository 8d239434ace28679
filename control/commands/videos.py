from __future__ import annotations

import argparse
from pathlib import Path

from streamgate.common.config import Config
from streamgate.control.edge_client import add_server_arguments

HELP = "List videos as a table."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=50, help="rows (at most 100)")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--mine", action="store_true", help="your wallet's videos, private ones included")
    parser.add_argument("--json", action="store_true", help="print the API's JSON")
    add_server_arguments(parser)


def main(args: argparse.Namespace, config: Config) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from streamgate.control.edge_client import EdgeAPIError, EdgeClient, server_url

    client = EdgeClient(server_url(args, config), Path(args.wallet_key))
    try:
        if args.mine:
            client.sign_in()
        page = client.json("GET", "/api/v1/videos", params={
            "limit": max(1, min(args.limit, 100)), "offset": max(0, args.offset), **({"mine": "1"} if args.mine else {})})
    except (EdgeAPIError, OSError) as exc:
        Console(stderr=True).print(f"[red]streamgate videos: {exc}[/red]")
        return 1
    finally:
        client.close()
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    table = Table(title=f"videos {page['offset'] + 1}-{page['offset'] + len(page['videos'])} of {page['total']}")
    for column in ("id", "title", "status", "progress", "duration", "renditions", "visibility", "created"):
        table.add_column(column)
    style = {"ready": "green", "failed": "red", "transcoding": "yellow", "queued": "cyan", "uploading": "blue"}
    for v in page["videos"]:
        table.add_row(v["id"], v["title"], f"[{style.get(v['status'], '')}]{v['status']}[/]",
                      f"{v['progress'] * 100:.0f}%", f"{v['duration']:.1f}s" if v["duration"] else "",
                      " ".join(r["name"] for r in v["renditions"]), v["visibility"], v["created_at"])
    Console().print(table)
    return 0

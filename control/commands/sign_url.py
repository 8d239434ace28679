from __future__ import annotations

import argparse
from pathlib import Path

from streamgate.common.config import Config
from streamgate.control.edge_client import add_server_arguments

HELP = "Print a signed, expiring playback URL for a private video."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video_id", metavar="ID", help="the video id")
    parser.add_argument("--ttl", type=int, help="seconds the URL stays valid (default and maximum: auth.signed_url_ttl)")
    parser.add_argument("--dash", action="store_true", help="print the DASH manifest URL instead of HLS")
    add_server_arguments(parser)


def main(args: argparse.Namespace, config: Config) -> int:
    import sys
    from urllib.parse import urljoin

    from streamgate.control.edge_client import EdgeAPIError, EdgeClient, server_url

    client = EdgeClient(server_url(args, config), Path(args.wallet_key))
    try:
        signed = client.json("POST", f"/api/v1/videos/{args.video_id}/playback-url",
                             params={"ttl": str(args.ttl)} if args.ttl else None)
    except (EdgeAPIError, OSError) as exc:
        print(f"streamgate sign-url: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    # Relative when the edge has no server.public_url: resolve against the URL we used.
    print(urljoin(client.base + "/", signed["dash_url"] if args.dash else signed["hls_url"]))
    print(f"expires at {signed['expires_at']}", file=sys.stderr)
    return 0

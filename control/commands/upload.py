from __future__ import annotations

import argparse
import io
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from streamgate.common.config import Config
from streamgate.control.edge_client import add_server_arguments

HELP = "Upload a video over tus with a progress bar, follow its transcode, print the HLS and DASH URLs."

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="the video file")
    parser.add_argument("--title", help="title (default: the file name)")
    parser.add_argument("--private", action="store_true",
                        help="only its owner (your wallet) and signed URLs may play it")
    parser.add_argument("--priority", type=int, default=None, help="transcode priority (higher first)")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="send the file as N parts over N connections at once (tus concatenation)")
    parser.add_argument("--no-wait", action="store_true", help="return once uploaded, do not follow the transcode")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the transcode")
    add_server_arguments(parser)


def main(args: argparse.Namespace, config: Config) -> int:
    from rich.console import Console

    from streamgate.control.edge_client import EdgeAPIError, EdgeClient, server_url

    console = Console(stderr=True)
    if not args.file.is_file():
        console.print(f"[red]streamgate upload: {args.file}: no such file[/red]")
        return 2
    if args.parallel < 1:
        console.print("[red]streamgate upload: --parallel must be at least 1[/red]")
        return 2
    client = EdgeClient(server_url(args, config), Path(args.wallet_key))
    try:
        video_id = _upload_parallel(client, args, console) if args.parallel > 1 else _upload(client, args, console)
        console.print(f"uploaded [bold]{video_id}[/bold]")
        if args.no_wait:
            print(video_id)
            return 0
        video = _follow(client, video_id, args.timeout, console)
        if video["status"] != "ready":
            console.print(f"[red]transcode {video['status']}: {video.get('error') or 'no reason given'}[/red]")
            return 1
        urls = (client.json("POST", f"/api/v1/videos/{video_id}/playback-url")
                if video["visibility"] == "private" else video)
        print(f"id:   {video_id}")
        # Relative when the edge has no server.public_url: resolve against the URL we used.
        print(f"HLS:  {urljoin(client.base + '/', urls['hls_url'])}")
        print(f"DASH: {urljoin(client.base + '/', urls['dash_url'])}")
        return 0
    except EdgeAPIError as exc:
        console.print(f"[red]streamgate upload: {exc}[/red]")
        return 1
    except OSError as exc:
        console.print(f"[red]streamgate upload: cannot reach {client.base}: {exc}[/red]")
        return 1
    finally:
        client.close()


def _signed_in_create(client: Any, console: Any, args: argparse.Namespace, create: Any) -> str:
    """``create(headers)``, signing in with the wallet on a 401 first."""
    from streamgate.control.tus_send import TusError

    try:
        return str(create(client.headers))
    except TusError as exc:
        if exc.status != 401:
            raise
    console.print(f"signing in with the wallet in {args.wallet_key}")
    console.print(f"signed in as {client.sign_in()}")
    return str(create(client.headers))


def _upload(client: Any, args: argparse.Namespace, console: Any) -> str:
    import requests
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from streamgate.control import tus_send

    metadata = _metadata(args)
    size = args.file.stat().st_size
    endpoint = client.base + "/api/v1/uploads"
    with requests.Session() as session, open(args.file, "rb") as stream:
        url = _signed_in_create(client, console, args,
                                lambda headers: tus_send.create(session, endpoint, size, headers, metadata))
        sender = tus_send.Sender(session, url, stream, size, client.headers)
        with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), console=console, transient=False) as progress:
            task = progress.add_task(f"upload {args.file.name}", total=size)
            sender.send(lambda offset: progress.update(task, completed=offset))
    return url.rstrip("/").rsplit("/", 1)[1]


class _Slice(io.RawIOBase):
    """``length`` bytes of a file from ``start``, as a stream of its own (one partial upload)."""

    def __init__(self, path: Path, start: int, length: int) -> None:
        self._f = open(path, "rb")  # noqa: SIM115  (closed with the slice)
        self._start, self._length, self._pos = start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = max(0, min(self._length, base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        left = self._length - self._pos
        size = left if size is None or size < 0 else min(size, left)
        self._f.seek(self._start + self._pos)
        data = self._f.read(size)
        self._pos += len(data)
        return data

    def close(self) -> None:
        self._f.close()
        super().close()


def _metadata(args: argparse.Namespace) -> dict[str, str]:
    metadata = {"filename": args.file.name, "title": args.title or args.file.stem,
                "visibility": "private" if args.private else "public"}
    if args.priority is not None:
        metadata["priority"] = str(args.priority)
    return metadata


def _upload_parallel(client: Any, args: argparse.Namespace, console: Any) -> str:
    """N partial uploads (``Upload-Concat: partial``) in threads, each over its own connection,
    then the final one that joins them into the video; the bar sums the parts' offsets."""
    import requests
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from streamgate.control import tus_send
    from streamgate.control.edge_client import EdgeAPIError

    size = args.file.stat().st_size
    parts = max(1, min(args.parallel, size))
    bounds = [(i * size // parts, (i + 1) * size // parts) for i in range(parts)]
    endpoint = client.base + "/api/v1/uploads"
    sessions = [requests.Session() for _ in range(parts)]
    try:
        # The partial uploads are created here, one after the other (the first 401 signs in); only
        # their bytes go in parallel.
        urls: list[str] = []
        for index, (start, end) in enumerate(bounds):
            def create(headers: dict[str, str], session: Any = sessions[index], length: int = end - start) -> str:
                return tus_send.create(session, endpoint, length, {**headers, "Upload-Concat": "partial"})

            urls.append(_signed_in_create(client, console, args, create) if not urls else create(client.headers))
        lock = threading.Lock()
        sent = [0] * parts

        def send(index: int, progress: Any, task: Any) -> str:
            start, end = bounds[index]

            def update(offset: int) -> None:
                with lock:
                    sent[index] = offset
                    progress.update(task, completed=sum(sent))

            with _Slice(args.file, start, end - start) as stream:
                tus_send.Sender(sessions[index], urls[index], stream, end - start, client.headers).send(update)
            return urls[index]

        with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), console=console, transient=False) as progress:
            task = progress.add_task(f"upload {args.file.name} ({parts} parts)", total=size)
            with ThreadPoolExecutor(max_workers=parts, thread_name_prefix="upload-part") as pool:
                list(pool.map(lambda i: send(i, progress, task), range(parts)))
    finally:
        for session in sessions:
            session.close()
    final = client.session.post(client.base + "/api/v1/uploads", timeout=600, headers={
        **client.headers, "Tus-Resumable": "1.0.0", "Upload-Concat": "final;" + " ".join(urls),
        "Upload-Metadata": tus_send.encode_metadata(_metadata(args))})
    if final.status_code != 201:
        raise EdgeAPIError(f"POST /api/v1/uploads (final): {final.status_code} {final.text[:200]}")
    return final.headers["Location"].rstrip("/").rsplit("/", 1)[1]


def _follow(client: Any, video_id: str, timeout: float, console: Any) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn

    deadline = time.monotonic() + timeout
    with Progress("[progress.description]{task.description}", BarColumn(),
                  TextColumn("{task.percentage:>3.0f}%  {task.fields[eta]}"), console=console) as progress:
        task = progress.add_task("queued", total=1.0, eta="")
        while True:
            video = client.json("GET", f"/api/v1/videos/{video_id}")
            eta = f"ETA {video['eta_s']:.0f}s" if video.get("eta_s") else ""
            progress.update(task, description=video["status"], completed=video["progress"], eta=eta)
            if video["status"] in ("ready", "failed"):
                return video
            if time.monotonic() > deadline:
                print(f"streamgate upload: still {video['status']} after {timeout:g}s", file=sys.stderr)
                return video
            time.sleep(0.5)  # polling the API for the user; not test synchronisation

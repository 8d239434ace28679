"""HAProxy in front of a fleet's edges, configured by the haproxy role's own template, and players
that fetch through it and count every request that fails.

``haproxy_config`` renders ``ansible/roles/haproxy/templates/haproxy.cfg.j2`` with the role's
defaults (what ``ansible-playbook`` would write, without a converge: the short fleet test runs in
seconds); ``Players`` are threads that fetch a video's files through the balancer in a loop, as
players at playback pace do, and keep every failure with its time and reason.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import jinja2
import requests
import yaml

ROLE = Path(__file__).resolve().parents[2] / "ansible/roles/haproxy"


def haproxy_config(**overrides: Any) -> str:
    values = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    values.update(overrides)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    template = env.from_string((ROLE / "templates/haproxy.cfg.j2").read_text())
    return template.render(ansible_managed="rendered by tests/fleet/lb.py", groups={}, hostvars={}, **values)


class Players:
    """``n`` threads fetching ``paths`` under ``base`` round and round, one every ``pace_s``."""

    def __init__(self, base: str, paths: list[str], n: int = 3, pace_s: float = 0.05) -> None:
        self.base, self.paths, self.n, self.pace_s = base, paths, n, pace_s
        self.requests = 0
        self.failures: list[tuple[float, str, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _play(self, offset: int) -> None:
        session = requests.Session()  # keep-alive to the balancer, as a player's
        i = offset
        while not self._stop.is_set():
            path = self.paths[i % len(self.paths)]
            i += 1
            try:
                r = session.get(self.base + path, timeout=30)
                problem = "" if r.status_code == 200 and r.content else f"{r.status_code} ({len(r.content)} bytes)"
            except requests.RequestException as exc:
                problem = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.requests += 1
                if problem:
                    self.failures.append((time.time(), path, problem))
            self._stop.wait(self.pace_s)
        session.close()

    def start(self) -> Players:
        for k in range(self.n):
            thread = threading.Thread(target=self._play, args=(k * 7,), daemon=True, name=f"player-{k}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

"""A small synchronous client of the Consul agent API for test assertions (stand-in or real agent)."""

from __future__ import annotations

import json
import socket
import urllib.request
from typing import Any

from streamgate.common.config import Config, config_from_tree


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Agent:
    """What a test needs of a Consul agent, the same for the stand-in and a real ``consul agent -dev``."""

    def __init__(self, address: str, standin: Any = None) -> None:
        self.address = address
        self.standin = standin

    def get(self, path: str) -> Any:

        with urllib.request.urlopen(self.address + path, timeout=5) as r:
            return json.loads(r.read() or b"null")

    def put(self, path: str) -> None:
        req = urllib.request.Request(self.address + path, method="PUT", data=b"")
        with urllib.request.urlopen(req, timeout=5):
            pass

    def services(self) -> dict[str, Any]:
        return self.get("/v1/agent/services")

    def checks(self) -> dict[str, Any]:
        return self.get("/v1/agent/checks")

    def check_status(self, check_id: str) -> str | None:
        check = self.checks().get(check_id)
        return check["Status"] if check else None

    def passing(self, name: str) -> list[str]:
        return [e["Service"]["ID"] for e in self.get(f"/v1/health/service/{name}?passing=1")]

    def config(self, **registry: Any) -> Config:
        tree: dict[str, Any] = {"registry": {"type": "consul", "consul_address": self.address, **registry}}
        return config_from_tree(tree)

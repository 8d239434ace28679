"""Typed application keys shared by the edge's parts (aiohttp ``AppKey``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from streamgate.common.config import Config

CONFIG = web.AppKey("config", Config)
STARTED_AT = web.AppKey("started_at", float)
# name -> async check(app) -> (ok, detail); see edge/health.py
READINESS_CHECKS = web.AppKey(
    "readiness_checks", dict[str, Callable[[web.Application], Awaitable[tuple[bool, str]]]]
)
# Names of the readiness checks that are reported but do not take the edge out of rotation
# (the broker: uploads queue and are resubmitted while it is away; playback never needs it).
ADVISORY_CHECKS = web.AppKey("advisory_checks", set[str])
# The shared Redis client, or None on a single node without Redis.
REDIS: web.AppKey[Any] = web.AppKey("redis")
# The process's common/consul/discovery.py ``Discovery`` with registry.type consul, else None: the one
# Consul watch the edge's parts share (broker leader, origins). Typed Any so this module does
# not import the control plane.
DISCOVERY: web.AppKey[Any] = web.AppKey("discovery")

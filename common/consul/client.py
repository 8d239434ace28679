"""The one place StreamGate builds a py-consul asyncio client.

py-consul 1.8's ``consul.aio`` adapter hands aiohttp the deprecated ``verify_ssl``/``ssl_context``
connector arguments (a DeprecationWarning on aiohttp 3.10+); :class:`ConsulClient` keeps every
py-consul call and only builds its aiohttp session the current way. The client owns an aiohttp
session, so it must be closed: use it as ``async with consul_client(config) as c``.
"""

from __future__ import annotations

import ssl
import urllib.parse
from typing import Any

import aiohttp
import consul.aio
from consul import base

from streamgate.common.config import RegistryConfig


class _HTTPClient(consul.aio.HTTPClient):
    def __init__(self, host: str, port: int, scheme: str, verify: bool | str = True,
                 cert: Any = None) -> None:
        base.HTTPClient.__init__(self, host, port, scheme, verify, cert)
        context: ssl.SSLContext | bool = False
        if scheme == "https":
            context = ssl.create_default_context()
            if isinstance(verify, str):
                context.load_verify_locations(verify)
            elif not verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if cert:
                context.load_cert_chain(*cert) if isinstance(cert, tuple) else context.load_cert_chain(cert)
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))


class ConsulClient(consul.aio.Consul):
    """``consul.aio.Consul`` with a warning-free aiohttp session; close it when done."""

    def http_connect(self, host: str, port: int, scheme: str, verify: bool | str = True,
                     cert: Any = None) -> _HTTPClient:
        return _HTTPClient(host, port, scheme, verify=verify, cert=cert)


def consul_client(registry: RegistryConfig) -> ConsulClient:
    """A client for ``registry.consul_address`` (``http://host:port``, ``https://...`` or ``host:port``)."""
    address = registry.consul_address
    parsed = urllib.parse.urlsplit(address if "//" in address else f"//{address}")
    scheme = parsed.scheme or "http"
    port = parsed.port or (443 if scheme == "https" else 8500)
    return ConsulClient(host=parsed.hostname or "127.0.0.1", port=port, scheme=scheme,
                        token=registry.consul_token or None)

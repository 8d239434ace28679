"""Where the public reaches this edge: the SIWE domain sign-ins must name, and the base of the URLs
the edge builds. Never taken from a request's ``Host`` (issue 14: a message signed for another
site, posted with that site's Host, gave a token that deleted videos here).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import msgspec
from aiohttp import web

from streamgate.common.config import Config, ConfigError

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


class PublicOrigin(msgspec.Struct, frozen=True):
    domains: tuple[str, ...]  # accepted SIWE domains (RFC 3986 authorities, lower case)
    origins: tuple[str, ...]  # accepted origins (scheme://authority) of a message's URI
    base: str  # prefix of built URLs: server.public_url without its trailing slash, or "" (relative)


# Set by build_app, which is where a bad origin config stops the edge from starting.
PUBLIC_ORIGIN: web.AppKey[PublicOrigin] = web.AppKey("public_origin", PublicOrigin)


def _origin_of(url: str) -> tuple[str, str]:
    """(scheme://authority, authority), lower case; ValueError unless an http(s) URL."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        raise ValueError(url)
    authority = parts.netloc.lower()
    return f"{parts.scheme.lower()}://{authority}", authority


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def public_origin(config: Config) -> PublicOrigin:
    """The origin from ``auth.domain`` / ``server.public_url``; ConfigError when sign-in would have
    no safe domain to check against."""
    auth, server = config.auth, config.server
    base = public_base(config)
    origins: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    if base:
        try:
            origin, authority = _origin_of(base)
        except ValueError:
            raise ConfigError(f"server.public_url: {server.public_url!r} must be an http(s) URL "
                              "such as https://videos.example") from None
        origins, domains = (origin,), (authority,)
    if auth.domain and (auth.domain.strip().lower(),) != domains:
        # The URI names the same authority as the domain; with public_url elsewhere, either scheme.
        domain = auth.domain.strip().lower()
        domains, origins = (domain,), (f"https://{domain}", f"http://{domain}")
    if domains:
        return PublicOrigin(domains=domains, origins=origins, base=base)
    # Neither key: a newcomer's node. Only loopback names are accepted, which no other site can
    # be, so a phished message cannot match. Safe when sign-in is optional (auth.required false:
    # writes pass without it anyway), or when the edge listens on loopback only (nothing but this
    # machine reaches it). A required sign-in on a public binding would refuse every real client
    # (or trust the Host, the hole above), so that is a config error instead.
    if auth.required and not _loopback(server.host):
        raise ConfigError("auth.domain / server.public_url: auth.required is true and the edge listens "
                          f"on {server.host}: set auth.domain or server.public_url (the origin the "
                          "public reaches the edge at, e.g. https://videos.example)")
    domains = tuple(f"{name}:{server.port}" for name in _LOOPBACK_NAMES)
    return PublicOrigin(domains=domains, origins=tuple(f"http://{d}" for d in domains), base="")


def public_base(config: Config) -> str:
    """Prefix of the URLs the edge builds (Location, hls_url, signed URLs): server.public_url, or ""
    for paths relative to whatever origin the client used (RFC 9110 section 10.2.2 allows a
    relative Location), never a reflected Host."""
    return config.server.public_url.strip().rstrip("/")


def uri_matches(origin: PublicOrigin, uri: str) -> bool:
    """True when a SIWE message's ``URI`` is under one of the accepted origins."""
    try:
        return _origin_of(uri)[0] in origin.origins
    except ValueError:
        return False

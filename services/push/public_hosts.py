"""Web Push endpoints must be on the public internet: a user registers them, the node posts to them.

A subscription's endpoint comes from a user's device (any holder of a `subscribe` token), and the
push worker POSTs to it from inside the operator's network. Without a check, a user could make
the node call an internal address (a metadata service, an admin port). So an endpoint's host is
checked twice:

- at registration, by name and literal address: an IP literal must be a global address, and
  names that only resolve inside a network (`localhost`, `*.localhost`, `*.local`, `*.internal`,
  names without a dot) are refused;
- before each send, by what the name resolves to now: every address must be global.

What this does not stop: a name whose answer changes between the check and the connection (DNS
rebinding within the resolver's cache time). Where that matters, send through an egress proxy
that enforces the same rule. `HERALD_PUSH_WEBPUSH_ALLOW_PRIVATE` turns both checks off (local
test servers, a push service inside the network).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Final
from urllib.parse import urlsplit

_INTERNAL_SUFFIXES: Final = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")


class NotPublic(ValueError):
    """The host is, or resolves to, an address that is not on the public internet."""


def _global(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_host(host: str) -> None:
    """Raises NotPublic for an IP literal that is not global, or a name that is internal by
    its form."""
    name = host.strip("[]").rstrip(".").lower()
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        if not name or "." not in name or name == "localhost" or name.endswith(_INTERNAL_SUFFIXES):
            raise NotPublic(f"{host!r} is not a public host name") from None
        return
    if not _global(name):
        raise NotPublic(f"{host!r} is not a public address")


async def check_resolves_public(host: str, port: int) -> None:
    """check_host, then every address `host` resolves to must be global (NotPublic otherwise).
    A name that does not resolve raises OSError (socket.gaierror): a retry may succeed."""
    check_host(host)
    loop = asyncio.get_running_loop()
    answers = await loop.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    for *_, sockaddr in answers:
        if not _global(str(sockaddr[0])):
            raise NotPublic(f"{host!r} resolves to an address that is not public")


async def check_url_resolves_public(url: str) -> None:
    """check_resolves_public for the host and port of an http(s) URL (the scheme's port when
    it names none)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    await check_resolves_public(parts.hostname or "", port)

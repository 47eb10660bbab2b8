"""Web Push endpoints must be on the public internet: a user registers them, the node posts to them.

A subscription's endpoint comes from a user's device (any holder of a `subscribe` token), and the
push worker POSTs to it from inside the operator's network. Without a check, a user could make
the node call an internal address (a metadata service, an admin port). So an endpoint's host is
checked twice:

- at registration, by name and literal address: an IP literal must be a global address, and
  names that only resolve inside a network (`localhost`, `*.localhost`, `*.local`, `*.internal`,
  names without a dot) are refused;
- before each send, by what the name resolves to now: every address must be global.

- at the connection, by `public_transport`: its network backend resolves the name itself,
  checks every address, and connects to the address it checked, so a name cannot answer one
  address to the check and another to the connection (DNS rebinding).

An IPv6 address that reaches an IPv4 one (IPv4-mapped, 6to4, NAT64's well-known prefix, the old
IPv4-compatible form) is judged by that IPv4 address. A request through an HTTP proxy taken from
the environment connects to the proxy, which must enforce the rule itself.
`HERALD_PUSH_WEBPUSH_ALLOW_PRIVATE` (and `HERALD_WEBHOOKS_ALLOW_PRIVATE` for webhooks) turns the
checks off (local test servers, a service inside the network).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import urlsplit

import httpcore
import httpx

_INTERNAL_SUFFIXES: Final = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")


class NotPublic(ValueError):
    """The host is, or resolves to, an address that is not on the public internet."""


# NAT64: the well-known prefix embeds an IPv4 address; the local-use one is a network's own.
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL: Final = ipaddress.ip_network("64:ff9b:1::/48")


def _reached_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for, if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or int(ip) >> 32 == 0:  # NAT64, or IPv4-compatible (::a.b.c.d)
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _global(address: str) -> bool:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
        address.split("%", 1)[0]
    )
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL or ip.is_site_local:
            return False
        ip = _reached_ipv4(ip) or ip
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
    await public_address(host, port)


async def public_address(host: str, port: int) -> str:
    """The first address `host` resolves to, when every one of them is global.

    Raises:
        NotPublic: an address is not global, or the name cannot be a host name at all.
        OSError: the name does not resolve (a retry may succeed).
    """
    loop = asyncio.get_running_loop()
    try:
        answers = await loop.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except UnicodeError:  # an empty or over-long label: no resolver will ever answer it
        raise NotPublic(f"{host!r} is not a valid host name") from None
    addresses = [str(sockaddr[0]) for *_, sockaddr in answers]
    if not addresses:
        raise OSError(f"{host!r} resolves to no address")
    for address in addresses:
        if not _global(address):
            raise NotPublic(f"{host!r} resolves to an address that is not public")
    return addresses[0]


async def check_url_resolves_public(url: str) -> None:
    """check_resolves_public for the host and port of an http(s) URL (the scheme's port when
    it names none)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    await check_resolves_public(parts.hostname or "", port)


class _PublicOnly(httpcore.AsyncNetworkBackend):
    """Connects only to global addresses: resolves the host itself and connects to the address
    it checked (the TLS handshake still names, and verifies, the host)."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                address = await public_address(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"{host!r} did not resolve in time") from exc
        except (NotPublic, OSError) as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return await self._inner.connect_tcp(
            address,
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("connections to a Unix socket are not public")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def refusal_in(error: BaseException) -> NotPublic | None:
    """The NotPublic behind an error of a client on `public_transport`, if it is why the
    connection failed (httpx raises ConnectError from httpcore's, raised from the NotPublic):
    an address refused at the connection, after a check that found the name public (its DNS
    answer changed in between), is refused as the check refuses it, not retried as a network
    failure."""
    seen: BaseException | None = error
    for _ in range(8):  # the chain is short; a cycle must not hold the caller
        if seen is None:
            return None
        if isinstance(seen, NotPublic):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def public_transport(**options: Any) -> httpx.AsyncHTTPTransport:
    """An httpx transport (`options` as AsyncHTTPTransport takes them) that connects only to
    public addresses, checked at each new connection (httpx.ConnectError otherwise)."""
    transport = httpx.AsyncHTTPTransport(**options)
    # httpx builds its httpcore pool with the default network backend and has no option for
    # another one; the pool reads this attribute for every connection it opens.
    pool = transport._pool
    if not isinstance(pool, httpcore.AsyncConnectionPool):  # pragma: no cover - an httpx change
        raise TypeError("httpx.AsyncHTTPTransport no longer holds an httpcore connection pool")
    pool._network_backend = _PublicOnly(pool._network_backend)
    return transport

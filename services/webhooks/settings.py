"""A tenant's webhook settings: their bounds, their wire form, and the write-only secret.

The secret is kept like push_fallback's (services/model.py): read RPCs answer it empty with
`secret_set`, except to other Herald nodes (node tokens), which send the webhooks; a Put that
sends it empty with `secret_set` keeps the stored one.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Final
from urllib.parse import urlsplit

from herald.v1 import registry_pb2
from services.domain import WEBHOOK_EVENTS, Webhooks
from services.errors import InvalidArgument

DEFAULT_BATCH_EVENTS: Final = 100
MAX_BATCH_EVENTS: Final = 1000
DEFAULT_DELAY_MS: Final = 1000
MAX_DELAY_MS: Final = 60_000
MAX_URL_LEN: Final = 2048
MIN_SECRET_LEN: Final = 16
MAX_SECRET_LEN: Final = 256
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain"})
# WebhookEventKind value <-> event name.
_KIND_NAMES: Final = {
    registry_pb2.WEBHOOK_EVENT_KIND_DELIVERED: "delivered",
    registry_pb2.WEBHOOK_EVENT_KIND_ACKED: "acked",
    registry_pb2.WEBHOOK_EVENT_KIND_FAILED: "failed",
    registry_pb2.WEBHOOK_EVENT_KIND_EXPIRED: "expired",
}
_KINDS: Final = {name: kind for kind, name in _KIND_NAMES.items()}


def batch_events(webhooks: Webhooks) -> int:
    return webhooks.max_batch_events or DEFAULT_BATCH_EVENTS


def delay_s(webhooks: Webhooks) -> float:
    return (webhooks.max_delay_ms or DEFAULT_DELAY_MS) / 1000


def wanted(webhooks: Webhooks) -> frozenset[str]:
    """The names of the events the tenant gets."""
    return frozenset(webhooks.events or WEBHOOK_EVENTS)


def check(webhooks: Webhooks) -> None:
    """Raises InvalidArgument, naming the field, for a value the sender could not use; never
    echoes the secret."""
    if webhooks.url or webhooks.enabled:
        check_url(webhooks.url)
    if webhooks.secret and not MIN_SECRET_LEN <= len(webhooks.secret) <= MAX_SECRET_LEN:
        raise InvalidArgument(
            f"webhooks.secret must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} characters "
            "(a random string: e.g. `openssl rand -hex 32`)"
        )
    if webhooks.enabled and not webhooks.secret:
        raise InvalidArgument("webhooks.secret is required when webhooks are enabled")
    if len(set(webhooks.events)) != len(webhooks.events):
        raise InvalidArgument("webhooks.events names an event twice")
    if not 0 <= webhooks.max_batch_events <= MAX_BATCH_EVENTS:
        raise InvalidArgument(
            f"webhooks.max_batch_events must be 0 to {MAX_BATCH_EVENTS:,} "
            f"(0: {DEFAULT_BATCH_EVENTS})"
        )
    if not 0 <= webhooks.max_delay_ms <= MAX_DELAY_MS:
        raise InvalidArgument(
            f"webhooks.max_delay_ms must be 0 to {MAX_DELAY_MS:,} (0: {DEFAULT_DELAY_MS:,} ms)"
        )


def check_url(url: str) -> None:
    if not url:
        raise InvalidArgument("webhooks.url is required when webhooks are enabled")
    if len(url) > MAX_URL_LEN:
        raise InvalidArgument(f"webhooks.url is longer than {MAX_URL_LEN:,} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidArgument("webhooks.url is not a valid URL") from None
    del port  # read only to check it is a number in range
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidArgument("webhooks.url must be an https:// URL with a host name")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgument(
            "webhooks.url must not hold credentials: receivers check the signature instead"
        )
    if parts.fragment:
        raise InvalidArgument("webhooks.url must not have a #fragment")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise InvalidArgument("webhooks.url must not contain spaces or control characters")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise InvalidArgument(
            "webhooks.url must use https:// (http:// is accepted only to a loopback host, "
            "for a local receiver)"
        )


def _loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def to_proto(webhooks: Webhooks, secrets: bool = False) -> registry_pb2.WebhookSettings:
    return registry_pb2.WebhookSettings(
        enabled=webhooks.enabled,
        url=webhooks.url,
        secret=webhooks.secret if secrets else "",
        secret_set=bool(webhooks.secret),
        events=[_KINDS[name] for name in webhooks.events],
        max_batch_events=webhooks.max_batch_events,
        max_delay_ms=webhooks.max_delay_ms,
    )


def from_proto(message: registry_pb2.WebhookSettings) -> Webhooks:
    """The settings a request carries.

    Raises:
        InvalidArgument: an event kind that is not one of WebhookEventKind's.
    """
    names: list[str] = []
    for kind in message.events:
        name = _KIND_NAMES.get(kind)
        if name is None:
            raise InvalidArgument(
                f"webhooks.events holds {kind}: use WEBHOOK_EVENT_KIND_DELIVERED, _ACKED, "
                "_FAILED or _EXPIRED"
            )
        names.append(name)
    return Webhooks(
        enabled=message.enabled,
        url=message.url,
        secret=message.secret,
        events=tuple(names),
        max_batch_events=message.max_batch_events,
        max_delay_ms=message.max_delay_ms,
    )


def keep_secret(
    message: registry_pb2.WebhookSettings, new: Webhooks, stored: Webhooks | None
) -> Webhooks:
    """`new` with the stored secret when the request sent it empty with `secret_set` (a client
    that read the settings and puts them back does not erase the secret it could not read)."""
    if stored is None or new.secret or not message.secret_set:
        return new
    return dataclasses.replace(new, secret=stored.secret)


def changed(before: Webhooks | None, after: Webhooks | None) -> list[str]:
    """The names of the fields that differ, for the audit log (never their values)."""
    if (before is None) != (after is None):
        return ["webhooks"]
    if before is None or after is None:
        return []
    return [
        f"webhooks.{f.name}"
        for f in dataclasses.fields(Webhooks)
        if getattr(before, f.name) != getattr(after, f.name)
    ]

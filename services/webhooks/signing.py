"""Signing webhook batches, and checking them at the receiver.

Each POST carries three headers (docs/webhooks.md):

- `Herald-Webhook-Id`: the batch's id, the same on every retry and replay (receivers drop a
  batch id they have already handled);
- `Herald-Webhook-Timestamp`: when this attempt was signed, in Unix seconds;
- `Herald-Webhook-Signature`: `v1=` and the hex HMAC-SHA256, keyed with the tenant's secret, of
  `timestamp + "." + body`.

The timestamp is inside the signature, so a captured request cannot be sent again later with a
fresh one: a receiver that rejects timestamps older than a few minutes (`verify`'s tolerance)
is safe against replays; within the window, the batch id tells a repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Final

ID_HEADER: Final = "Herald-Webhook-Id"
TIMESTAMP_HEADER: Final = "Herald-Webhook-Timestamp"
SIGNATURE_HEADER: Final = "Herald-Webhook-Signature"
SCHEME: Final = "v1"
# How far a timestamp may be from the receiver's clock, either way.
DEFAULT_TOLERANCE_S: Final = 300


class WebhookVerificationError(ValueError):
    """The request is not a batch signed with this secret, or its timestamp is too old."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of `timestamp.body` keyed with `secret`."""
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def headers(secret: str, batch_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one attempt to send `body`."""
    return {
        ID_HEADER: batch_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: f"{SCHEME}={signature(secret, timestamp, body)}",
    }


def verify(
    secret: str,
    body: bytes,
    request_headers: Mapping[str, str],
    *,
    now: float | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> str:
    """Checks a received batch; returns its batch id.

    Args:
        secret: the tenant's webhook secret.
        body: the request body, exactly as received (before any JSON parsing).
        request_headers: the request's headers (names in any case).
        now: the receiver's clock, Unix seconds (default: time.time()).
        tolerance_s: the oldest (and most future) timestamp accepted, in seconds.

    Raises:
        WebhookVerificationError: a header is missing, the timestamp is outside the tolerance,
            or no signature matches.
    """
    lowered = {k.lower(): v for k, v in request_headers.items()}
    batch_id = lowered.get(ID_HEADER.lower(), "")
    stamp = lowered.get(TIMESTAMP_HEADER.lower(), "")
    signatures = lowered.get(SIGNATURE_HEADER.lower(), "")
    if not batch_id or not stamp or not signatures:
        raise WebhookVerificationError(
            f"missing {ID_HEADER}, {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header"
        )
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError(f"{TIMESTAMP_HEADER} is not a number") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookVerificationError(
            f"{TIMESTAMP_HEADER} is {current - timestamp:.0f} s away from now "
            f"(more than {tolerance_s:g} s): a replayed or delayed request"
        )
    expected = signature(secret, timestamp, body)
    # Space-separated `v1=<hex>` entries (more than one while a secret is being rotated).
    for entry in signatures.split():
        scheme, _, value = entry.partition("=")
        if scheme == SCHEME and hmac.compare_digest(value, expected):
            return batch_id
    raise WebhookVerificationError("no signature matches: wrong secret, or the body was changed")

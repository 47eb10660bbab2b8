"""Per-tenant webhooks for delivery-state events (docs/webhooks.md).

For receivers: `verify(secret, body, headers)` checks a batch's signature and timestamp.
"""

from __future__ import annotations

from services.webhooks.signing import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookVerificationError,
    verify,
)

__all__ = [
    "ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookVerificationError",
    "verify",
]

"""The JSON body of a webhook batch, and its id.

    {"batch_id": "whb_018c2a6f1e3b_9f86d081884c7d65",
     "tenant_id": "acme",
     "events": [{"type": "delivered", "notification_id": "...", "user_id": "alice",
                 "at": "2026-12-03T07:30:00.125Z", "reason": ""}, ...]}

A batch id starts with the creation time (milliseconds, hex), so ids sort oldest first.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime

from services.webhooks.events import Event


def new_id(now: float, rng: random.Random) -> str:
    return f"whb_{int(now * 1000):012x}_{rng.getrandbits(64):016x}"


def rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode(tenant: str, batch_id: str, events: Sequence[Event]) -> bytes:
    return json.dumps(
        {
            "batch_id": batch_id,
            "tenant_id": tenant,
            "events": [
                {
                    "type": e.kind,
                    "notification_id": e.notification_id,
                    "user_id": e.user_id,
                    "at": rfc3339(e.at),
                    "reason": e.reason,
                }
                for e in events
            ],
        },
        separators=(",", ":"),
    ).encode()

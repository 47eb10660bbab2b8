"""The push provider Protocol: one module per provider (fcm.py, apns.py, webpush.py)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from services.push.targets import PushTargetRecord


@dataclass(frozen=True, slots=True)
class PushMessage:
    """What a push carries: no more than a notification's visible text and its ids."""

    notification_id: str
    title: str
    body: str
    data: dict[str, str] = field(default_factory=dict)
    high_priority: bool = False
    # Seconds the provider may keep trying to deliver (0: deliver now or never).
    ttl_s: int = 3600
    collapse_key: str = ""


class Outcome(enum.Enum):
    SENT = "sent"
    # The provider says the target no longer exists: remove it.
    GONE = "gone"
    # Overloaded or failing (429, 5xx, network): retry with backoff.
    RETRY = "retry"
    # Refused for another reason (bad request, bad credentials): not retried.
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class PushResult:
    outcome: Outcome
    status: int = 0
    # The provider's reason (e.g. UNREGISTERED, BadDeviceToken), never the payload.
    reason: str = ""
    retry_after_s: float | None = None


class PushProvider(Protocol):
    async def send(self, target: PushTargetRecord, message: PushMessage) -> PushResult:
        """Sends one push; never raises for a provider or network error (it is a result)."""
        ...

    async def aclose(self) -> None: ...


def retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the delta form; HTTP dates are ignored)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def classify(status: int) -> Outcome:
    """The outcome of an HTTP status common to every provider."""
    if 200 <= status < 300:
        return Outcome.SENT
    if status == 429 or status >= 500:
        return Outcome.RETRY
    return Outcome.FAILED

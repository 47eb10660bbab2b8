"""Notification status and history: each recipient's state, with timestamps.

States only move forward along QUEUED -> DELIVERED -> ACKED; EXPIRED and FAILED end a delivery
attempt (a FAILED notification stays in the log and may still be DELIVERED and ACKED on the next
connect; an EXPIRED one never changes again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple, Protocol


class State(IntEnum):
    """Mirrors herald.v1.DeliveryState."""

    QUEUED = 1
    DELIVERED = 2
    ACKED = 3
    EXPIRED = 4
    FAILED = 5


# Which state may follow which; anything else is ignored (e.g. a late DELIVERED after ACKED).
ALLOWED: dict[State | None, frozenset[State]] = {
    None: frozenset(State),
    State.QUEUED: frozenset({State.DELIVERED, State.ACKED, State.EXPIRED, State.FAILED}),
    State.DELIVERED: frozenset({State.DELIVERED, State.ACKED, State.EXPIRED, State.FAILED}),
    State.FAILED: frozenset({State.DELIVERED, State.ACKED, State.EXPIRED}),
    State.ACKED: frozenset(),
    State.EXPIRED: frozenset(),
}


@dataclass(slots=True)
class RecipientRecord:
    user_id: str
    state: State
    updated_at: float
    queued_at: float = 0.0
    delivered_at: float = 0.0
    acked_at: float = 0.0
    attempts: int = 0
    reason: str = ""
    read_at: float = 0.0


@dataclass(slots=True)
class NotificationRecord:
    notification_id: str
    tenant: str
    # The encoded herald.v1.Target.
    target: bytes
    created_at: float
    expires_at: float
    recipients: dict[str, RecipientRecord] = field(default_factory=dict)


class NewRecord(NamedTuple):
    """A notification just appended to its logs: each of `user_ids` starts QUEUED (channel and
    broadcast recipients are added by their first transition). A NamedTuple: one is built per
    notification at ingest."""

    notification_id: str
    tenant: str
    # The encoded herald.v1.Target.
    target: bytes
    created_at: float
    expires_at: float
    user_ids: tuple[str, ...]


class Transition(NamedTuple):
    """A requested change of one recipient's state (a NamedTuple: several are built per
    delivery, and a frozen dataclass costs a call per field to build)."""

    notification_id: str
    user_id: str
    state: State
    reason: str = ""


class StatusStore(Protocol):
    """Per-notification, per-recipient delivery state."""

    async def create(self, records: Sequence[NewRecord], at: float) -> None:
        """Stores new notifications, their users QUEUED at `at` (a record already stored under
        the same tenant and id is kept as it is)."""
        ...

    async def apply(self, tenant: str, transitions: list[Transition], at: float) -> None:
        """Moves recipients to new states; transitions not in ALLOWED are ignored."""
        ...

    async def mark_read(
        self, tenant: str, user_id: str, notification_ids: list[str], at: float
    ) -> int:
        """Sets read_at for the user's unread recipient records; returns how many changed."""
        ...

    async def get(self, tenant: str, notification_id: str) -> NotificationRecord | None: ...

    async def purge(self, older_than: float) -> int:
        """Forgets notifications created before `older_than`; returns how many."""
        ...

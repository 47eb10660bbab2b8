"""Notification status and history: each recipient's state, with timestamps (the states and
their order are in services/domain.py).

Two kinds of change reach a status store:

- **Marks**, the hot path: entries of one of a user's logs written to a stream for the first
  time (DELIVERED), or acknowledged (ACKED), together. A store may keep them as runs of cursors
  per user (PostgreSQL does, for users' own logs: a row per run, not per recipient; the state of
  a recipient is derived from the runs that cover its entry) or apply them as transitions.
- **Transitions**, the exceptions: FAILED, EXPIRED, redeliveries, and everything on channel and
  broadcast logs, whose recipients are known only as they read. Applied along ALLOWED.

Either way `get` and `recipients` answer the same: what docs/delivery.md (guarantee 10) says a
recipient's record holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from services.domain import (
    LogKey,
    NewRecord,
    NotificationRecord,
    RecipientRecord,
    State,
    Transition,
)


class Mark(NamedTuple):
    """Entries of one log that one user's stream took together: written for the first time
    (DELIVERED) or acknowledged (ACKED), at `at`.

    A first write moves a QUEUED or FAILED recipient to DELIVERED and counts one attempt; one
    already DELIVERED stays as it is (a replay to another session of the user is not an attempt:
    redeliveries by the ack timer are, as DELIVERED transitions). ACKED follows ALLOWED."""

    user_id: str
    key: LogKey
    state: State
    # (cursor, notification id) of each entry, in cursor order.
    entries: Sequence[tuple[int, str]]
    at: float


class StatusStore(Protocol):
    """Per-notification, per-recipient delivery state."""

    async def create(self, records: Sequence[NewRecord]) -> None:
        """Stores new notifications, their users QUEUED at the notification's `created_at` (a
        record already stored under the same tenant and id is kept as it is)."""
        ...

    async def apply(self, tenant: str, transitions: Sequence[Transition], at: float) -> None:
        """Moves recipients to new states; transitions not in ALLOWED are ignored.

        A networked store may write these behind, in batches: what `get` answers reflects every
        `apply` made through the same store object."""
        ...

    async def record(self, tenant: str, marks: Sequence[Mark]) -> None:
        """Records first writes and acks (see `Mark`), written behind like `apply`."""
        ...

    async def mark_read(
        self, tenant: str, user_id: str, notification_ids: list[str], at: float
    ) -> int:
        """Sets read_at for the user's unread recipient records; returns how many changed."""
        ...

    async def get(self, tenant: str, notification_id: str) -> NotificationRecord | None: ...

    async def recipients(
        self, tenant: str, user_id: str, notification_ids: Sequence[str]
    ) -> dict[str, RecipientRecord]:
        """The user's recipient record of each notification that has one (one call for a page
        of the inbox)."""
        ...

    async def purge(self, older_than: float) -> int:
        """Forgets notifications created before `older_than`; returns how many."""
        ...

    async def aclose(self) -> None:
        """Writes what is still buffered and releases connections."""
        ...

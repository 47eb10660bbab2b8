"""Notification status and history: each recipient's state, with timestamps (the states and
their order are in services/domain.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.domain import NewRecord, NotificationRecord, RecipientRecord, Transition


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

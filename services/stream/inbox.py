"""The in-app inbox: a page of the user's own log, newest first, with each item's state."""

from __future__ import annotations

from services import wire
from services.clock import Clock
from services.domain import State, user_log
from services.stream.log import LogStore
from services.stream.status import StatusStore

InboxItem = tuple[bytes, int, State, float]


class Inbox:
    def __init__(self, *, logs: LogStore, status: StatusStore, clock: Clock) -> None:
        self._logs = logs
        self._status = status
        self._clock = clock

    async def page(
        self, tenant: str, user_id: str, page_size: int, before: int
    ) -> tuple[list[InboxItem], int]:
        """A page of the user's own log, newest first: (notification, cursor, state, read_at)
        per item, and the cursor to pass as `before` for the next page (0 on the last page)."""
        entries = await self._logs.read_reverse(tenant, user_log(user_id), before, page_size + 1)
        more = len(entries) > page_size
        entries = entries[:page_size]
        now = self._clock.now()
        entries_live = [entry for entry in entries if entry.expires_at > now]
        recipients = await self._status.recipients(
            tenant, user_id, [entry.notification_id for entry in entries_live]
        )
        items = []
        for entry in entries_live:
            recipient = recipients.get(entry.notification_id)
            state = State.QUEUED if recipient is None else recipient.state
            read_at = 0.0 if recipient is None else recipient.read_at
            items.append(
                (wire.notification_bytes(entry.notification_field), entry.cursor, state, read_at)
            )
        return items, (entries[-1].cursor if more and entries else 0)

    async def mark_read(self, tenant: str, user_id: str, notification_ids: list[str]) -> int:
        return await self._status.mark_read(tenant, user_id, notification_ids, self._clock.now())

"""InboxStateStore in process memory."""

from __future__ import annotations

from collections.abc import Sequence

from services.stream.inbox_state import (
    UNSET,
    Action,
    InboxCounters,
    InboxState,
    next_state,
)


class MemoryInboxStateStore:
    """Rows and counters per (tenant, user); nothing awaits inside a call, so each is atomic.

    Bounded by the logs: a row exists only for an entry of a user's log (the caller forgets the
    rows of entries that leave), so a user holds at most the log's bound of rows."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], dict[str, InboxState]] = {}
        self._counters: dict[tuple[str, str], InboxCounters] = {}

    async def get(
        self, tenant: str, user_id: str, notification_ids: Sequence[str]
    ) -> dict[str, InboxState]:
        rows = self._rows.get((tenant, user_id))
        if not rows:
            return {}
        return {i: rows[i] for i in notification_ids if i in rows}

    async def change(
        self, tenant: str, user_id: str, notification_ids: Sequence[str], action: Action, at: float
    ) -> tuple[list[str], InboxCounters]:
        user = (tenant, user_id)
        rows = self._rows.setdefault(user, {})
        counters = self._counters.get(user, InboxCounters())
        changed: list[str] = []
        for notification_id in dict.fromkeys(notification_ids):
            before = rows.get(notification_id, UNSET)
            after = next_state(before, action, at)
            if after == before:
                continue
            rows[notification_id] = after
            counters = counters.plus(before, after)
            changed.append(notification_id)
        if rows:
            self._counters[user] = counters
        else:
            del self._rows[user]
        return changed, counters

    async def counters(self, tenant: str, user_id: str) -> InboxCounters:
        return self._counters.get((tenant, user_id), InboxCounters())

    async def forget(self, tenant: str, entries: Sequence[tuple[str, str]]) -> None:
        for user_id, notification_id in entries:
            user = (tenant, user_id)
            rows = self._rows.get(user)
            if rows is None:
                continue
            before = rows.pop(notification_id, None)
            if before is None:
                continue
            self._counters[user] = self._counters[user].plus(before, UNSET)
            if not rows:
                del self._rows[user]
                del self._counters[user]

    async def aclose(self) -> None:
        return None

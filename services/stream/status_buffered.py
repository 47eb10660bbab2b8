"""A status store that writes changes behind, in batches: one statement for what every stream
of the node changed in the last few milliseconds, instead of one per stream message.

`get`, `recipients`, `mark_read` and `purge` write what waits first, so this node always reads
its own changes (other nodes see them within `interval_s`). What waits when the process dies is
lost: status, never a notification, an ack or a cursor (docs/delivery.md, guarantee 10).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Protocol

from services.domain import NewRecord, NotificationRecord, RecipientRecord, Transition
from services.stream.status import Mark
from services.stream.status_recorder import StatusRecorder

# A flush starts early once this many changes wait.
_FLUSH_AT = 5000


class TimedStatusStore(Protocol):
    """A status store that takes a time per transition (status_postgres.py)."""

    async def create(self, records: Sequence[NewRecord]) -> None: ...
    async def apply_timed(
        self, tenant: str, transitions: Sequence[tuple[Transition, float]]
    ) -> None: ...
    async def record(self, tenant: str, marks: Sequence[Mark]) -> None: ...
    async def mark_read(
        self, tenant: str, user_id: str, notification_ids: list[str], at: float
    ) -> int: ...
    async def get(self, tenant: str, notification_id: str) -> NotificationRecord | None: ...
    async def recipients(
        self, tenant: str, user_id: str, notification_ids: Sequence[str]
    ) -> dict[str, RecipientRecord]: ...
    async def purge(self, older_than: float) -> int: ...
    async def aclose(self) -> None: ...


class WriteBehindStatusStore:
    def __init__(self, inner: TimedStatusStore, interval_s: float = 0.05) -> None:
        self._inner = inner
        self._interval_s = interval_s
        self._waiting: dict[str, list[tuple[Transition, float]]] = {}
        self._marks: dict[str, list[Mark]] = {}
        self._count = 0
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self._lost = StatusRecorder(_Discard())  # counts and logs what a failed flush loses

    @property
    def waiting(self) -> int:
        """Status changes (transitions and marks) waiting to be written."""
        return self._count

    async def create(self, records: Sequence[NewRecord]) -> None:
        await self._inner.create(records)

    async def apply(self, tenant: str, transitions: Sequence[Transition], at: float) -> None:
        if not transitions:
            return
        self._waiting.setdefault(tenant, []).extend((t, at) for t in transitions)
        self._waited(len(transitions))

    async def record(self, tenant: str, marks: Sequence[Mark]) -> None:
        if not marks:
            return
        self._marks.setdefault(tenant, []).extend(marks)
        self._waited(len(marks))

    def _waited(self, count: int) -> None:
        self._count += count
        if self._count >= _FLUSH_AT:
            self._start_flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._start_flush)

    def _start_flush(self) -> None:
        task = asyncio.ensure_future(self.flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def flush(self) -> None:
        """Writes everything that waits, tenant by tenant, in the order it was applied."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        async with self._lock:
            waiting, self._waiting, self._count = self._waiting, {}, 0
            marks, self._marks = self._marks, {}
            # Marks first: the transitions of one flush (EXPIRED, FAILED, redeliveries) mostly
            # follow the writes and acks of the same entries. Where both land in one flush in
            # the other order (an entry FAILED, then written again to a new session within
            # `interval_s`), the status shows the older state: status only, never delivery.
            for tenant, tenant_marks in marks.items():
                try:
                    await self._inner.record(tenant, tenant_marks)
                except Exception as exc:
                    self._lost.report(sum(len(m.entries) for m in tenant_marks), type(exc).__name__)
            for tenant, transitions in waiting.items():
                try:
                    await self._inner.apply_timed(tenant, transitions)
                except Exception as exc:
                    self._lost.report(len(transitions), type(exc).__name__)

    async def mark_read(
        self, tenant: str, user_id: str, notification_ids: list[str], at: float
    ) -> int:
        await self.flush()
        return await self._inner.mark_read(tenant, user_id, notification_ids, at)

    async def get(self, tenant: str, notification_id: str) -> NotificationRecord | None:
        await self.flush()
        return await self._inner.get(tenant, notification_id)

    async def recipients(
        self, tenant: str, user_id: str, notification_ids: Sequence[str]
    ) -> dict[str, RecipientRecord]:
        await self.flush()
        return await self._inner.recipients(tenant, user_id, notification_ids)

    async def purge(self, older_than: float) -> int:
        await self.flush()
        return await self._inner.purge(older_than)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.flush()
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        await self._inner.aclose()


class _Discard:
    async def apply(self, tenant: str, transitions: Sequence[Transition], at: float) -> None:
        return None

    async def record(self, tenant: str, marks: Sequence[Mark]) -> None:
        return None

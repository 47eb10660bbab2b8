"""LogStore in process memory: the embedded default."""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import Final

from services.stream.log import AppendResult, Entry, NewEntry

# Entries are stored as plain tuples of scalars, (cursor, notification_id, priority, created_at,
# expires_at, notification_field), and handed out as `Entry` values: the collector stops tracking
# such tuples, so the logs of a busy node (up to `inbox_limit` entries per user) do not make
# every full collection traverse them. See docs/performance.md, "Full collections".
_Stored = tuple[int, str, int, float, float, bytes]
_CURSOR: Final = 0
_EXPIRES_AT: Final = 4


def _entry(stored: _Stored) -> Entry:
    return Entry(*stored)


class _Log:
    __slots__ = ("by_id", "entries", "next_cursor", "next_expiry", "offset")

    def __init__(self) -> None:
        self.entries: list[_Stored] = []
        self.offset = 0  # entries[:offset] are dropped and wait for compaction
        self.next_cursor = 1
        self.by_id: dict[str, _Stored] = {}
        # The earliest expires_at of the live entries, as scheduled in the store's expiry heap.
        self.next_expiry = math.inf

    def live(self) -> list[_Stored]:
        return self.entries[self.offset :]

    def drop_oldest(self, count: int) -> list[Entry]:
        dropped = self.entries[self.offset : self.offset + count]
        self.offset += len(dropped)
        for stored in dropped:
            self.by_id.pop(stored[1], None)
        if self.offset > 1024 and self.offset * 2 > len(self.entries):
            del self.entries[: self.offset]
            self.offset = 0
        return [_entry(stored) for stored in dropped]

    def index_after(self, cursor: int) -> int:
        """Index into `entries` of the first live entry with a cursor > `cursor`."""
        lo, hi = self.offset, len(self.entries)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.entries[mid][_CURSOR] <= cursor:
                lo = mid + 1
            else:
                hi = mid
        return lo


class MemoryLogStore:
    """Logs as lists of entries; cursors are dense, reads are a binary search and a slice."""

    def __init__(self) -> None:
        self._logs: dict[tuple[str, str], _Log] = {}
        # (expires_at, tenant, log key): one live entry per log, at its earliest expiry.
        self._expiry: list[tuple[float, str, str]] = []

    def _schedule(self, log: _Log, tenant: str, log_key: str, expires_at: float) -> None:
        if expires_at < log.next_expiry:
            log.next_expiry = expires_at
            heapq.heappush(self._expiry, (expires_at, tenant, log_key))

    def _log(self, tenant: str, log_key: str) -> _Log:
        key = (tenant, log_key)
        log = self._logs.get(key)
        if log is None:
            log = self._logs[key] = _Log()
        return log

    async def append(
        self, tenant: str, log_key: str, items: Sequence[NewEntry], limit: int
    ) -> AppendResult:
        log = self._log(tenant, log_key)
        appended: list[Entry] = []
        for item in items:
            stored = (
                log.next_cursor,
                item.notification_id,
                item.priority,
                item.created_at,
                item.expires_at,
                item.notification_field,
            )
            log.next_cursor += 1
            log.entries.append(stored)
            log.by_id[item.notification_id] = stored
            appended.append(_entry(stored))
        if items:
            self._schedule(log, tenant, log_key, min(item.expires_at for item in items))
        overflow = len(log.entries) - log.offset - limit
        dropped = log.drop_oldest(overflow) if overflow > 0 else []
        return AppendResult(appended, dropped)

    async def read(self, tenant: str, log_key: str, after: int, limit: int) -> list[Entry]:
        log = self._logs.get((tenant, log_key))
        if log is None:
            return []
        start = log.index_after(after)
        return [_entry(stored) for stored in log.entries[start : start + limit]]

    async def read_reverse(self, tenant: str, log_key: str, before: int, limit: int) -> list[Entry]:
        log = self._logs.get((tenant, log_key))
        if log is None:
            return []
        end = len(log.entries) if before <= 0 else log.index_after(before - 1)
        start = max(log.offset, end - limit)
        return [_entry(stored) for stored in log.entries[start:end][::-1]]

    async def find(self, tenant: str, log_key: str, notification_id: str) -> Entry | None:
        log = self._logs.get((tenant, log_key))
        stored = None if log is None else log.by_id.get(notification_id)
        return None if stored is None else _entry(stored)

    async def last_cursor(self, tenant: str, log_key: str) -> int:
        log = self._logs.get((tenant, log_key))
        return 0 if log is None else log.next_cursor - 1

    async def drop_expired(self, tenant: str, log_key: str, now: float) -> list[Entry]:
        log = self._logs.get((tenant, log_key))
        if log is None:
            return []
        live = log.live()
        kept = [stored for stored in live if stored[_EXPIRES_AT] > now]
        expired = (
            [stored for stored in live if stored[_EXPIRES_AT] <= now]
            if len(kept) < len(live)
            else []
        )
        if expired:
            log.entries, log.offset = kept, 0
            for stored in expired:
                log.by_id.pop(stored[1], None)
        # Always schedule again: the log may have been due on an entry the bound dropped since.
        log.next_expiry = math.inf
        if kept:
            self._schedule(log, tenant, log_key, min(stored[_EXPIRES_AT] for stored in kept))
        return [_entry(stored) for stored in expired]

    async def expired_logs(self, now: float) -> list[tuple[str, str]]:
        due: dict[tuple[str, str], None] = {}
        while self._expiry and self._expiry[0][0] <= now:
            _, tenant, log_key = heapq.heappop(self._expiry)
            log = self._logs.get((tenant, log_key))
            if log is not None and log.next_expiry <= now:
                due[(tenant, log_key)] = None
                log.next_expiry = math.inf  # drop_expired schedules what is left
        return list(due)

    async def log_keys(self, tenant: str) -> list[str]:
        return [
            key
            for (t, key), log in self._logs.items()
            if t == tenant and len(log.entries) > log.offset
        ]

    async def tenants(self) -> list[str]:
        return sorted({tenant for tenant, _ in self._logs})

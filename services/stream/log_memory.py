"""LogStore in process memory: the embedded default."""

from __future__ import annotations

import heapq
import math
import secrets
from collections.abc import Sequence
from typing import Final

from services.domain import LogKey, NewRecord, user_log
from services.stream.log import AppendResult, Entry, Expired, LogAppend, LogHead
from services.stream.status import StatusStore

# Entries are stored as plain tuples of scalars, (cursor, notification_id, priority, created_at,
# expires_at, notification_field, trace_context), and handed out as `Entry` values: the
# collector stops tracking such tuples, so the logs of a busy node (up to `inbox_limit`
# entries per user) do not make every full collection traverse them. See docs/performance.md,
# "Full collections".
_Stored = tuple[int, str, int, float, float, bytes, str]
_CURSOR: Final = 0
_EXPIRES_AT: Final = 4
_FIELD: Final = 5


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
    """Logs as lists of entries; cursors are dense, reads are a binary search and a slice.

    Every log of one store shares the store's epoch, drawn at random when the store is made: a
    restarted process has a new store, so cursors from before the restart are recognised.
    """

    def __init__(self, status: StatusStore | None = None, epoch: int | None = None) -> None:
        self._logs: dict[tuple[str, LogKey], _Log] = {}
        # Each tenant's channel and broadcast logs (`notifications` looks through them).
        self._shared_logs: dict[str, list[_Log]] = {}
        # (expires_at, tenant, log key): one live entry per log, at its earliest expiry.
        self._expiry: list[tuple[float, str, LogKey]] = []
        self._status = status
        self.epoch = epoch or secrets.randbits(52) + 1

    def _schedule(self, log: _Log, tenant: str, key: LogKey, expires_at: float) -> None:
        if expires_at < log.next_expiry:
            log.next_expiry = expires_at
            heapq.heappush(self._expiry, (expires_at, tenant, key))

    def _log(self, tenant: str, key: LogKey) -> _Log:
        log = self._logs.get((tenant, key))
        if log is None:
            log = self._logs[(tenant, key)] = _Log()
            if not key.is_user:
                self._shared_logs.setdefault(tenant, []).append(log)
        return log

    async def append(
        self, tenant: str, appends: Sequence[LogAppend], records: Sequence[NewRecord] = ()
    ) -> list[AppendResult]:
        # Nothing below awaits anything that yields: the whole call is one step for every
        # other task of the loop.
        if records and self._status is not None:
            await self._status.create(records)
        return [self._append_one(tenant, append) for append in appends]

    def _append_one(self, tenant: str, append: LogAppend) -> AppendResult:
        key, items, limit = append
        log = self._log(tenant, key)
        appended: list[Entry] = []
        by_id = log.by_id
        stored_entries = log.entries
        cursor = log.next_cursor
        for item in items:
            stored = (
                cursor,
                item.notification_id,
                item.priority,
                item.created_at,
                item.expires_at,
                item.notification_field,
                item.trace_context,
            )
            cursor += 1
            stored_entries.append(stored)
            by_id[item.notification_id] = stored
            appended.append(Entry(*stored))
        log.next_cursor = cursor
        if items:
            self._schedule(log, tenant, key, min(item.expires_at for item in items))
        overflow = len(stored_entries) - log.offset - limit
        dropped = log.drop_oldest(overflow) if overflow > 0 else []
        return AppendResult(key, appended, self.epoch, dropped)

    async def read(self, tenant: str, key: LogKey, after: int, limit: int) -> list[Entry]:
        log = self._logs.get((tenant, key))
        if log is None:
            return []
        start = log.index_after(after)
        return [_entry(stored) for stored in log.entries[start : start + limit]]

    async def ids(self, tenant: str, key: LogKey, after: int, up_to: int) -> list[tuple[int, str]]:
        log = self._logs.get((tenant, key))
        if log is None or up_to <= after:
            return []
        start = log.index_after(after)
        end = log.index_after(up_to)
        return [(stored[0], stored[1]) for stored in log.entries[start:end]]

    async def read_reverse(self, tenant: str, key: LogKey, before: int, limit: int) -> list[Entry]:
        log = self._logs.get((tenant, key))
        if log is None:
            return []
        end = len(log.entries) if before <= 0 else log.index_after(before - 1)
        start = max(log.offset, end - limit)
        return [_entry(stored) for stored in log.entries[start:end][::-1]]

    async def heads(self, tenant: str, keys: Sequence[LogKey]) -> list[LogHead]:
        logs = self._logs
        heads = []
        for key in keys:
            log = logs.get((tenant, key))
            heads.append(LogHead(self.epoch, 0 if log is None else log.next_cursor - 1))
        return heads

    async def find(
        self, tenant: str, keys: Sequence[LogKey], notification_id: str
    ) -> tuple[LogKey, Entry] | None:
        for key in keys:
            log = self._logs.get((tenant, key))
            stored = None if log is None else log.by_id.get(notification_id)
            if stored is not None:
                return key, _entry(stored)
        return None

    async def notifications(
        self, tenant: str, wanted: Sequence[tuple[str, str]]
    ) -> dict[str, bytes]:
        # The user's own log, then the tenant's channel and broadcast logs for the rest: a
        # lookup per event and one pass over the shared logs, never over every user's log.
        found: dict[str, bytes] = {}
        logs = self._logs
        for user_id, notification_id in wanted:
            log = logs.get((tenant, user_log(user_id)))
            stored = None if log is None else log.by_id.get(notification_id)
            if stored is not None:
                found[notification_id] = stored[_FIELD]
        left = {i for _, i in wanted if i not in found}
        for log in self._shared_logs.get(tenant, ()) if left else ():
            by_id = log.by_id
            for notification_id in [i for i in left if i in by_id]:
                found[notification_id] = by_id[notification_id][_FIELD]
                left.discard(notification_id)
            if not left:
                break
        return found

    async def size(self, tenant: str, key: LogKey) -> int:
        log = self._logs.get((tenant, key))
        return 0 if log is None else len(log.entries) - log.offset

    async def locate(
        self, tenant: str, key: LogKey, notification_ids: Sequence[str]
    ) -> dict[str, tuple[int, float]]:
        log = self._logs.get((tenant, key))
        if log is None:
            return {}
        by_id = log.by_id
        found = {}
        for notification_id in notification_ids:
            stored = by_id.get(notification_id)
            if stored is not None:
                found[notification_id] = (stored[_CURSOR], stored[_EXPIRES_AT])
        return found

    async def drop_expired(self, now: float, limit: int) -> list[Expired]:
        out: list[Expired] = []
        count = 0
        while self._expiry and self._expiry[0][0] <= now and count < limit:
            _, tenant, key = heapq.heappop(self._expiry)
            log = self._logs.get((tenant, key))
            if log is None or log.next_expiry > now:
                continue
            expired = self._drop_expired(log, tenant, key, now)
            if expired:
                out.append(Expired(tenant, key, expired))
                count += len(expired)
        return out

    def _drop_expired(self, log: _Log, tenant: str, key: LogKey, now: float) -> list[Entry]:
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
            self._schedule(log, tenant, key, min(stored[_EXPIRES_AT] for stored in kept))
        return [_entry(stored) for stored in expired]

    async def aclose(self) -> None:
        return None

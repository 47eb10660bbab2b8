"""The per-recipient ordered log: the store every delivery guarantee rests on.

Invariants every implementation keeps (the contract tests in tests/contract check them):

- Cursors of one log start at 1 and strictly increase by 1 per appended entry; a cursor is never
  reused, also after entries are dropped.
- Every log has an epoch: a number that names this generation of the log. It stays the same for
  as long as the store keeps the log's entries; a store that lost them (an embedded store that
  restarted, a database restored from an older backup) gives the log a new epoch. A cursor is
  meaningful only together with its epoch.
- `read(after=c)` returns entries with cursor > c in cursor order; entries dropped by the bound
  or by expiry are simply absent (a reader sees a jump in cursors, never a reordering).
- `append` is one atomic step: every log of the call gets its entries, and the notifications'
  status records are created, or nothing is stored.
- Appending beyond the log's bound drops the oldest entries and reports them.
- Logs of different tenants, and different log keys, never see each other's entries.

The methods are shaped for a networked store: one call appends to many logs, reads the heads of
many logs, or sweeps many expired entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from services.domain import LogKey, NewRecord


@dataclass(slots=True)
class NewEntry:
    """A notification about to be appended to a log."""

    notification_id: str
    priority: int
    created_at: float
    expires_at: float
    # The encoded Notification, already framed as the Delivery.notification field.
    notification_field: bytes
    # The W3C traceparent of the Send's span (services/tracing.py); "" when tracing is off.
    trace_context: str = ""


@dataclass(slots=True)
class Entry:
    """A notification in a log, at its cursor."""

    cursor: int
    notification_id: str
    priority: int
    created_at: float
    expires_at: float
    notification_field: bytes
    trace_context: str = ""


class LogAppend(NamedTuple):
    """Entries for one log, and the most entries that log keeps."""

    key: LogKey
    entries: Sequence[NewEntry]
    limit: int


@dataclass(slots=True)
class AppendResult:
    key: LogKey
    entries: list[Entry]
    # The log's epoch (see the module invariants).
    epoch: int = 0
    # Entries pushed out by the log's bound (oldest first): they will never be delivered.
    dropped: list[Entry] = field(default_factory=list)


class LogHead(NamedTuple):
    """Where a log stands: its epoch and the cursor of its newest entry (0: none yet)."""

    epoch: int
    cursor: int


class Expired(NamedTuple):
    """Entries of one log that expired and were removed."""

    tenant: str
    key: LogKey
    entries: list[Entry]


class LogStore(Protocol):
    """Ordered, bounded logs of notifications, per tenant and log key."""

    async def append(
        self, tenant: str, appends: Sequence[LogAppend], records: Sequence[NewRecord] = ()
    ) -> list[AppendResult]:
        """Appends to each log in order, assigning its next cursors, and creates the status
        records of the notifications (in the status store this log store was built with), in
        one atomic step. Returns one result per append, in the same order."""
        ...

    async def read(self, tenant: str, key: LogKey, after: int, limit: int) -> list[Entry]:
        """Up to `limit` entries with cursor > `after`, in cursor order."""
        ...

    async def read_reverse(self, tenant: str, key: LogKey, before: int, limit: int) -> list[Entry]:
        """Up to `limit` entries with cursor < `before` (0: no bound), newest first."""
        ...

    async def ids(self, tenant: str, key: LogKey, after: int, up_to: int) -> list[tuple[int, str]]:
        """The cursor and notification id of each entry with `after` < cursor <= `up_to`, in
        cursor order: what an ack names, without the payloads a read carries."""
        ...

    async def heads(self, tenant: str, keys: Sequence[LogKey]) -> list[LogHead]:
        """The head of each log, in the order of `keys` (a log never appended to has cursor 0
        and the epoch it will get)."""
        ...

    async def find(
        self, tenant: str, keys: Sequence[LogKey], notification_id: str
    ) -> tuple[LogKey, Entry] | None:
        """The first of `keys` whose log still holds the notification, and its entry there."""
        ...

    async def notifications(
        self, tenant: str, wanted: Sequence[tuple[str, str]]
    ) -> dict[str, bytes]:
        """For each (user id, notification id) of `wanted`, the notification's field
        (`Entry.notification_field`) if the user's own log or a channel or broadcast log of
        the tenant still holds it, in one call (the webhook sender's read of a batch's
        categories). One the bound pushed out may still be answered until its expiry; one
        swept by `drop_expired` is not."""
        ...

    async def size(self, tenant: str, key: LogKey) -> int:
        """How many entries the log holds (expired ones the sweep has not removed yet too)."""
        ...

    async def locate(
        self, tenant: str, key: LogKey, notification_ids: Sequence[str]
    ) -> dict[str, tuple[int, float]]:
        """(cursor, expires_at) of each of the notifications that the log holds."""
        ...

    async def drop_expired(self, now: float, limit: int) -> list[Expired]:
        """Removes up to about `limit` entries expired at `now`, across every log and tenant,
        and returns them; call again while it returns `limit` or more."""
        ...

    async def aclose(self) -> None:
        """Releases connections; the store is not used afterwards."""
        ...

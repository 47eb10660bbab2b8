"""The per-recipient ordered log: the store every delivery guarantee rests on.

Invariants every implementation keeps (the contract tests in tests/contract check them):

- Cursors of one log start at 1 and strictly increase by 1 per appended entry; a cursor is never
  reused, also after entries are dropped.
- `read(after=c)` returns entries with cursor > c in cursor order; entries dropped by the bound
  or by expiry are simply absent (a reader sees a jump in cursors, never a reordering).
- Appending beyond the log's bound drops the oldest entries and reports them.
- Logs of different tenants, and different log keys, never see each other's entries.

Log keys: `user:<user_id>` (a user's inbox), `channel:<name>`, and `broadcast` (tenant-wide).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

USER_PREFIX = "user:"
CHANNEL_PREFIX = "channel:"
BROADCAST = "broadcast"


def user_log(user_id: str) -> str:
    return USER_PREFIX + user_id


def channel_log(channel: str) -> str:
    return CHANNEL_PREFIX + channel


def client_log_name(log_key: str) -> str:
    """How a log is named to its subscriber: a user's own log is just `user`."""
    return "user" if log_key.startswith(USER_PREFIX) else log_key


@dataclass(slots=True)
class NewEntry:
    """A notification about to be appended to a log."""

    notification_id: str
    priority: int
    created_at: float
    expires_at: float
    # The encoded Notification, already framed as the Delivery.notification field.
    notification_field: bytes


@dataclass(slots=True)
class Entry:
    """A notification in a log, at its cursor."""

    cursor: int
    notification_id: str
    priority: int
    created_at: float
    expires_at: float
    notification_field: bytes


@dataclass(slots=True)
class AppendResult:
    entries: list[Entry]
    # Entries pushed out by the log's bound (oldest first): they will never be delivered.
    dropped: list[Entry] = field(default_factory=list)


class LogStore(Protocol):
    """Ordered, bounded logs of notifications, per tenant and log key."""

    async def append(
        self, tenant: str, log_key: str, items: Sequence[NewEntry], limit: int
    ) -> AppendResult:
        """Appends in order, assigning the next cursors; keeps at most `limit` entries."""
        ...

    async def read(self, tenant: str, log_key: str, after: int, limit: int) -> list[Entry]:
        """Up to `limit` entries with cursor > `after`, in cursor order."""
        ...

    async def read_reverse(self, tenant: str, log_key: str, before: int, limit: int) -> list[Entry]:
        """Up to `limit` entries with cursor < `before` (0: no bound), newest first."""
        ...

    async def find(self, tenant: str, log_key: str, notification_id: str) -> Entry | None:
        """The entry of a notification in the log, if it is still there."""
        ...

    async def last_cursor(self, tenant: str, log_key: str) -> int:
        """The cursor of the newest entry ever appended (0 for an empty log)."""
        ...

    async def drop_expired(self, tenant: str, log_key: str, now: float) -> list[Entry]:
        """Removes and returns the entries expired at `now`."""
        ...

    async def expired_logs(self, now: float) -> list[tuple[str, str]]:
        """(tenant, log key) of every log that may hold entries expired at `now`: an index, so
        that sweeping costs nothing while nothing expires. The caller calls `drop_expired` on
        each of them (which keeps the index up to date)."""
        ...

    async def log_keys(self, tenant: str) -> list[str]:
        """The keys of the tenant's non-empty logs."""
        ...

    async def tenants(self) -> list[str]: ...

"""Inbox states per user and notification: seen, read, archived (docs/inbox.md).

A notification is in a user's inbox while it is an entry of the user's own log (not expired,
not pushed out by the log's bound). The store holds a row only for an entry whose state someone
changed, and beside the rows, per user, three counters over them, kept in the same step as
every change, so that the counts cost one read of the counters and one of the log's size:

- `archived`: rows archived;
- `read`: rows read and not archived;
- `seen`: rows seen and not archived.

Counts then follow without reading the inbox (`InboxCounters.counts`): total = entries in the
log - archived, unread = total - read, unseen = total - seen.

Invariants every implementation keeps (tests/contract/test_inbox_states.py):

- The counters are exactly the sums over the user's rows, after every call.
- `change` applies `next_state` to each named notification and reports the ones that changed;
  a state already set changes nothing (its time stays the first one).
- `forget` removes the rows of entries that left the log (expired, or dropped by the bound),
  and their share of the counters: the caller calls it with every entry that leaves.
- Users and tenants never see each other's rows.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from typing import NamedTuple, Protocol

log = logging.getLogger(__name__)


class Action(enum.IntEnum):
    """herald.v1.InboxAction."""

    SEEN = 1
    READ = 2
    UNREAD = 3
    ARCHIVE = 4
    UNARCHIVE = 5


class InboxState(NamedTuple):
    """One notification's state for one user; 0.0: not set."""

    seen_at: float = 0.0
    read_at: float = 0.0
    archived_at: float = 0.0

    @property
    def share(self) -> tuple[int, int, int]:
        """What this row adds to the (archived, read, seen) counters."""
        if self.archived_at:
            return 1, 0, 0
        return 0, int(self.read_at > 0), int(self.seen_at > 0)


UNSET = InboxState()


class Counts(NamedTuple):
    """herald.v1.InboxCounts."""

    unseen: int
    unread: int
    total: int


class InboxCounters(NamedTuple):
    """The per-user counters over the rows (see the module docstring)."""

    archived: int = 0
    read: int = 0
    seen: int = 0

    def counts(self, entries: int) -> Counts:
        """The counts of an inbox of `entries` log entries. Never negative: for a moment after
        the sweep removed an entry and before its row is forgotten, the row still counts."""
        total = max(0, entries - self.archived)
        return Counts(max(0, total - self.seen), max(0, total - self.read), total)

    def plus(self, before: InboxState, after: InboxState) -> InboxCounters:
        """The counters after one row changed from `before` to `after`."""
        (a0, r0, s0), (a1, r1, s1) = before.share, after.share
        return InboxCounters(self.archived + a1 - a0, self.read + r1 - r0, self.seen + s1 - s0)


def next_state(state: InboxState, action: Action, at: float) -> InboxState:
    """The state after `action` at `at`: READ also sets seen_at, UNREAD keeps it."""
    seen_at, read_at, archived_at = state
    if action is Action.SEEN:
        return InboxState(seen_at or at, read_at, archived_at)
    if action is Action.READ:
        return InboxState(seen_at or at, read_at or at, archived_at)
    if action is Action.UNREAD:
        return InboxState(seen_at, 0.0, archived_at)
    if action is Action.ARCHIVE:
        return InboxState(seen_at, read_at, archived_at or at)
    return InboxState(seen_at, read_at, 0.0)


class InboxStateStore(Protocol):
    """Seen / read / archived per (tenant, user, notification), with the user's counters."""

    async def get(
        self, tenant: str, user_id: str, notification_ids: Sequence[str]
    ) -> dict[str, InboxState]:
        """The rows of those notifications that have one (one call for a page)."""
        ...

    async def change(
        self, tenant: str, user_id: str, notification_ids: Sequence[str], action: Action, at: float
    ) -> tuple[list[str], InboxCounters]:
        """Applies `action` to each notification (the caller checked they are in the user's
        inbox), in one atomic step with the counters; returns the ids that changed, in the
        order given, and the counters after."""
        ...

    async def counters(self, tenant: str, user_id: str) -> InboxCounters: ...

    async def forget(self, tenant: str, entries: Sequence[tuple[str, str]]) -> None:
        """Removes the rows of (user_id, notification_id) pairs whose entries left the users'
        logs, and their share of the counters."""
        ...

    async def aclose(self) -> None: ...


async def forget_inbox_states(
    states: InboxStateStore, tenant: str, entries: Sequence[tuple[str, str]]
) -> None:
    """Forgets the inbox states of entries, (user_id, notification_id), that left users' own
    logs. A failure is logged, not raised: the entries are gone either way, and the counts are
    off by those rows until the rows are forgotten (docs/inbox.md)."""
    if not entries:
        return
    try:
        await states.forget(tenant, entries)
    except Exception as exc:
        log.warning(
            "could not forget the inbox states of entries that left a log",
            extra={"count": len(entries), "error": type(exc).__name__},
        )

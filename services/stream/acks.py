"""What each user has acknowledged, per log: a watermark plus the acked cursors above it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.domain import LogKey

# `above` when nothing above the watermark is acked, shared by every state: an open session
# holds a state per log it reads, and an empty set is 216 bytes.
NO_CURSORS: frozenset[int] = frozenset()


@dataclass(slots=True)
class AckState:
    """Every cursor <= `up_to` is acked, and so is every cursor in `above`."""

    up_to: int = 0
    above: set[int] | frozenset[int] = NO_CURSORS

    def is_acked(self, cursor: int) -> bool:
        return cursor <= self.up_to or cursor in self.above

    def copy(self) -> AckState:
        return AckState(self.up_to, set(self.above) if self.above else NO_CURSORS)

    def add(self, cursor: int) -> bool:
        """Marks one cursor acked; returns False when it already was."""
        if self.is_acked(cursor):
            return False
        above = self.above
        if isinstance(above, frozenset):  # NO_CURSORS: made on the first cursor above
            above = self.above = {cursor}
        else:
            above.add(cursor)
        while self.up_to + 1 in above:
            self.up_to += 1
            above.discard(self.up_to)
        return True

    def merge(self, other: AckState) -> None:
        """Adds what `other` acks (the store's state, acked through another node)."""
        self.raise_to(other.up_to)
        for cursor in other.above:
            self.add(cursor)

    def raise_to(self, cursor: int) -> None:
        if cursor <= self.up_to:
            return
        self.up_to = cursor
        if not self.above:
            return
        above = self.above = {c for c in self.above if c > cursor}
        while self.up_to + 1 in above:
            self.up_to += 1
            above.discard(self.up_to)


class AckStore(Protocol):
    """Per (tenant, user, log) acknowledgement state."""

    async def get(self, tenant: str, user_id: str, keys: Sequence[LogKey]) -> list[AckState]:
        """A copy of the state of each log, in the order of `keys` (empty when nothing was
        acked)."""
        ...

    async def ack(
        self, tenant: str, user_id: str, key: LogKey, cursors: Iterable[int]
    ) -> list[int]:
        """Acks the cursors; returns those that were not acked before."""
        ...

    async def ack_up_to(self, tenant: str, user_id: str, key: LogKey, cursor: int) -> AckState:
        """Acks everything at or below `cursor`; returns the state from before."""
        ...

    async def aclose(self) -> None: ...

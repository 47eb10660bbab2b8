"""What each user has acknowledged, per log: a watermark plus the acked cursors above it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.domain import LogKey


@dataclass(slots=True)
class AckState:
    """Every cursor <= `up_to` is acked, and so is every cursor in `above`."""

    up_to: int = 0
    above: set[int] = field(default_factory=set)

    def is_acked(self, cursor: int) -> bool:
        return cursor <= self.up_to or cursor in self.above

    def add(self, cursor: int) -> bool:
        """Marks one cursor acked; returns False when it already was."""
        if self.is_acked(cursor):
            return False
        self.above.add(cursor)
        while self.up_to + 1 in self.above:
            self.up_to += 1
            self.above.discard(self.up_to)
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
        self.above = {c for c in self.above if c > cursor}
        while self.up_to + 1 in self.above:
            self.up_to += 1
            self.above.discard(self.up_to)


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

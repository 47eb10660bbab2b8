"""Segments: the `SegmentStore` Protocol and its bounds.

A segment is a named set of user ids stored per tenant. A send to a segment resolves its members
once, at send time (`members_at_send`), so a user added afterwards gets none of the earlier sends.
Member pages are ordered by user id (byte order), so a caller pages with `after`.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from services.bounds import quote
from services.errors import NotFound, ResourceExhausted

MAX_MEMBERS: Final = 100_000
MAX_NAME_LEN: Final = 128
# Users per AddSegmentMembers / RemoveSegmentMembers call.
MAX_BATCH: Final = 10_000
DEFAULT_PAGE: Final = 1000
MAX_PAGE: Final = 10_000


@dataclass(frozen=True)
class SegmentInfo:
    name: str
    members: int
    created_at: float


class SegmentNotFound(NotFound):
    def __init__(self, tenant: str, name: str) -> None:
        super().__init__(
            f"tenant {quote(tenant)} has no segment {quote(name)}: create it first (CreateSegment)"
        )


class SegmentFull(ResourceExhausted):
    def __init__(self, name: str, would_have: int) -> None:
        super().__init__(
            f"segment {quote(name)} would have {would_have} members, more than the "
            f"{MAX_MEMBERS} allowed: remove members or split it into several segments"
        )


class SegmentStore(Protocol):
    async def create(self, tenant: str, name: str, created_at: float) -> bool:
        """Creates an empty segment; False (and no change) when it exists already."""
        ...

    async def add(self, tenant: str, name: str, users: Sequence[str]) -> int:
        """Adds `users` (already members are skipped) and returns how many were new.

        Raises:
            SegmentNotFound: no such segment.
            SegmentFull: the segment would have more than MAX_MEMBERS members (nothing added).
        """
        ...

    async def remove(self, tenant: str, name: str, users: Sequence[str]) -> int:
        """Removes `users` and returns how many were members. Raises SegmentNotFound."""
        ...

    async def members(
        self, tenant: str, name: str, after: str = "", limit: int = DEFAULT_PAGE
    ) -> builtins.list[str]:
        """Up to `limit` members sorting after `after`, by user id. Raises SegmentNotFound."""
        ...

    async def members_at_send(self, tenant: str, name: str) -> builtins.list[str]:
        """Every member now, by user id: what a send to the segment targets. Raises
        SegmentNotFound."""
        ...

    async def list(self, tenant: str) -> builtins.list[SegmentInfo]:
        """The tenant's segments by name."""
        ...

    async def delete(self, tenant: str, name: str) -> bool:
        """Deletes the segment and its members; False when there was none."""
        ...

    async def aclose(self) -> None:
        """Releases connections; the store is not used afterwards."""

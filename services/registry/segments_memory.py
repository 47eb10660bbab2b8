"""SegmentStore in memory (the embedded profile): a dict of sets per tenant."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.registry.segments import (
    DEFAULT_PAGE,
    MAX_MEMBERS,
    SegmentFull,
    SegmentInfo,
    SegmentNotFound,
)


@dataclass
class _Segment:
    created_at: float
    members: set[str] = field(default_factory=set)


class MemorySegmentStore:
    def __init__(self) -> None:
        self._segments: dict[tuple[str, str], _Segment] = {}

    def _get(self, tenant: str, name: str) -> _Segment:
        segment = self._segments.get((tenant, name))
        if segment is None:
            raise SegmentNotFound(tenant, name)
        return segment

    async def create(self, tenant: str, name: str, created_at: float) -> bool:
        if (tenant, name) in self._segments:
            return False
        self._segments[tenant, name] = _Segment(created_at)
        return True

    async def add(self, tenant: str, name: str, users: Sequence[str]) -> int:
        segment = self._get(tenant, name)
        new = set(users) - segment.members
        if len(segment.members) + len(new) > MAX_MEMBERS:
            raise SegmentFull(name, len(segment.members) + len(new))
        segment.members |= new
        return len(new)

    async def remove(self, tenant: str, name: str, users: Sequence[str]) -> int:
        segment = self._get(tenant, name)
        gone = segment.members & set(users)
        segment.members -= gone
        return len(gone)

    async def members(
        self, tenant: str, name: str, after: str = "", limit: int = DEFAULT_PAGE
    ) -> builtins.list[str]:
        members = self._get(tenant, name).members
        return sorted((user for user in members if user.encode() > after.encode()), key=str.encode)[
            :limit
        ]

    async def members_at_send(self, tenant: str, name: str) -> builtins.list[str]:
        return sorted(self._get(tenant, name).members, key=str.encode)

    async def list(self, tenant: str) -> builtins.list[SegmentInfo]:
        return sorted(
            (
                SegmentInfo(name, len(segment.members), segment.created_at)
                for (owner, name), segment in self._segments.items()
                if owner == tenant
            ),
            key=lambda info: info.name.encode(),
        )

    async def delete(self, tenant: str, name: str) -> bool:
        return self._segments.pop((tenant, name), None) is not None

    async def aclose(self) -> None:
        pass

"""AckStore in process memory."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from services.domain import LogKey
from services.stream.acks import AckState


class MemoryAckStore:
    def __init__(self) -> None:
        self._states: dict[tuple[str, str, LogKey], AckState] = {}

    async def get(self, tenant: str, user_id: str, keys: Sequence[LogKey]) -> list[AckState]:
        states = self._states
        out = []
        for key in keys:
            state = states.get((tenant, user_id, key))
            out.append(AckState() if state is None else state.copy())
        return out

    async def ack(
        self, tenant: str, user_id: str, key: LogKey, cursors: Iterable[int]
    ) -> list[int]:
        state = self._states.setdefault((tenant, user_id, key), AckState())
        return [cursor for cursor in cursors if state.add(cursor)]

    async def ack_up_to(self, tenant: str, user_id: str, key: LogKey, cursor: int) -> AckState:
        state = self._states.setdefault((tenant, user_id, key), AckState())
        before = state.copy()
        state.raise_to(cursor)
        return before

    async def aclose(self) -> None:
        return None

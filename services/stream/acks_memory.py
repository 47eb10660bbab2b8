"""AckStore in process memory."""

from __future__ import annotations

from collections.abc import Iterable

from services.stream.acks import AckState


class MemoryAckStore:
    def __init__(self) -> None:
        self._states: dict[tuple[str, str, str], AckState] = {}

    async def get(self, tenant: str, user_id: str, log_key: str) -> AckState:
        state = self._states.get((tenant, user_id, log_key))
        return AckState() if state is None else AckState(state.up_to, set(state.above))

    async def ack(
        self, tenant: str, user_id: str, log_key: str, cursors: Iterable[int]
    ) -> list[int]:
        state = self._states.setdefault((tenant, user_id, log_key), AckState())
        return [cursor for cursor in cursors if state.add(cursor)]

    async def ack_up_to(self, tenant: str, user_id: str, log_key: str, cursor: int) -> AckState:
        state = self._states.setdefault((tenant, user_id, log_key), AckState())
        before = AckState(state.up_to, set(state.above))
        state.raise_to(cursor)
        return before

"""SessionDirectory in process memory."""

from __future__ import annotations

import builtins
import dataclasses

from services.domain import SessionInfo, UserPresenceRecord
from services.registry.sessions import PRESENCE_RETENTION_S


class MemorySessionDirectory:
    def __init__(self, presence_retention_s: float = PRESENCE_RETENTION_S) -> None:
        self._keep = presence_retention_s
        self._sessions: dict[str, dict[str, SessionInfo]] = {}
        # (tenant, user) -> session ids; and when each user was last online.
        self._by_user: dict[tuple[str, str], set[str]] = {}
        # In the order users left (a user who comes back is taken out), so `expire` forgets
        # those past the retention from the front.
        self._left_at: dict[tuple[str, str], float] = {}
        self._online_since: dict[tuple[str, str], float] = {}

    async def add(self, session: SessionInfo, max_per_user: int) -> bool:
        existing = self._sessions.get(session.tenant, {}).get(session.session_id)
        if existing is not None and existing.user_id != session.user_id:
            # The same id now names another user's session: it moves, nothing stays behind.
            await self.remove(session.tenant, session.session_id, session.connected_at)
        session = dataclasses.replace(session)
        key = (session.tenant, session.user_id)
        ids = self._by_user.setdefault(key, set())
        if session.session_id not in ids and len(ids) >= max_per_user:
            return False
        if not ids:
            self._online_since[key] = session.connected_at
        ids.add(session.session_id)
        self._sessions.setdefault(session.tenant, {})[session.session_id] = session
        self._left_at.pop(key, None)
        return True

    async def touch(
        self, tenant: str, session_ids: builtins.list[str], at: float
    ) -> builtins.list[str]:
        sessions = self._sessions.get(tenant, {})
        unknown = []
        for session_id in session_ids:
            session = sessions.get(session_id)
            if session is None:
                unknown.append(session_id)
            else:
                session.last_seen_at = at
        return unknown

    async def set_channels(self, tenant: str, session_id: str, channels: tuple[str, ...]) -> bool:
        session = self._sessions.get(tenant, {}).get(session_id)
        if session is None:
            return False
        session.channels = tuple(channels)
        return True

    async def remove(self, tenant: str, session_id: str, at: float) -> SessionInfo | None:
        session = self._sessions.get(tenant, {}).pop(session_id, None)
        if session is None:
            return None
        key = (tenant, session.user_id)
        ids = self._by_user.get(key, set())
        ids.discard(session_id)
        if not ids:
            self._by_user.pop(key, None)
            self._online_since.pop(key, None)
            self._left_at[key] = at
        return session

    async def list(self, tenant: str, user_id: str = "") -> builtins.list[SessionInfo]:
        sessions = self._sessions.get(tenant, {}).values()
        return [dataclasses.replace(s) for s in sessions if not user_id or s.user_id == user_id]

    async def presence(
        self, tenant: str, user_ids: builtins.list[str]
    ) -> builtins.list[UserPresenceRecord]:
        out = []
        for user_id in user_ids:
            key = (tenant, user_id)
            out.append(
                UserPresenceRecord(
                    user_id,
                    len(self._by_user.get(key, ())),
                    self._left_at.get(key, 0.0),
                    self._online_since.get(key, 0.0),
                )
            )
        return out

    async def expire(self, older_than: float, at: float) -> builtins.list[SessionInfo]:
        stale = [
            s
            for sessions in self._sessions.values()
            for s in sessions.values()
            if s.last_seen_at < older_than
        ]
        for session in stale:
            await self.remove(session.tenant, session.session_id, at)
        forget_before = at - self._keep
        while self._left_at:
            key, left_at = next(iter(self._left_at.items()))
            if left_at >= forget_before:
                break
            del self._left_at[key]
        return stale

    async def aclose(self) -> None:
        return None

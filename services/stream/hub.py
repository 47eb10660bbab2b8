"""The sessions open on this node, indexed by the logs they read and by user.

The hub is the broker's handler on this node: a publication is offered to every session reading
its log. It also keeps the broker's subscriptions: one per (tenant, log) that has a reader here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from services.clock import Clock
from services.domain import LogKey
from services.stream.broker import Broker, Publication
from services.stream.log import LogHead
from services.stream.session import Session

_NO_SESSIONS: frozenset[Session] = frozenset()


class Hub:
    """Open sessions of one node; every session is in `sessions` and under each log it reads."""

    def __init__(self, broker: Broker, clock: Clock) -> None:
        self._broker = broker
        self._clock = clock
        self.sessions: dict[str, Session] = {}
        # (tenant, log) -> sessions reading that log on this node.
        self._readers: dict[tuple[str, LogKey], set[Session]] = {}
        # (tenant, user) -> that user's sessions on this node.
        self._by_user: dict[tuple[str, str], set[Session]] = {}
        # Set whenever no session is open (shutdown waits on it).
        self.drained = asyncio.Event()
        self.drained.set()

    def start(self) -> None:
        self._broker.start(self.on_publication, self.on_reset)

    # -- membership ------------------------------------------------------------------------

    async def add(self, session: Session) -> None:
        self.sessions[session.session_id] = session
        self.drained.clear()
        self._by_user.setdefault((session.tenant, session.user_id), set()).add(session)
        for key in session.logs:
            await self.add_reader(session, key)

    async def remove(self, session: Session) -> bool:
        """Forgets the session; False when it was not here."""
        if self.sessions.pop(session.session_id, None) is None:
            return False
        for key in session.logs:
            await self.remove_reader(session, key)
        siblings = self._by_user.get((session.tenant, session.user_id))
        if siblings is not None:
            siblings.discard(session)
            if not siblings:
                del self._by_user[(session.tenant, session.user_id)]
        if not self.sessions:
            self.drained.set()
        return True

    async def add_reader(self, session: Session, key: LogKey) -> None:
        readers = self._readers.get((session.tenant, key))
        if readers is None:
            readers = self._readers[(session.tenant, key)] = set()
            await self._broker.subscribe(session.tenant, key)
        readers.add(session)

    async def remove_reader(self, session: Session, key: LogKey) -> None:
        readers = self._readers.get((session.tenant, key))
        if readers is None:
            return
        readers.discard(session)
        if not readers:
            del self._readers[(session.tenant, key)]
            await self._broker.unsubscribe(session.tenant, key)

    def of_user(self, tenant: str, user_id: str) -> set[Session] | frozenset[Session]:
        return self._by_user.get((tenant, user_id), _NO_SESSIONS)

    # -- fan-out ---------------------------------------------------------------------------

    def on_publication(self, publication: Publication) -> None:
        readers = self._readers.get((publication.tenant, publication.key))
        if readers:
            now = self._clock.now()
            for session in readers:
                session.offer(publication.key, publication.entries, publication.head, now)

    def on_reset(self) -> None:
        """Publications may have been lost: every session reads every log it reads again, from
        where it stands (what it already holds is skipped)."""
        for session in self.sessions.values():
            for state in session.logs.values():
                session.fall_behind(state)

    def open_logs(self) -> Iterator[tuple[str, list[LogKey]]]:
        """(tenant, logs with a reader here), per tenant."""
        by_tenant: dict[str, list[LogKey]] = {}
        for tenant, key in self._readers:
            by_tenant.setdefault(tenant, []).append(key)
        return iter(by_tenant.items())

    def check_heads(self, tenant: str, keys: list[LogKey], heads: list[LogHead]) -> int:
        """Sessions whose log moved past what they hold, with no publication to say so, read
        the log; returns how many were behind."""
        behind = 0
        for key, head in zip(keys, heads, strict=True):
            for session in self._readers.get((tenant, key), ()):
                state = session.logs.get(key)
                if state is not None and not state.behind and head.cursor > state.enqueued:
                    session.fall_behind(state)
                    behind += 1
        return behind

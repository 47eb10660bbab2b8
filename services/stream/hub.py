"""The sessions open on this node, indexed by the logs they read and by user.

The hub is the broker's handler on this node: a publication is offered to every session reading
its log. It also keeps the broker's subscriptions: one per (tenant, log) that has a reader here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from services.clock import Clock
from services.domain import LogKey
from services.stream.broker import Broker, Publication, UserEvent
from services.stream.log import LogHead
from services.stream.session import Session

log = logging.getLogger(__name__)

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
        # (tenant, log) -> its head at the previous check_heads.
        self._seen_heads: dict[tuple[str, LogKey], int] = {}
        # Set whenever no session is open (shutdown waits on it).
        self.drained = asyncio.Event()
        self.drained.set()

    def start(self) -> None:
        self._broker.start(self.on_publication, self.on_reset, self.on_user_event)

    # -- membership ------------------------------------------------------------------------

    async def add(self, session: Session) -> None:
        self.sessions[session.session_id] = session
        self.drained.clear()
        self._by_user.setdefault((session.tenant, session.user_id), set()).add(session)
        for key in session.logs:
            await self.add_reader(session, key)

    async def remove(self, session: Session) -> bool:
        """Forgets the session; False when it was not here. Every index is updated before the
        first await, so a failing or cancelled unsubscribe leaves nothing behind."""
        if self.sessions.pop(session.session_id, None) is None:
            return False
        siblings = self._by_user.get((session.tenant, session.user_id))
        if siblings is not None:
            siblings.discard(session)
            if not siblings:
                del self._by_user[(session.tenant, session.user_id)]
        unread = [key for key in session.logs if self._drop_reader(session, key)]
        if not self.sessions:
            self.drained.set()
        for key in unread:
            await self._unsubscribe(session.tenant, key)
        return True

    def _drop_reader(self, session: Session, key: LogKey) -> bool:
        """Removes the session from the log's readers; True when it was the last one."""
        readers = self._readers.get((session.tenant, key))
        if readers is None:
            return False
        readers.discard(session)
        if readers:
            return False
        del self._readers[(session.tenant, key)]
        self._seen_heads.pop((session.tenant, key), None)
        return True

    async def _unsubscribe(self, tenant: str, key: LogKey) -> None:
        try:
            await self._broker.unsubscribe(tenant, key)
        except Exception:
            # The broker keeps the subscription; publications for it are simply ignored.
            log.warning("could not unsubscribe from a log", exc_info=True)

    async def add_reader(self, session: Session, key: LogKey) -> None:
        """Adds the session to the log's readers (before the first await: a publication that
        comes while the broker subscribes is offered to it; one lost meanwhile is caught up by
        the session's first read of the log)."""
        readers = self._readers.get((session.tenant, key))
        if readers is not None:
            readers.add(session)
            return
        self._readers[(session.tenant, key)] = {session}
        try:
            await self._broker.subscribe(session.tenant, key)
        except Exception:
            # Not subscribed: the head check (timers.py) still delivers, within its interval.
            log.warning("could not subscribe to a log; relying on the head check", exc_info=True)

    async def remove_reader(self, session: Session, key: LogKey) -> None:
        if self._drop_reader(session, key):
            await self._unsubscribe(session.tenant, key)

    def of_user(self, tenant: str, user_id: str) -> set[Session] | frozenset[Session]:
        return self._by_user.get((tenant, user_id), _NO_SESSIONS)

    # -- fan-out ---------------------------------------------------------------------------

    def on_publication(self, publication: Publication) -> None:
        readers = self._readers.get((publication.tenant, publication.key))
        if readers:
            now = self._clock.now()
            for session in readers:
                session.offer(publication.key, publication.entries, publication.head, now)

    def on_user_event(self, event: UserEvent) -> None:
        for session in self._by_user.get((event.tenant, event.user_id), ()):
            session.push_event(event.response)

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
        """Sessions that still lack entries which were already in their log at the previous
        check, with no publication to bring them, read the log; returns how many were behind.

        Comparing with the previous check's heads, not the current ones, leaves a publication
        that is merely on its way (a busy broker) one interval to arrive: under load most
        sessions are a few entries behind the head at any instant, and reading every log for
        them would cost more than the broker saves."""
        behind = 0
        seen = self._seen_heads
        for key, head in zip(keys, heads, strict=True):
            previous = seen.get((tenant, key), 0)
            seen[(tenant, key)] = head.cursor
            for session in self._readers.get((tenant, key), ()):
                state = session.logs.get(key)
                if state is not None and not state.behind and previous > state.enqueued:
                    session.fall_behind(state)
                    behind += 1
        return behind

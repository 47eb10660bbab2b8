"""Broker within one process: publications go straight to the node's handler."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from services.domain import LogKey, user_log
from services.stream.broker import (
    Publication,
    PublicationHandler,
    ResetHandler,
    UserEvent,
    UserEventHandler,
)


class MemoryBroker:
    """Calls the handler inline, in `publish`, for every publication of a log subscribed to:
    one process, one node. It filters as a networked broker does, so that both keep the same
    contract (tests/contract/test_broker.py).

    `drop` (tests only) is a predicate that makes the broker lose the publications it accepts,
    as a Redis subscriber loses what is sent while it reconnects."""

    def __init__(self) -> None:
        self._handler: PublicationHandler | None = None
        self._on_reset: ResetHandler | None = None
        self._on_user_event: UserEventHandler | None = None
        self._subscribed: set[tuple[str, LogKey]] = set()
        self.drop: Callable[[Publication], bool] | None = None

    def start(
        self,
        on_publication: PublicationHandler,
        on_reset: ResetHandler,
        on_user_event: UserEventHandler | None = None,
    ) -> None:
        self._handler = on_publication
        self._on_reset = on_reset
        self._on_user_event = on_user_event

    async def publish_user_events(self, events: Sequence[UserEvent]) -> None:
        handler = self._on_user_event
        if handler is None:
            return
        for event in events:
            if (event.tenant, user_log(event.user_id)) in self._subscribed:
                handler(event)

    async def publish(self, publications: Sequence[Publication]) -> None:
        handler = self._handler
        if handler is None:
            return
        drop = self.drop
        subscribed = self._subscribed
        for publication in publications:
            if (publication.tenant, publication.key) not in subscribed:
                continue
            if drop is not None and drop(publication):
                continue
            handler(publication)

    def reset(self) -> None:
        """Says publications may have been lost (tests call it as a reconnect would)."""
        if self._on_reset is not None:
            self._on_reset()

    async def subscribe(self, tenant: str, key: LogKey) -> None:
        self._subscribed.add((tenant, key))

    async def unsubscribe(self, tenant: str, key: LogKey) -> None:
        self._subscribed.discard((tenant, key))

    async def aclose(self) -> None:
        self._handler = None
        self._on_user_event = None

"""Fan-out between nodes: "log L of tenant T now reaches cursor c", told to every node.

The log stays the truth; the broker only wakes readers up. A publication may carry the new
entries, so that a node can hand them to its sessions without reading the log, or only the new
head, and then the node reads the log. A broker may lose publications (Redis pub/sub drops a
slow subscriber, and a reconnecting subscriber misses what was sent meanwhile): the delivery
core never depends on every one arriving. It catches up two ways (docs/delivery.md, "Fan-out"):

- when the broker says its subscription was interrupted (`on_reset`), every open log is re-read
  from where each session stands;
- every `catchup_interval_s`, the heads of every open log are read in one call per tenant, and a
  session that still lacks entries its log already had at the previous check reads the log.

So a lost publication delays a delivery by at most two catch-up intervals; it never loses one.

A broker also carries `UserEvent`s: a stream message for every open session of one user (an
inbox state change, services/stream/inbox.py), on the user's own log's subscription, since
every session of the user reads that log. Those are not caught up: a lost one is lost (the
client reads the states again when it reconnects, docs/inbox.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from services.domain import LogKey
from services.stream.log import Entry


class Publication(NamedTuple):
    """Log `key` of `tenant` has entries up to `head` (epoch `epoch`); `entries` are the newly
    appended ones, contiguous and ending at `head`, or empty when the reader must read them."""

    tenant: str
    key: LogKey
    epoch: int
    head: int
    entries: Sequence[Entry] = ()


class UserEvent(NamedTuple):
    """`response`, an encoded SubscribeResponse, for every open session of `user_id`."""

    tenant: str
    user_id: str
    response: bytes


PublicationHandler = Callable[[Publication], None]
ResetHandler = Callable[[], None]
UserEventHandler = Callable[[UserEvent], None]


class Broker(Protocol):
    """Publishes log updates to every node that subscribed to the log."""

    def start(
        self,
        on_publication: PublicationHandler,
        on_reset: ResetHandler,
        on_user_event: UserEventHandler | None = None,
    ) -> None:
        """Starts delivering this node's publications to `on_publication` (called on the event
        loop, for each one, in publish order per log). `on_reset` is called when publications
        may have been lost (a reconnect). `on_user_event` gets the user events of users whose
        own log this node subscribed to."""
        ...

    async def publish(self, publications: Sequence[Publication]) -> None:
        """Tells the subscribed nodes, in one round trip; a failure is logged, not raised (the
        catch-up check delivers what it could not announce)."""
        ...

    async def publish_user_events(self, events: Sequence[UserEvent]) -> None:
        """Tells every node subscribed to each user's own log, this one included; a failure is
        logged, not raised (the event is lost, never retried)."""
        ...

    async def subscribe(self, tenant: str, key: LogKey) -> None:
        """This node has a reader of the log now (called once, on the first reader)."""
        ...

    async def unsubscribe(self, tenant: str, key: LogKey) -> None:
        """This node's last reader of the log left."""
        ...

    async def aclose(self) -> None: ...

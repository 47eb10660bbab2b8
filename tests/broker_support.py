"""A broker's node side for tests: handlers that record, and publications with real entries."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from services.domain import LogKey
from services.stream.broker import Publication, UserEvent
from services.stream.log import Entry

# How long a publication may take to arrive before the test fails (they take milliseconds).
WAIT_S = 10.0
# Every byte value, so that no encoding may treat the field as text.
ALL_BYTES = bytes(range(256))


class Recorder:
    """A node's handlers: what reached it, and a way to wait for more."""

    def __init__(self) -> None:
        self.publications: list[Publication] = []
        self.resets = 0
        self.user_events: list[UserEvent] = []
        self._changed = asyncio.Event()

    def on_publication(self, publication: Publication) -> None:
        self.publications.append(publication._replace(entries=tuple(publication.entries)))
        self._changed.set()

    def on_user_event(self, event: UserEvent) -> None:
        self.user_events.append(event)
        self._changed.set()

    def on_reset(self) -> None:
        self.resets += 1
        self._changed.set()

    def of(self, tenant: str, key: LogKey) -> list[Publication]:
        return [p for p in self.publications if (p.tenant, p.key) == (tenant, key)]

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not done():
                self._changed.clear()
                await self._changed.wait()

    async def until_count(self, count: int) -> None:
        await self.until(lambda: len(self.publications) >= count)


def publication(
    tenant: str, key: LogKey, head: int, count: int = 1, size: int = 300, epoch: int = 7
) -> Publication:
    """`count` entries ending at `head`, each with a `size`-byte notification field."""
    entries = tuple(
        Entry(
            cursor,
            f"n-{tenant}-{key.stored}-{cursor}",
            cursor % 3 - 1,
            1_767_225_600.123456 + cursor,
            1_767_225_600.987654 + cursor * 1e-3,
            (ALL_BYTES * (size // 256 + 2))[cursor % 256 :][:size],
            # Odd cursors carry a traceparent (a traced Send), even ones none (tracing off).
            f"00-{cursor:032x}-{cursor:016x}-01" if cursor % 2 else "",
        )
        for cursor in range(head - count + 1, head + 1)
    )
    return Publication(tenant, key, epoch, head, entries)

"""Helpers shared by the ingestion-source tests (JetStream, outbox)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from prometheus_client import REGISTRY

from services.client import HeraldClient


def source_count(source: str, outcome: str) -> float:
    """herald_ingest_source_messages_total{source, outcome} in this process (0 if absent)."""
    value = REGISTRY.get_sample_value(
        "herald_ingest_source_messages_total", {"source": source, "outcome": outcome}
    )
    return value or 0.0


async def until(check: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    """Polls `check` (a state outside this process: a stream, a table) until it holds."""
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - the state is another server's: no event
            await asyncio.sleep(0.05)


async def inbox_titles(user: HeraldClient) -> list[str]:
    """The titles of every notification in the user's inbox (each log entry once), oldest
    first: a notification sent twice would be there twice, under two ids."""
    titles: list[str] = []
    token = ""
    while True:
        page = await user.list_inbox(page_size=100, page_token=token)
        titles.extend(item.notification.content.title for item in page.items)
        token = page.next_page_token
        if not token:
            return titles[::-1]


class Titles:
    """What a reconnecting subscriber (HeraldClient.subscribe) received, by title."""

    def __init__(self) -> None:
        self.titles: list[str] = []
        self.arrived = asyncio.Event()
        self.connected = asyncio.Event()

    async def collect(self, client: HeraldClient) -> None:
        subscription = client.subscribe(on_connect=lambda _started: self.connected.set())
        async for received in subscription:
            self.titles.append(received.notification.content.title)
            self.arrived.set()

    async def until_has(self, titles: list[str], within: float = 30) -> None:
        async with asyncio.timeout(within):
            while not set(titles) <= set(self.titles):
                self.arrived.clear()
                await self.arrived.wait()

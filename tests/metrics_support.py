"""A node's /metrics over HTTP, as Prometheus scrapes it, parsed into samples."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from prometheus_client.parser import text_string_to_metric_families

from services.server import start_metrics_server

# (sample name, sorted label pairs) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Scraper:
    """Reads http://HOST:PORT/metrics: a node's, or the one this process started."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.url = f"http://{host}:{port}/metrics"

    def _fetch(self) -> str:
        with urllib.request.urlopen(self.url, timeout=5) as response:  # noqa: S310 - loopback
            body: bytes = response.read()
        return body.decode()

    async def text(self) -> str:
        return await asyncio.to_thread(self._fetch)

    async def samples(self) -> Samples:
        samples: Samples = {}
        for family in text_string_to_metric_families(await self.text()):
            for sample in family.samples:
                samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
        return samples

    async def value(self, name: str, **labels: str) -> float:
        """One sample's value (0 when it is not exported)."""
        return (await self.samples()).get((name, tuple(sorted(labels.items()))), 0.0)


async def until(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """Scrapes until `check` holds: /metrics can only be polled (as Prometheus does)."""
    interval = 0.02
    for _ in range(int(within / interval)):
        if await check():
            return
        await asyncio.sleep(interval)
    assert await check(), f"not within {within} s"


@contextmanager
def metrics_server() -> Iterator[Scraper]:
    """The process's /metrics on a free loopback port (the registry is the process's own)."""
    server = start_metrics_server(0, "127.0.0.1")
    try:
        yield Scraper(server.server_port)
    finally:
        server.shutdown()
        server.server_close()

"""A PostgreSQL server that stops answering without closing its connections (a host gone, a
network partition): store calls fail within the statement timeout plus a margin, and the circuit
breaker opens, instead of every call waiting for the kernel to give up on the connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import pytest

from services.backends_production import POSTGRES_FAILURES
from services.breaker import BreakerState, CircuitBreaker, guarded
from services.clock import SystemClock
from services.domain import user_log
from services.errors import Unavailable
from services.postgres import COMMAND_TIMEOUT_MARGIN_S, PostgresBackend
from services.stream.log import LogStore
from tests.postgres import scratch_database

pytestmark = pytest.mark.asyncio


class Blackhole:
    """A TCP proxy to the server that, once `swallow()`ed, keeps every connection open and
    forwards nothing more in either direction."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._open = asyncio.Event()
        self._open.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    def swallow(self) -> None:
        self._open.clear()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._open.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, upstream_writer]
        for pipe in (
            self._pipe(reader, upstream_writer),
            self._pipe(upstream_reader, writer),
        ):
            task = asyncio.ensure_future(pipe)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Blackhole]:
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for writer in self._writers:
                writer.close()
            await asyncio.gather(*(w.wait_closed() for w in self._writers), return_exceptions=True)
            await server.wait_closed()


def through(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    user = f"{parts.username}@" if parts.username else ""
    return parts._replace(netloc=f"{user}127.0.0.1:{port}").geturl()


async def test_a_silent_server_fails_calls_in_bounded_time_and_opens_the_circuit() -> None:
    statement_timeout_s = 0.5
    bound = statement_timeout_s + COMMAND_TIMEOUT_MARGIN_S
    async with scratch_database() as dsn:
        target = urlsplit(dsn)
        async with Blackhole(target.hostname or "127.0.0.1", target.port or 5432).running() as hole:
            backend = await PostgresBackend.open(
                through(dsn, hole.port),
                min_size=2,
                max_size=2,
                statement_timeout_s=statement_timeout_s,
                close_timeout_s=0.5,
            )
            breaker = CircuitBreaker(
                "PostgreSQL",
                clock=SystemClock(),
                failures=POSTGRES_FAILURES,
                failure_threshold=2,
                reset_timeout_s=60.0,
            )
            logs: LogStore = guarded(backend.logs, breaker)
            try:
                alice = user_log("alice")
                [head] = await logs.heads("acme", [alice])
                assert head.cursor == 0
                hole.swallow()
                for _ in range(2):
                    started = time.monotonic()
                    with pytest.raises(Unavailable, match="unreachable"):
                        await logs.heads("acme", [alice])
                    # asyncpg waits out the timeout, then a cancel request that the silent
                    # server does not answer either, bounded by the same timeout.
                    assert time.monotonic() - started < 2 * bound + 1.0
                assert breaker.state is BreakerState.OPEN
                # Open: the next call is refused at once, not after another timeout.
                started = time.monotonic()
                with pytest.raises(Unavailable, match="Retry in"):
                    await logs.heads("acme", [alice])
                assert time.monotonic() - started < 0.1
            finally:
                await backend.aclose()

"""The store implementations the contract tests run against, one fixture per Protocol.

Each backend is an opener: an async context manager that yields a fresh, empty store and cleans
up afterwards: PostgreSQL stores get a pool on the test session's database with every table
emptied (tests/postgres.py), Redis stores a key prefix of their own that is deleted afterwards
(tests/redis_support.py; the shared server is never flushed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from services.clock import Clock
from services.ingest.idempotency import IdempotencyStore
from services.ingest.idempotency_memory import MemoryIdempotencyStore
from services.ingest.scheduled import ScheduledStore
from services.ingest.scheduled_memory import MemoryScheduledStore
from services.preferences.store import PreferenceStore
from services.preferences.store_memory import MemoryPreferenceStore
from services.push.pending import PendingPushStore
from services.push.pending_memory import MemoryPendingPushStore
from services.push.targets import PushTargetStore
from services.push.targets_memory import MemoryPushTargetStore
from services.ratelimit.limiter import RateLimiter
from services.ratelimit.limiter_memory import MemoryRateLimiter
from services.ratelimit.limiter_redis import RedisRateLimiter
from services.registry.segments import SegmentStore
from services.registry.segments_memory import MemorySegmentStore
from services.registry.sessions import SessionDirectory
from services.registry.sessions_memory import MemorySessionDirectory
from services.registry.sessions_redis import RedisSessionDirectory
from services.registry.templates import TemplateStore
from services.registry.templates_memory import MemoryTemplateStore
from services.registry.tenant_settings import TenantSettingsStore
from services.registry.tenant_settings_memory import MemoryTenantSettingsStore
from services.stream.acks import AckStore
from services.stream.acks_memory import MemoryAckStore
from services.stream.broker import Broker
from services.stream.broker_memory import MemoryBroker
from services.stream.broker_redis import RedisBroker
from services.stream.inbox_state import InboxStateStore
from services.stream.inbox_state_memory import MemoryInboxStateStore
from services.stream.log import LogStore
from services.stream.log_memory import MemoryLogStore
from services.stream.status import StatusStore
from services.stream.status_memory import MemoryStatusStore
from services.webhooks.parked import ParkedWebhookStore
from services.webhooks.parked_memory import MemoryParkedWebhookStore
from tests.contract import backends_postgres
from tests.redis_support import REDIS_URL, kill_pubsub_connections, scratch_keyspace

T = TypeVar("T")

Opener = Callable[[], AbstractAsyncContextManager[T]]


def in_memory(factory: Callable[[], T]) -> Opener[T]:
    """An opener for a store that needs no connection and no cleanup."""

    @asynccontextmanager
    async def open_store() -> AsyncIterator[T]:
        yield factory()

    return open_store


@asynccontextmanager
async def redis_session_directory() -> AsyncIterator[SessionDirectory]:
    async with scratch_keyspace() as (client, prefix):
        directory = RedisSessionDirectory(client, prefix)
        try:
            yield directory
        finally:
            await directory.aclose()


LOG_STORES: dict[str, Opener[LogStore]] = {
    "memory": in_memory(MemoryLogStore),
    "postgres": backends_postgres.log_store,
}
ACK_STORES: dict[str, Opener[AckStore]] = {
    "memory": in_memory(MemoryAckStore),
    "postgres": backends_postgres.ack_store,
}
STATUS_STORES: dict[str, Opener[StatusStore]] = {
    "memory": in_memory(MemoryStatusStore),
    "postgres": backends_postgres.status_store,
    "postgres-write-behind": backends_postgres.write_behind_status_store,
}
IDEMPOTENCY_STORES: dict[str, Opener[IdempotencyStore]] = {
    "memory": in_memory(MemoryIdempotencyStore),
    "postgres": backends_postgres.idempotency_store,
}
SESSION_DIRECTORIES: dict[str, Opener[SessionDirectory]] = {
    "memory": in_memory(MemorySessionDirectory),
    "redis": redis_session_directory,
}
TEMPLATE_STORES: dict[str, Opener[TemplateStore]] = {
    "memory": in_memory(MemoryTemplateStore),
    "postgres": backends_postgres.template_store,
}
PUSH_TARGET_STORES: dict[str, Opener[PushTargetStore]] = {
    "memory": in_memory(MemoryPushTargetStore),
    "postgres": backends_postgres.push_target_store,
}
PENDING_PUSH_STORES: dict[str, Opener[PendingPushStore]] = {
    "memory": in_memory(MemoryPendingPushStore),
    "postgres": backends_postgres.pending_push_store,
}
INBOX_STATE_STORES: dict[str, Opener[InboxStateStore]] = {
    "memory": in_memory(MemoryInboxStateStore),
    "postgres": backends_postgres.inbox_state_store,
}
PREFERENCE_STORES: dict[str, Opener[PreferenceStore]] = {
    "memory": in_memory(MemoryPreferenceStore),
    "postgres": backends_postgres.preference_store,
}
SEGMENT_STORES: dict[str, Opener[SegmentStore]] = {
    "memory": in_memory(MemorySegmentStore),
    "postgres": backends_postgres.segment_store,
}
PARKED_WEBHOOK_STORES: dict[str, Opener[ParkedWebhookStore]] = {
    "memory": in_memory(MemoryParkedWebhookStore),
    "postgres": backends_postgres.parked_webhook_store,
}
SCHEDULED_STORES: dict[str, Opener[ScheduledStore]] = {
    "memory": in_memory(MemoryScheduledStore),
    "postgres": backends_postgres.scheduled_store,
}
TENANT_SETTINGS_STORES: dict[str, Opener[TenantSettingsStore]] = {
    "memory": in_memory(MemoryTenantSettingsStore),
    "postgres": backends_postgres.tenant_settings_store,
}


def _memory_pair() -> tuple[LogStore, StatusStore]:
    status = MemoryStatusStore()
    return MemoryLogStore(status), status


@dataclass(frozen=True)
class BrokerBackend:
    """Brokers of one backend, as the nodes of one deployment have them."""

    # A new node's broker (not started); the opener closes it afterwards.
    node: Callable[[], Broker]
    # Cuts a broker's subscription as a network failure would (it must reconnect and reset).
    interrupt: Callable[[Broker], Awaitable[None]]
    # Whether a publication reaches the brokers of other nodes (False: one process, one node).
    spans_nodes: bool
    # Publications whose entries are larger than this go head-only (None: never).
    max_entries_bytes: int | None


@asynccontextmanager
async def memory_brokers() -> AsyncIterator[BrokerBackend]:
    made: list[MemoryBroker] = []

    def node() -> Broker:
        made.append(MemoryBroker())
        return made[-1]

    async def interrupt(broker: Broker) -> None:
        assert isinstance(broker, MemoryBroker)
        broker.reset()

    try:
        yield BrokerBackend(node, interrupt, spans_nodes=False, max_entries_bytes=None)
    finally:
        for broker in made:
            await broker.aclose()


@asynccontextmanager
async def redis_brokers() -> AsyncIterator[BrokerBackend]:
    """Each node's broker has a client of its own, named so that its pub/sub connection can be
    found and killed."""
    async with scratch_keyspace() as (admin, prefix):
        made: dict[Broker, str] = {}

        def node() -> Broker:
            name = f"{prefix}node-{len(made)}"
            broker = RedisBroker(
                Redis.from_url(REDIS_URL, client_name=name), prefix, owns_client=True
            )
            made[broker] = name
            return broker

        async def interrupt(broker: Broker) -> None:
            assert await kill_pubsub_connections(admin, made[broker]) == 1

        try:
            yield BrokerBackend(node, interrupt, spans_nodes=True, max_entries_bytes=16384)
        finally:
            for broker in made:
                await broker.aclose()


BROKERS: dict[str, Opener[BrokerBackend]] = {"memory": memory_brokers, "redis": redis_brokers}


@dataclass(frozen=True)
class LimiterBackend:
    """Rate limiters of one backend, as the nodes of one deployment have them."""

    # A new node's limiter on the given clock; the opener closes it afterwards.
    node: Callable[[Clock], RateLimiter]
    # Whether the nodes' limiters share their buckets (False: each node has its own).
    shared: bool


@asynccontextmanager
async def memory_limiters() -> AsyncIterator[LimiterBackend]:
    yield LimiterBackend(MemoryRateLimiter, shared=False)


@asynccontextmanager
async def redis_limiters() -> AsyncIterator[LimiterBackend]:
    """Each node's limiter has a client of its own on the test's key prefix."""
    async with scratch_keyspace() as (_, prefix):
        clients: list[Redis] = []

        def node(clock: Clock) -> RateLimiter:
            clients.append(Redis.from_url(REDIS_URL))
            return RedisRateLimiter(clients[-1], prefix, clock, on_failure="closed")

        try:
            yield LimiterBackend(node, shared=True)
        finally:
            for client in clients:
                await client.aclose()


LIMITERS: dict[str, Opener[LimiterBackend]] = {"memory": memory_limiters, "redis": redis_limiters}


# A log store and the status store it creates records in, of one backend.
PAIRED_STORES: dict[str, Opener[tuple[LogStore, StatusStore]]] = {
    "memory": in_memory(_memory_pair),
    "postgres": backends_postgres.paired_stores,
}


@pytest_asyncio.fixture(params=sorted(LOG_STORES))
async def log_store(request: pytest.FixtureRequest) -> AsyncIterator[LogStore]:
    async with LOG_STORES[request.param]() as store:
        yield store


@pytest_asyncio.fixture(params=sorted(ACK_STORES))
async def ack_store(request: pytest.FixtureRequest) -> AsyncIterator[AckStore]:
    async with ACK_STORES[request.param]() as store:
        yield store


@pytest_asyncio.fixture(params=sorted(STATUS_STORES))
async def status_store(request: pytest.FixtureRequest) -> AsyncIterator[StatusStore]:
    async with STATUS_STORES[request.param]() as store:
        yield store


@pytest_asyncio.fixture(params=sorted(IDEMPOTENCY_STORES))
async def idempotency_store(request: pytest.FixtureRequest) -> AsyncIterator[IdempotencyStore]:
    async with IDEMPOTENCY_STORES[request.param]() as store:
        yield store


@pytest_asyncio.fixture(params=sorted(SESSION_DIRECTORIES))
async def session_directory(request: pytest.FixtureRequest) -> AsyncIterator[SessionDirectory]:
    async with SESSION_DIRECTORIES[request.param]() as store:
        yield store


@pytest_asyncio.fixture(params=sorted(TEMPLATE_STORES))
async def template_store(request: pytest.FixtureRequest) -> AsyncIterator[TemplateStore]:
    async with TEMPLATE_STORES[request.param]() as store:
        yield store


@pytest_asyncio.fixture(params=sorted(PUSH_TARGET_STORES))
async def push_target_store(request: pytest.FixtureRequest) -> AsyncIterator[PushTargetStore]:
    async with PUSH_TARGET_STORES[request.param]() as store:
        yield store


@pytest_asyncio.fixture(params=sorted(PENDING_PUSH_STORES))
async def pending_push_store(request: pytest.FixtureRequest) -> AsyncIterator[PendingPushStore]:
    async with PENDING_PUSH_STORES[request.param]() as store:
        yield store


@pytest_asyncio.fixture(params=sorted(PREFERENCE_STORES))
async def preference_store(request: pytest.FixtureRequest) -> AsyncIterator[PreferenceStore]:
    async with PREFERENCE_STORES[request.param]() as store:
        yield store


@pytest_asyncio.fixture(params=sorted(PARKED_WEBHOOK_STORES))
async def parked_webhook_store(
    request: pytest.FixtureRequest,
) -> AsyncIterator[ParkedWebhookStore]:
    async with PARKED_WEBHOOK_STORES[request.param]() as store:
        yield store


@pytest_asyncio.fixture(params=sorted(SEGMENT_STORES))
async def segment_store(request: pytest.FixtureRequest) -> AsyncIterator[SegmentStore]:
    async with SEGMENT_STORES[request.param]() as store:
        yield store


@pytest_asyncio.fixture(params=sorted(SCHEDULED_STORES))
async def scheduled_store(request: pytest.FixtureRequest) -> AsyncIterator[ScheduledStore]:
    async with SCHEDULED_STORES[request.param]() as store:
        yield store


@pytest_asyncio.fixture(params=sorted(TENANT_SETTINGS_STORES))
async def tenant_settings_store(
    request: pytest.FixtureRequest,
) -> AsyncIterator[TenantSettingsStore]:
    async with TENANT_SETTINGS_STORES[request.param]() as store:
        yield store


@pytest_asyncio.fixture(params=sorted(BROKERS))
async def brokers(request: pytest.FixtureRequest) -> AsyncIterator[BrokerBackend]:
    async with BROKERS[request.param]() as backend:
        yield backend


@pytest_asyncio.fixture(params=sorted(PAIRED_STORES))
async def paired_stores(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[LogStore, StatusStore]]:
    async with PAIRED_STORES[request.param]() as stores:
        yield stores


@pytest_asyncio.fixture(params=sorted(LIMITERS))
async def limiters(request: pytest.FixtureRequest) -> AsyncIterator[LimiterBackend]:
    async with LIMITERS[request.param]() as backend:
        yield backend


@pytest_asyncio.fixture(params=sorted(INBOX_STATE_STORES))
async def inbox_state_store(request: pytest.FixtureRequest) -> AsyncIterator[InboxStateStore]:
    async with INBOX_STATE_STORES[request.param]() as store:
        yield store

"""Openers of the PostgreSQL stores for the contract suites: each opens a pool on the test
session's database with every table emptied (tests/postgres.py), yields a store on it, then
closes the store and the pool."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, TypeVar

import asyncpg

from services.ingest.idempotency import IdempotencyStore
from services.ingest.idempotency_postgres import PostgresIdempotencyStore
from services.ingest.scheduled import ScheduledStore
from services.ingest.scheduled_postgres import PostgresScheduledStore
from services.preferences.store import PreferenceStore
from services.preferences.store_postgres import PostgresPreferenceStore
from services.push.pending import PendingPushStore
from services.push.pending_postgres import PostgresPendingPushStore
from services.push.targets import PushTargetStore
from services.push.targets_postgres import PostgresPushTargetStore
from services.registry.segments import SegmentStore
from services.registry.segments_postgres import PostgresSegmentStore
from services.registry.templates import TemplateStore
from services.registry.templates_postgres import PostgresTemplateStore
from services.registry.tenant_settings import TenantSettingsStore
from services.registry.tenant_settings_postgres import PostgresTenantSettingsStore
from services.stream.acks import AckStore
from services.stream.acks_postgres import PostgresAckStore
from services.stream.inbox_state import InboxStateStore
from services.stream.inbox_state_postgres import PostgresInboxStateStore
from services.stream.log import LogStore
from services.stream.log_postgres import PostgresLogStore
from services.stream.status import StatusStore
from services.stream.status_buffered import WriteBehindStatusStore
from services.stream.status_postgres import PostgresStatusStore
from services.webhooks.parked import ParkedWebhookStore
from services.webhooks.parked_postgres import PostgresParkedWebhookStore
from tests.postgres import clean_pool


class _Closable(Protocol):
    async def aclose(self) -> None: ...


S = TypeVar("S", bound=_Closable)


def _on_clean_pool(
    make: Callable[[asyncpg.Pool[Any]], S],
) -> Callable[[], AbstractAsyncContextManager[S]]:
    """An opener of the store `make` builds on a clean pool."""

    @asynccontextmanager
    async def open_store() -> AsyncIterator[S]:
        async with clean_pool() as pool:
            store = make(pool)
            try:
                yield store
            finally:
                await store.aclose()

    return open_store


status_store: Callable[[], AbstractAsyncContextManager[StatusStore]] = _on_clean_pool(
    PostgresStatusStore
)
# The production status store: PostgreSQL behind a write-behind buffer.
write_behind_status_store: Callable[[], AbstractAsyncContextManager[StatusStore]] = _on_clean_pool(
    lambda pool: WriteBehindStatusStore(PostgresStatusStore(pool))
)
log_store: Callable[[], AbstractAsyncContextManager[LogStore]] = _on_clean_pool(PostgresLogStore)
ack_store: Callable[[], AbstractAsyncContextManager[AckStore]] = _on_clean_pool(PostgresAckStore)
idempotency_store: Callable[[], AbstractAsyncContextManager[IdempotencyStore]] = _on_clean_pool(
    PostgresIdempotencyStore
)
template_store: Callable[[], AbstractAsyncContextManager[TemplateStore]] = _on_clean_pool(
    PostgresTemplateStore
)
segment_store: Callable[[], AbstractAsyncContextManager[SegmentStore]] = _on_clean_pool(
    PostgresSegmentStore
)
scheduled_store: Callable[[], AbstractAsyncContextManager[ScheduledStore]] = _on_clean_pool(
    PostgresScheduledStore
)
tenant_settings_store: Callable[[], AbstractAsyncContextManager[TenantSettingsStore]] = (
    _on_clean_pool(PostgresTenantSettingsStore)
)


@asynccontextmanager
async def paired_stores() -> AsyncIterator[tuple[LogStore, StatusStore]]:
    """A log store and the status store it creates records in, on one pool."""
    async with clean_pool() as pool:
        status = PostgresStatusStore(pool)
        logs = PostgresLogStore(pool, status)
        try:
            yield logs, status
        finally:
            await logs.aclose()
            await status.aclose()


push_target_store: Callable[[], AbstractAsyncContextManager[PushTargetStore]] = _on_clean_pool(
    PostgresPushTargetStore
)
pending_push_store: Callable[[], AbstractAsyncContextManager[PendingPushStore]] = _on_clean_pool(
    PostgresPendingPushStore
)
inbox_state_store: Callable[[], AbstractAsyncContextManager[InboxStateStore]] = _on_clean_pool(
    PostgresInboxStateStore
)
preference_store: Callable[[], AbstractAsyncContextManager[PreferenceStore]] = _on_clean_pool(
    PostgresPreferenceStore
)
parked_webhook_store: Callable[[], AbstractAsyncContextManager[ParkedWebhookStore]] = (
    _on_clean_pool(PostgresParkedWebhookStore)
)

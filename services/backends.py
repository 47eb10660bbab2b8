"""The stores a node runs on, chosen by configuration (`BackendSettings.profile`):

- memory, the embedded default: every store in this process, lost when it stops;
- production: PostgreSQL for what must last (logs, acks, status, idempotency keys, templates,
  tenant settings)
  and Redis for what is shared and short-lived (the session directory, the broker), both shared
  by every node. Each backend sits behind a circuit breaker and is probed, so a node's health
  turns NOT_SERVING while a backend it needs is unreachable, and back by itself.

Every store of a bundle is closed with `aclose` when the node stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.breaker import BreakerState, CircuitBreaker
from services.clock import Clock
from services.config import Config
from services.errors import Unavailable
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
from services.registry.segments import SegmentStore
from services.registry.segments_memory import MemorySegmentStore
from services.registry.sessions import SessionDirectory
from services.registry.sessions_memory import MemorySessionDirectory
from services.registry.templates import TemplateStore
from services.registry.templates_memory import MemoryTemplateStore
from services.registry.tenant_settings import TenantSettingsStore
from services.registry.tenant_settings_memory import MemoryTenantSettingsStore
from services.stream.acks import AckStore
from services.stream.acks_memory import MemoryAckStore
from services.stream.broker import Broker
from services.stream.broker_memory import MemoryBroker
from services.stream.inbox_state import InboxStateStore
from services.stream.inbox_state_memory import MemoryInboxStateStore
from services.stream.log import LogStore
from services.stream.log_memory import MemoryLogStore
from services.stream.status import StatusStore
from services.stream.status_memory import MemoryStatusStore
from services.webhooks.parked import ParkedWebhookStore
from services.webhooks.parked_memory import MemoryParkedWebhookStore

log = logging.getLogger(__name__)


@dataclass
class Backend:
    """A server the stores depend on: its breaker, and a cheap call that checks it is there."""

    name: str
    breaker: CircuitBreaker
    probe: Callable[[], Awaitable[object]]
    # The services that cannot serve while it is down ("ingest", "stream", "registry").
    needed_by: tuple[str, ...]
    aclose: Callable[[], Awaitable[None]] | None = None


@dataclass(frozen=True)
class Stores:
    logs: LogStore
    acks: AckStore
    status: StatusStore
    broker: Broker
    idempotency: IdempotencyStore
    sessions: SessionDirectory
    templates: TemplateStore
    tenant_settings: TenantSettingsStore
    # Shared by every node (production); memory stores are this process's alone.
    shared: bool = False
    # The rate limiter on the shared store (production: Redis); None: each node's own buckets.
    rate_limiter: RateLimiter | None = None
    segments: SegmentStore = field(default_factory=MemorySegmentStore)
    backends: tuple[Backend, ...] = field(default=())
    # The offline fallback (docs/push.md).
    push_targets: PushTargetStore = field(default_factory=MemoryPushTargetStore)
    push_pending: PendingPushStore = field(default_factory=MemoryPendingPushStore)
    # Scheduled sends held until their deliver_at (docs/scheduling.md).
    scheduled: ScheduledStore = field(default_factory=MemoryScheduledStore)
    # Seen / read / archived per user and notification (docs/inbox.md).
    inbox_states: InboxStateStore = field(default_factory=MemoryInboxStateStore)
    # Users' notification preferences (docs/preferences.md).
    preferences: PreferenceStore = field(default_factory=MemoryPreferenceStore)
    # Webhook batches not delivered (docs/webhooks.md).
    webhooks_parked: ParkedWebhookStore = field(default_factory=MemoryParkedWebhookStore)

    async def monitor(self, interval_s: float) -> None:
        """Probes every backend through its breaker, forever: a backend that went away opens
        its breaker (health NOT_SERVING) even with no traffic, and one that came back closes
        it."""
        while True:
            for backend in self.backends:
                try:
                    await backend.breaker.call(backend.probe)
                except Unavailable:
                    pass  # the breaker counted it; health follows
                except Exception:
                    log.warning(
                        "backend probe failed", extra={"backend": backend.name}, exc_info=True
                    )
            await asyncio.sleep(interval_s)

    async def aclose(self) -> None:
        for store in (
            self.broker,
            self.logs,
            self.status,
            self.acks,
            self.idempotency,
            self.sessions,
            self.templates,
            self.tenant_settings,
            self.push_targets,
            self.push_pending,
            self.segments,
            self.scheduled,
            self.inbox_states,
            self.preferences,
            self.webhooks_parked,
        ):
            await store.aclose()
        for backend in self.backends:
            if backend.aclose is not None:
                await backend.aclose()


HealthChange = Callable[[Backend, BreakerState], None]


def memory_stores(config: Config) -> Stores:
    """Stores in this process's memory: everything is lost when it stops."""
    status = MemoryStatusStore(config.delivery.status_max_records)
    return Stores(
        logs=MemoryLogStore(status),
        acks=MemoryAckStore(),
        status=status,
        broker=MemoryBroker(),
        idempotency=MemoryIdempotencyStore(),
        sessions=MemorySessionDirectory(config.registry.presence_retention_s),
        templates=MemoryTemplateStore(),
        tenant_settings=MemoryTenantSettingsStore(),
    )


async def open_stores(config: Config, clock: Clock, on_change: HealthChange) -> Stores:
    """The stores of the configured profile (connected, migrated), with `on_change` told when a
    backend's breaker changes state.

    Raises:
        ValueError: only one of HERALD_POSTGRES_DSN and HERALD_REDIS_URL is set.
    """
    if config.backends.profile == "memory":
        return memory_stores(config)
    from services.backends_production import production_stores

    return await production_stores(config, clock, on_change)

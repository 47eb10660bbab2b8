"""The stores a node runs on, chosen by configuration: memory (the embedded default) for now.

Every store of a bundle is closed with `aclose` when the node stops.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.config import Config
from services.ingest.idempotency import IdempotencyStore
from services.ingest.idempotency_memory import MemoryIdempotencyStore
from services.registry.sessions import SessionDirectory
from services.registry.sessions_memory import MemorySessionDirectory
from services.registry.templates import TemplateStore
from services.registry.templates_memory import MemoryTemplateStore
from services.stream.acks import AckStore
from services.stream.acks_memory import MemoryAckStore
from services.stream.broker import Broker
from services.stream.broker_memory import MemoryBroker
from services.stream.log import LogStore
from services.stream.log_memory import MemoryLogStore
from services.stream.status import StatusStore
from services.stream.status_memory import MemoryStatusStore


@dataclass(frozen=True)
class Stores:
    logs: LogStore
    acks: AckStore
    status: StatusStore
    broker: Broker
    idempotency: IdempotencyStore
    sessions: SessionDirectory
    templates: TemplateStore

    async def aclose(self) -> None:
        for store in (
            self.broker,
            self.logs,
            self.status,
            self.acks,
            self.idempotency,
            self.sessions,
            self.templates,
        ):
            await store.aclose()


def memory_stores(config: Config) -> Stores:
    """Stores in this process's memory: everything is lost when it stops."""
    status = MemoryStatusStore(config.delivery.status_max_records)
    return Stores(
        logs=MemoryLogStore(status),
        acks=MemoryAckStore(),
        status=status,
        broker=MemoryBroker(),
        idempotency=MemoryIdempotencyStore(),
        sessions=MemorySessionDirectory(),
        templates=MemoryTemplateStore(),
    )

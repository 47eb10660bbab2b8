"""Parked webhook batches: the `ParkedWebhookStore` Protocol.

A batch is parked when it could not be delivered (every retry failed, or the receiver refused
it), with the reason, and stays until an operator replays or deletes it. A replay marks the
batch due (`replay_at`); a sender claims due batches for a lease, so that several nodes on one
shared store never send one batch twice at once, and a node that dies holding one leaves it to
another after the lease. A batch delivered on replay is deleted; one that fails again is parked
again (its replay mark cleared).
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 1000
# Batch ids one replay or delete call may name.
MAX_IDS: Final = 1000


@dataclass(frozen=True, slots=True)
class ParkedBatch:
    tenant: str
    # Sortable by creation time (services/webhooks/batches.py): listing is oldest first.
    batch_id: str
    # The JSON body as first built; signed again, with a fresh timestamp, on every attempt.
    body: bytes
    event_count: int
    attempts: int
    reason: str
    created_at: float
    parked_at: float
    # Set while a replay is asked for: when a sender may take the batch (claims move it on by
    # the lease). None: parked, waiting for an operator.
    replay_at: float | None = None


class ParkedWebhookStore(Protocol):
    async def park(self, batches: Sequence[ParkedBatch]) -> None:
        """Stores the batches, each replacing one of the same tenant and id (a replay that
        failed again), with their replay marks as given (normally none)."""
        ...

    async def list(
        self, tenant: str, after: str = "", limit: int = DEFAULT_PAGE
    ) -> builtins.list[ParkedBatch]:
        """Up to `limit` of the tenant's batches whose id sorts after `after`, by id."""
        ...

    async def replay(self, tenant: str, batch_ids: Sequence[str] | None, now: float) -> int:
        """Marks the named batches (None: every one of the tenant's) due at `now`; returns how
        many exist."""
        ...

    async def claim(self, now: float, limit: int, lease_s: float) -> builtins.list[ParkedBatch]:
        """Up to `limit` batches due for replay (`replay_at <= now`), oldest mark first, each
        held for `lease_s` (its mark moved to `now + lease_s`)."""
        ...

    async def delete(self, tenant: str, batch_ids: Sequence[str] | None) -> int:
        """Forgets the named batches (None: every one of the tenant's); returns how many."""
        ...

    async def aclose(self) -> None:
        """Releases connections; the store is not used afterwards."""
        ...

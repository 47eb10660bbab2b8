"""The operator's side of parked webhook batches: list, replay, delete (RegistryService).

The servicer (services/registry/servicer.py) resolves the tenant and audits; this module checks
the request and answers it from the ParkedWebhookStore.
"""

from __future__ import annotations

from collections.abc import Sequence

from herald.v1 import registry_pb2
from services.bounds import MAX_ID_LEN, check_length
from services.clock import Clock
from services.errors import InvalidArgument
from services.model import timestamp
from services.webhooks.parked import (
    DEFAULT_PAGE,
    MAX_IDS,
    MAX_PAGE,
    ParkedBatch,
    ParkedWebhookStore,
)


def to_proto(batch: ParkedBatch) -> registry_pb2.ParkedWebhook:
    return registry_pb2.ParkedWebhook(
        batch_id=batch.batch_id,
        event_count=batch.event_count,
        reason=batch.reason,
        attempts=batch.attempts,
        created_at=timestamp(batch.created_at),
        parked_at=timestamp(batch.parked_at),
        replay_pending=batch.replay_at is not None,
    )


def selection(batch_ids: Sequence[str], all_batches: bool) -> list[str] | None:
    """The batch ids a replay or delete names (None: all of the tenant's).

    Raises:
        InvalidArgument: neither or both of batch_ids and all, or too many ids.
    """
    if all_batches:
        if batch_ids:
            raise InvalidArgument("give batch_ids or all, not both")
        return None
    if not batch_ids:
        raise InvalidArgument(
            "batch_ids must name at least one batch (see ListParkedWebhooks), or set all"
        )
    if len(batch_ids) > MAX_IDS:
        raise InvalidArgument(
            f"batch_ids lists {len(batch_ids)} batches; the limit is {MAX_IDS} per call"
        )
    for batch_id in batch_ids:
        check_length(batch_id, MAX_ID_LEN, "every batch id in batch_ids")
    return list(batch_ids)


class ParkedWebhooks:
    def __init__(self, store: ParkedWebhookStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def list(
        self, tenant: str, request: registry_pb2.ListParkedWebhooksRequest
    ) -> registry_pb2.ListParkedWebhooksResponse:
        if request.page_size > MAX_PAGE:
            raise InvalidArgument(f"page_size must be at most {MAX_PAGE}")
        size = request.page_size or DEFAULT_PAGE
        # The page token is the last batch id of the previous page.
        check_length(request.page_token, MAX_ID_LEN, "page_token")
        page = await self._store.list(tenant, request.page_token, size)
        return registry_pb2.ListParkedWebhooksResponse(
            batches=[to_proto(b) for b in page],
            next_page_token=page[-1].batch_id if len(page) == size else "",
        )

    async def replay(self, tenant: str, request: registry_pb2.ReplayWebhooksRequest) -> int:
        named = selection(request.batch_ids, request.all)
        return await self._store.replay(tenant, named, self._clock.now())

    async def delete(self, tenant: str, request: registry_pb2.DeleteParkedWebhooksRequest) -> int:
        return await self._store.delete(tenant, selection(request.batch_ids, request.all))

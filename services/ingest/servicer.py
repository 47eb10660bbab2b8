"""IngestService over gRPC: decode, call IngestCore, encode."""

from __future__ import annotations

from typing import Any

from grpc import aio

from herald.v1 import ingest_pb2
from services.auth import current_principal
from services.errors import HeraldError, InvalidArgument
from services.ingest.core import IngestCore, SendOutcome
from services.model import status_to_proto

Context = aio.ServicerContext[Any, Any]


def _response(outcome: SendOutcome) -> ingest_pb2.SendResponse:
    return ingest_pb2.SendResponse(
        notification_id=outcome.notification_id,
        duplicate=outcome.duplicate,
        recipient_count=outcome.recipient_count,
    )


class IngestServicer:
    def __init__(self, core: IngestCore) -> None:
        self._core = core

    async def Send(
        self, request: ingest_pb2.SendRequest, context: Context
    ) -> ingest_pb2.SendResponse:
        if not request.HasField("notification"):
            raise InvalidArgument("SendRequest.notification is required")
        principal = current_principal()
        return _response(await self._core.send(principal.tenant, request.notification))

    async def SendBatch(
        self, request: ingest_pb2.SendBatchRequest, context: Context
    ) -> ingest_pb2.SendBatchResponse:
        principal = current_principal()
        outcomes = await self._core.send_batch(principal.tenant, list(request.notifications))
        results = []
        for outcome in outcomes:
            if isinstance(outcome, HeraldError):
                results.append(
                    ingest_pb2.SendResult(
                        error=ingest_pb2.SendError(
                            code=outcome.code.value[0], message=outcome.message
                        )
                    )
                )
            else:
                results.append(ingest_pb2.SendResult(accepted=_response(outcome)))
        return ingest_pb2.SendBatchResponse(results=results)

    async def GetStatus(
        self, request: ingest_pb2.GetStatusRequest, context: Context
    ) -> ingest_pb2.GetStatusResponse:
        principal = current_principal()
        return status_to_proto(await self._core.status(principal.tenant, request.notification_id))

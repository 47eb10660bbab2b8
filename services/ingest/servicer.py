"""IngestService over gRPC: decode, call IngestCore, encode.

`SendBatch` answers with pre-encoded bytes (see services/wire.py): it is registered with an
identity response serializer (`register`), while clients keep using the generated stubs.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc import aio

from herald.v1 import ingest_pb2, notification_pb2
from services import wire
from services.audit import admin_action, bounded
from services.auth import current_principal
from services.domain import NotificationRecord
from services.errors import HeraldError, InvalidArgument
from services.ingest.core import IngestCore, SendOutcome
from services.ingest.scheduled import HoldState, ScheduledSend
from services.model import set_timestamp, status_to_proto
from services.ratelimit.admission import Admission

Context = aio.ServicerContext[Any, Any]

SERVICE = "herald.v1.IngestService"


def _response(outcome: SendOutcome) -> ingest_pb2.SendResponse:
    return ingest_pb2.SendResponse(
        notification_id=outcome.notification_id,
        duplicate=outcome.duplicate,
        recipient_count=outcome.recipient_count,
        scheduled=outcome.scheduled,
    )


def held_status_to_proto(send: ScheduledSend) -> ingest_pb2.GetStatusResponse:
    """The status of a send still held, or cancelled before its deliver_at: each user of a
    user or users target SCHEDULED (or CANCELLED); channel and broadcast recipients are known
    only once delivered."""
    notification = notification_pb2.Notification.FromString(send.encoded)
    cancelled = send.state is HoldState.CANCELLED
    if cancelled:
        schedule_state, state = (
            ingest_pb2.SCHEDULE_STATE_CANCELLED,
            ingest_pb2.DELIVERY_STATE_CANCELLED,
        )
    else:
        schedule_state, state = (
            ingest_pb2.SCHEDULE_STATE_SCHEDULED,
            ingest_pb2.DELIVERY_STATE_SCHEDULED,
        )
    response = ingest_pb2.GetStatusResponse(
        notification_id=send.notification_id,
        target=notification.target,
        created_at=notification.created_at,
        expires_at=notification.expires_at,
        deliver_at=notification.deliver_at,
        schedule_state=schedule_state,
    )
    target = notification.target
    kind = target.WhichOneof("kind")
    users: list[str] = []
    if kind == "user_id":
        users = [target.user_id]
    elif kind == "users":
        users = list(target.users.user_ids)
    for user_id in sorted(set(users)):
        recipient = response.recipients.add(user_id=user_id, state=state)
        if cancelled:
            set_timestamp(recipient.updated_at, send.cancelled_at)
    return response


def status_response(status: NotificationRecord | ScheduledSend) -> ingest_pb2.GetStatusResponse:
    if isinstance(status, ScheduledSend):
        return held_status_to_proto(status)
    return status_to_proto(status)


def encode_results(outcomes: list[SendOutcome | HeraldError]) -> bytes:
    """The encoded `SendBatchResponse` for the outcomes of a batch, in request order."""
    results: list[bytes] = []
    for outcome in outcomes:
        if isinstance(outcome, HeraldError):
            error = ingest_pb2.SendError(code=outcome.code.value[0], message=outcome.message)
            results.append(ingest_pb2.SendResult(error=error).SerializeToString())
        else:
            results.append(wire.accepted_result(*outcome))
    return wire.repeated_field_1(results)


class IngestServicer:
    def __init__(self, core: IngestCore, admission: Admission) -> None:
        self._core = core
        self._admission = admission

    async def Send(
        self, request: ingest_pb2.SendRequest, context: Context
    ) -> ingest_pb2.SendResponse:
        if not request.HasField("notification"):
            raise InvalidArgument("SendRequest.notification is required")
        principal = current_principal()
        await self._admission.admit_send(principal, 1)
        return _response(await self._core.send(principal.tenant, request.notification))

    async def SendBatch(self, request: ingest_pb2.SendBatchRequest, context: Context) -> bytes:
        """Answers with an encoded `SendBatchResponse`."""
        principal = current_principal()
        # Refused whole when over the limit: one token per notification, before any is checked.
        self._core.check_batch_size(len(request.notifications))
        await self._admission.admit_send(principal, len(request.notifications))
        outcomes = await self._core.send_batch(principal.tenant, list(request.notifications))
        return encode_results(outcomes)

    async def GetStatus(
        self, request: ingest_pb2.GetStatusRequest, context: Context
    ) -> ingest_pb2.GetStatusResponse:
        principal = current_principal()
        return status_response(await self._core.status(principal.tenant, request.notification_id))

    async def CancelScheduled(
        self, request: ingest_pb2.CancelScheduledRequest, context: Context
    ) -> ingest_pb2.CancelScheduledResponse:
        principal = current_principal()
        target = f"notification:{bounded(request.notification_id)}"
        async with admin_action("scheduled.cancel", context, target=target) as details:
            cancelled = await self._core.scheduling.cancel(
                principal.tenant, request.notification_id
            )
            details["cancelled"] = cancelled
        return ingest_pb2.CancelScheduledResponse(cancelled=cancelled)

    async def ListScheduled(
        self, request: ingest_pb2.ListScheduledRequest, context: Context
    ) -> ingest_pb2.ListScheduledResponse:
        principal = current_principal()
        sends, token = await self._core.scheduling.page(
            principal.tenant, request.page_size, request.page_token
        )
        return ingest_pb2.ListScheduledResponse(
            notifications=[notification_pb2.Notification.FromString(s.encoded) for s in sends],
            next_page_token=token,
        )

    def register(self, server: aio.Server) -> None:
        handlers = {
            "Send": grpc.unary_unary_rpc_method_handler(
                self.Send,
                request_deserializer=ingest_pb2.SendRequest.FromString,
                response_serializer=ingest_pb2.SendResponse.SerializeToString,
            ),
            "SendBatch": grpc.unary_unary_rpc_method_handler(
                self.SendBatch,
                request_deserializer=ingest_pb2.SendBatchRequest.FromString,
                response_serializer=None,  # SendBatch returns encoded SendBatchResponse bytes
            ),
            "GetStatus": grpc.unary_unary_rpc_method_handler(
                self.GetStatus,
                request_deserializer=ingest_pb2.GetStatusRequest.FromString,
                response_serializer=ingest_pb2.GetStatusResponse.SerializeToString,
            ),
            "CancelScheduled": grpc.unary_unary_rpc_method_handler(
                self.CancelScheduled,
                request_deserializer=ingest_pb2.CancelScheduledRequest.FromString,
                response_serializer=ingest_pb2.CancelScheduledResponse.SerializeToString,
            ),
            "ListScheduled": grpc.unary_unary_rpc_method_handler(
                self.ListScheduled,
                request_deserializer=ingest_pb2.ListScheduledRequest.FromString,
                response_serializer=ingest_pb2.ListScheduledResponse.SerializeToString,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))

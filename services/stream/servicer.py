"""StreamService and the node-to-node NodeService over gRPC.

Subscribe writes pre-serialized bytes: it is registered with an identity response serializer
(`register`), while clients keep using the generated stubs.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc import aio

from herald.node.v1 import node_pb2
from herald.v1 import stream_pb2
from services.auth import current_principal
from services.errors import InvalidArgument, PermissionDenied
from services.model import accepted_from_proto, status_to_proto
from services.stream.delivery import DeliveryCore

Context = aio.ServicerContext[Any, Any]


class StreamServicer:
    def __init__(self, core: DeliveryCore) -> None:
        self._core = core

    async def Subscribe(self, request: stream_pb2.SubscribeRequest, context: Context) -> None:
        principal = current_principal()
        for channel in request.channels:
            if not principal.may_join(channel):
                raise PermissionDenied(
                    f"the token's 'channels' claim does not allow joining channel {channel!r}"
                )
        cursors: dict[str, int] = {}
        for cursor in request.cursors:
            if not cursor.log:
                raise InvalidArgument("every cursor needs a log name ('user', 'broadcast', ...)")
            cursors[cursor.log] = cursor.cursor
        session = await self._core.open(
            tenant=principal.tenant,
            user_id=principal.subject,
            device=request.device[:64],
            channels=list(request.channels),
            cursors=cursors,
        )
        try:
            await self._core.run(session, context.write)
        finally:
            await self._core.close(session)

    async def Ack(self, request: stream_pb2.AckRequest, context: Context) -> stream_pb2.AckResponse:
        principal = current_principal()
        if not request.notification_ids and not request.up_to:
            raise InvalidArgument("name notification_ids or up_to cursors to acknowledge")
        up_to: dict[str, int] = {}
        for cursor in request.up_to:
            if not cursor.log:
                raise InvalidArgument("every up_to cursor needs a log name")
            up_to[cursor.log] = max(cursor.cursor, up_to.get(cursor.log, 0))
        acked = await self._core.ack(
            principal.tenant, principal.subject, list(request.notification_ids), up_to
        )
        return stream_pb2.AckResponse(acked=acked)

    def register(self, server: aio.Server) -> None:
        handlers = {
            "Subscribe": grpc.unary_stream_rpc_method_handler(
                self.Subscribe,
                request_deserializer=stream_pb2.SubscribeRequest.FromString,
                response_serializer=None,  # the core writes encoded SubscribeResponse bytes
            ),
            "Ack": grpc.unary_unary_rpc_method_handler(
                self.Ack,
                request_deserializer=stream_pb2.AckRequest.FromString,
                response_serializer=stream_pb2.AckResponse.SerializeToString,
            ),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("herald.v1.StreamService", handlers),)
        )


class NodeServicer:
    def __init__(self, core: DeliveryCore) -> None:
        self._core = core

    async def Dispatch(
        self, request: node_pb2.DispatchRequest, context: Context
    ) -> node_pb2.DispatchResponse:
        accepted = [accepted_from_proto(n, n.SerializeToString()) for n in request.notifications]
        counts = await self._core.dispatch(accepted)
        return node_pb2.DispatchResponse(recipient_counts=counts)

    async def GetDeliveryStatus(
        self, request: node_pb2.GetDeliveryStatusRequest, context: Context
    ) -> node_pb2.GetDeliveryStatusResponse:
        record = await self._core.status(request.tenant_id, request.notification_id)
        if record is None:
            return node_pb2.GetDeliveryStatusResponse(found=False)
        return node_pb2.GetDeliveryStatusResponse(found=True, status=status_to_proto(record))

    async def CloseSessions(
        self, request: node_pb2.CloseSessionsRequest, context: Context
    ) -> node_pb2.CloseSessionsResponse:
        closed = await self._core.close_sessions(
            request.tenant_id, list(request.session_ids), request.user_id, request.reason
        )
        return node_pb2.CloseSessionsResponse(closed=closed)

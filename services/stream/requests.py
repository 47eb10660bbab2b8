"""Subscribe and ack requests, checked and handed to the delivery core, whatever the transport.

The gRPC servicer (servicer.py) and the WebSocket endpoint (websocket.py) both decode a
`SubscribeRequest` or an `AckRequest`, call these with the caller's verified `Principal`, and map
a `HeraldError` to their own way of ending the call (a gRPC status, a WebSocket close code).
"""

from __future__ import annotations

from herald.v1 import stream_pb2
from services.auth import Principal
from services.bounds import (
    MAX_CHANNEL_LEN,
    MAX_DEVICE_LEN,
    MAX_ENCODING_LEN,
    MAX_ID_LEN,
    MAX_LOG_NAME_LEN,
    check_count,
    check_each,
    check_length,
    quote,
)
from services.errors import InvalidArgument, PermissionDenied
from services.ratelimit.admission import Admission
from services.stream.delivery import DeliveryCore
from services.stream.session import Session


class StreamRequests:
    """Opens sessions and takes acks for one stream node."""

    def __init__(self, core: DeliveryCore, admission: Admission) -> None:
        self.core = core
        self._admission = admission

    async def open(self, principal: Principal, request: stream_pb2.SubscribeRequest) -> Session:
        """Checks a subscribe request, admits it (rate limits) and opens its session.

        Raises:
            InvalidArgument, PermissionDenied, ResourceExhausted, Unavailable: as Subscribe.
        """
        check_count(request.channels, "channels")
        check_count(request.cursors, "cursors")
        check_each(request.channels, MAX_CHANNEL_LEN, "channels")
        for channel in request.channels:
            if not principal.may_join(channel):
                raise PermissionDenied(
                    f"the token's 'channels' claim does not allow joining channel {quote(channel)}"
                )
        check_length(request.device, MAX_DEVICE_LEN, "device")
        check_each(request.accept_encodings, MAX_ENCODING_LEN, "accept_encodings")
        cursors: dict[str, int] = {}
        epochs: dict[str, int] = {}
        for cursor in request.cursors:
            if not cursor.log:
                raise InvalidArgument("every cursor needs a log name ('user', 'broadcast', ...)")
            check_length(cursor.log, MAX_LOG_NAME_LEN, "a cursor's log name")
            cursors[cursor.log] = cursor.cursor
            if cursor.epoch:
                epochs[cursor.log] = cursor.epoch
        # After the request is checked (a malformed one costs nothing), before the session opens.
        await self._admission.admit_subscribe(principal)
        return await self.core.open(
            tenant=principal.tenant,
            user_id=principal.subject,
            device=request.device[:64],
            channels=list(request.channels),
            cursors=cursors,
            epochs=epochs,
            expires_at=principal.expires_at,
        )

    async def ack(
        self, principal: Principal, request: stream_pb2.AckRequest | stream_pb2.AckStreamRequest
    ) -> int:
        """Acks what the request names; returns how many entries changed to ACKED.

        Raises:
            InvalidArgument: nothing named, or out-of-bounds ids or cursors.
        """
        if not request.notification_ids and not request.up_to:
            raise InvalidArgument("name notification_ids or up_to cursors to acknowledge")
        check_count(request.notification_ids, "notification_ids")
        check_each(request.notification_ids, MAX_ID_LEN, "notification_ids")
        up_to: dict[str, int] = {}
        epochs: dict[str, int] = {}
        check_count(request.up_to, "up_to")
        for cursor in request.up_to:
            if not cursor.log:
                raise InvalidArgument("every up_to cursor needs a log name")
            check_length(cursor.log, MAX_LOG_NAME_LEN, "an up_to cursor's log name")
            up_to[cursor.log] = max(cursor.cursor, up_to.get(cursor.log, 0))
            if cursor.epoch:
                epochs[cursor.log] = cursor.epoch
        return await self.core.ack(
            principal.tenant, principal.subject, list(request.notification_ids), up_to, epochs
        )

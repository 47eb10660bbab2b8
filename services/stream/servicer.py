"""StreamService and the node-to-node NodeService over gRPC.

Subscribe writes pre-serialized bytes: it is registered with an identity response serializer
(`register`), while clients keep using the generated stubs. Each session's open (or refusal) and
close is an audit record (services/audit.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
from grpc import aio

from herald.node.v1 import node_pb2
from herald.v1 import stream_pb2
from herald.v1.ingest_pb2 import DeliveryState
from services import audit, metrics, wire
from services.auth import current_principal
from services.bounds import (
    MAX_CHANNEL_LEN,
    MAX_ENCODING_LEN,
    MAX_ID_LEN,
    MAX_PAGE_TOKEN_LEN,
    MAX_REASON_LEN,
    check_count,
    check_each,
    check_length,
)
from services.chain.keys_http import signing_keys_response
from services.chain.signing import KeyRing
from services.errors import InvalidArgument, Unauthenticated, Unavailable
from services.model import accepted_from_proto, status_to_proto, timestamp
from services.ratelimit.admission import Admission
from services.stream.ack_streams import SHUTTING_DOWN
from services.stream.delivery import DeliveryCore
from services.stream.dispatch import Dispatcher
from services.stream.inbox import Filter, counts_message
from services.stream.inbox_state import Action
from services.stream.requests import StreamRequests

Context = aio.ServicerContext[Any, Any]

_UINT64_END = 1 << 64
_CLOSING_REASON = stream_pb2.Closing.Reason
_FILTERS = {int(f): f for f in Filter}
_ACTIONS = {int(a): a for a in Action}


def _inbox_ids(ids: Any) -> list[str]:
    if not ids:
        raise InvalidArgument("name the notification_ids to change")
    check_count(ids, "notification_ids")
    check_each(ids, MAX_ID_LEN, "notification_ids")
    return list(ids)


def _page_cursor(token: str) -> int:
    """The cursor a ListInbox page token stands for: its ASCII digits (0 for the first page)."""
    if not token:
        return 0
    if len(token) > MAX_PAGE_TOKEN_LEN or not (token.isascii() and token.isdigit()):
        raise InvalidArgument("page_token is not one this server gave out")
    cursor = int(token)
    if cursor >= _UINT64_END:
        raise InvalidArgument("page_token is not one this server gave out")
    return cursor


class StreamServicer:
    def __init__(
        self, core: DeliveryCore, admission: Admission, keys: KeyRing | None = None
    ) -> None:
        self._core = core
        self._requests = StreamRequests(core, admission)
        self._keys = keys or KeyRing.empty()

    async def Subscribe(self, request: stream_pb2.SubscribeRequest, context: Context) -> None:
        principal = current_principal()
        try:
            session = await self._requests.open(principal, request)
        except BaseException as exc:
            audit.record(
                "session.open",
                principal=principal,
                target=f"user:{principal.subject}",
                outcome=audit.outcome_of(exc),
                context=context,
            )
            raise
        audit.record(
            "session.open",
            principal=principal,
            target=f"session:{session.session_id}",
            outcome=audit.OK,
            context=context,
            node_id=self._core.node_id,
            device=audit.bounded(session.device),
            channels=len(session.channels),
        )
        opened = time.monotonic()
        ended = audit.OK
        try:
            await self._core.run(session, context.write)
        except BaseException as exc:
            ended = audit.outcome_of(exc)
            raise
        finally:
            try:
                await self._core.close(session)
            finally:
                # OK: the server ended the stream (`closing` says why); CANCELLED: the client
                # went away; ABORTED: it stopped reading.
                closing = session.closing
                audit.record(
                    "session.close",
                    principal=principal,
                    target=f"session:{session.session_id}",
                    outcome=ended,
                    context=context,
                    node_id=self._core.node_id,
                    closing=_CLOSING_REASON.Name(closing[0]) if closing else "",
                    duration_s=round(time.monotonic() - opened, 3),
                )

    async def Ack(self, request: stream_pb2.AckRequest, context: Context) -> stream_pb2.AckResponse:
        return stream_pb2.AckResponse(acked=await self._requests.ack(current_principal(), request))

    async def AckStream(
        self, requests: AsyncIterator[stream_pb2.AckStreamRequest], context: Context
    ) -> None:
        principal = current_principal()
        stream = self._core.ack_streams.open()
        open_streams = metrics.STREAMS.labels("ack", self._core.tenant_label(principal.tenant))
        metrics.ACK_STREAMS.inc()
        open_streams.inc()
        try:
            async for request in requests:
                stream.busy = True
                if time.time() >= principal.expires_at:
                    raise Unauthenticated(
                        "the token has expired; open a new ack stream with a fresh token"
                    )
                acked = await self._requests.ack(principal, request)
                await context.write(stream_pb2.AckStreamResponse(acked=acked))
                stream.busy = False
                if stream.ending:
                    raise Unavailable(SHUTTING_DOWN)
        except asyncio.CancelledError:
            if not stream.ended():
                raise
            raise Unavailable(SHUTTING_DOWN) from None
        finally:
            self._core.ack_streams.close(stream)
            metrics.ACK_STREAMS.dec()
            open_streams.dec()

    async def ListInbox(self, request: stream_pb2.ListInboxRequest, context: Context) -> bytes:
        """The encoded ListInboxResponse: each item's notification is its stored bytes (field 1,
        first), so the transformer chain seals it from the same cache as the stream's."""
        principal = current_principal()
        page_size = request.page_size or 20
        if page_size > 100:
            raise InvalidArgument("page_size is at most 100")
        check_count(request.accept_encodings, "accept_encodings")
        check_each(request.accept_encodings, MAX_ENCODING_LEN, "accept_encodings")
        filter_ = _FILTERS.get(request.filter)
        if filter_ is None:
            raise InvalidArgument(
                f"filter {request.filter} is not an InboxFilter this server knows (0 to 3)"
            )
        items, next_before = await self._core.list_inbox(
            principal.tenant,
            principal.subject,
            page_size,
            _page_cursor(request.page_token),
            filter_,
        )
        encoded_items: list[bytes] = []
        for encoded, cursor, state, read_at, seen_at, archived_at in items:
            # The stored state is DeliveryState's number (the stub types it as the enum class).
            item = stream_pb2.InboxItem(cursor=cursor, state=cast(DeliveryState, int(state)))
            if read_at:
                item.read_at.CopyFrom(timestamp(read_at))
            if seen_at:
                item.seen_at.CopyFrom(timestamp(seen_at))
            if archived_at:
                item.archived_at.CopyFrom(timestamp(archived_at))
            encoded_items.append(wire.notification_field(encoded) + item.SerializeToString())
        rest = stream_pb2.ListInboxResponse(next_page_token=str(next_before) if next_before else "")
        return wire.repeated_field_1(encoded_items) + rest.SerializeToString()

    async def UpdateInboxState(
        self, request: stream_pb2.UpdateInboxStateRequest, context: Context
    ) -> stream_pb2.UpdateInboxStateResponse:
        principal = current_principal()
        action = _ACTIONS.get(request.action)
        if action is None:
            raise InvalidArgument(
                "action must be one of INBOX_ACTION_SEEN, _READ, _UNREAD, _ARCHIVE, _UNARCHIVE"
            )
        changed, counts = await self._core.update_inbox_state(
            principal.tenant, principal.subject, _inbox_ids(request.notification_ids), action
        )
        return stream_pb2.UpdateInboxStateResponse(changed=changed, counts=counts_message(counts))

    async def MarkAllRead(
        self, request: stream_pb2.MarkAllReadRequest, context: Context
    ) -> stream_pb2.MarkAllReadResponse:
        principal = current_principal()
        marked, counts = await self._core.mark_all_read(
            principal.tenant, principal.subject, request.up_to_cursor
        )
        return stream_pb2.MarkAllReadResponse(marked=marked, counts=counts_message(counts))

    async def GetInboxCounts(
        self, request: stream_pb2.GetInboxCountsRequest, context: Context
    ) -> stream_pb2.GetInboxCountsResponse:
        principal = current_principal()
        counts = await self._core.inbox_counts(principal.tenant, principal.subject)
        return stream_pb2.GetInboxCountsResponse(counts=counts_message(counts))

    async def MarkRead(
        self, request: stream_pb2.MarkReadRequest, context: Context
    ) -> stream_pb2.MarkReadResponse:
        principal = current_principal()
        if not request.notification_ids:
            raise InvalidArgument("name the notification_ids to mark read")
        check_count(request.notification_ids, "notification_ids")
        check_each(request.notification_ids, MAX_ID_LEN, "notification_ids")
        marked = await self._core.mark_read(
            principal.tenant, principal.subject, list(request.notification_ids)
        )
        return stream_pb2.MarkReadResponse(marked=marked)

    async def GetSigningKeys(
        self, request: stream_pb2.GetSigningKeysRequest, context: Context
    ) -> stream_pb2.GetSigningKeysResponse:
        return signing_keys_response(self._keys)

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
            "AckStream": grpc.stream_stream_rpc_method_handler(
                self.AckStream,
                request_deserializer=stream_pb2.AckStreamRequest.FromString,
                response_serializer=stream_pb2.AckStreamResponse.SerializeToString,
            ),
            "ListInbox": grpc.unary_unary_rpc_method_handler(
                self.ListInbox,
                request_deserializer=stream_pb2.ListInboxRequest.FromString,
                response_serializer=None,  # encoded ListInboxResponse bytes (the chain's input)
            ),
            "MarkRead": grpc.unary_unary_rpc_method_handler(
                self.MarkRead,
                request_deserializer=stream_pb2.MarkReadRequest.FromString,
                response_serializer=stream_pb2.MarkReadResponse.SerializeToString,
            ),
            "UpdateInboxState": grpc.unary_unary_rpc_method_handler(
                self.UpdateInboxState,
                request_deserializer=stream_pb2.UpdateInboxStateRequest.FromString,
                response_serializer=stream_pb2.UpdateInboxStateResponse.SerializeToString,
            ),
            "MarkAllRead": grpc.unary_unary_rpc_method_handler(
                self.MarkAllRead,
                request_deserializer=stream_pb2.MarkAllReadRequest.FromString,
                response_serializer=stream_pb2.MarkAllReadResponse.SerializeToString,
            ),
            "GetInboxCounts": grpc.unary_unary_rpc_method_handler(
                self.GetInboxCounts,
                request_deserializer=stream_pb2.GetInboxCountsRequest.FromString,
                response_serializer=stream_pb2.GetInboxCountsResponse.SerializeToString,
            ),
            "GetSigningKeys": grpc.unary_unary_rpc_method_handler(
                self.GetSigningKeys,
                request_deserializer=stream_pb2.GetSigningKeysRequest.FromString,
                response_serializer=stream_pb2.GetSigningKeysResponse.SerializeToString,
            ),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("herald.v1.StreamService", handlers),)
        )


class NodeServicer:
    def __init__(self, core: DeliveryCore, dispatcher: Dispatcher) -> None:
        self._core = core
        self._dispatcher = dispatcher

    async def Dispatch(
        self, request: node_pb2.DispatchRequest, context: Context
    ) -> node_pb2.DispatchResponse:
        accepted = [accepted_from_proto(n, n.SerializeToString()) for n in request.notifications]
        counts = await self._dispatcher.dispatch(accepted)
        return node_pb2.DispatchResponse(recipient_counts=counts)

    async def GetDeliveryStatus(
        self, request: node_pb2.GetDeliveryStatusRequest, context: Context
    ) -> node_pb2.GetDeliveryStatusResponse:
        check_length(request.tenant_id, MAX_ID_LEN, "tenant_id")
        check_length(request.notification_id, MAX_ID_LEN, "notification_id")
        record = await self._dispatcher.status(request.tenant_id, request.notification_id)
        if record is None:
            return node_pb2.GetDeliveryStatusResponse(found=False)
        return node_pb2.GetDeliveryStatusResponse(found=True, status=status_to_proto(record))

    async def CloseSessions(
        self, request: node_pb2.CloseSessionsRequest, context: Context
    ) -> node_pb2.CloseSessionsResponse:
        check_length(request.tenant_id, MAX_ID_LEN, "tenant_id")
        check_each(request.session_ids, MAX_ID_LEN, "session_ids")
        check_length(request.user_id, MAX_ID_LEN, "user_id")
        check_length(request.reason, MAX_REASON_LEN, "reason")
        closed = await self._core.close_sessions(
            request.tenant_id, list(request.session_ids), request.user_id, request.reason
        )
        return node_pb2.CloseSessionsResponse(closed=closed)

    async def ChangeChannels(
        self, request: node_pb2.ChangeChannelsRequest, context: Context
    ) -> node_pb2.ChangeChannelsResponse:
        check_length(request.tenant_id, MAX_ID_LEN, "tenant_id")
        check_length(request.session_id, MAX_ID_LEN, "session_id")
        check_each(request.join, MAX_CHANNEL_LEN, "join")
        check_each(request.leave, MAX_CHANNEL_LEN, "leave")
        channels = await self._core.change_channels(
            request.tenant_id, request.session_id, list(request.join), list(request.leave)
        )
        if channels is None:
            return node_pb2.ChangeChannelsResponse(found=False)
        return node_pb2.ChangeChannelsResponse(found=True, channels=channels)

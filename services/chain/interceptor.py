"""The chain on StreamService: a grpc.aio server interceptor around Subscribe.

Subscribe's handler writes pre-encoded `SubscribeResponse` bytes with `context.write` (an
identity response serializer), which an interceptor cannot see by wrapping the handler's
return value. So the interceptor hands the handler a context whose `write` passes each message
through `Chain.transform` first. The variant is negotiated before the handler runs, from the
request's `accept_encodings` and the tenant's policy; a plain session gets the real context and
today's bytes. ListInbox negotiates the same way (the same tenant policy, `Chain.variant_for`)
and its encoded answer goes through `Chain.transform_inbox`. It must run inside the
AuthInterceptor (listed after it), which sets the caller's
principal and decodes the request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from herald.v1 import stream_pb2
from services import metrics
from services.auth import current_principal
from services.chain.chain import Chain
from services.chain.policy import Variant

SUBSCRIBE = "/herald.v1.StreamService/Subscribe"
LIST_INBOX = "/herald.v1.StreamService/ListInbox"

Context = aio.ServicerContext[Any, Any]


class _TransformingContext:
    """The servicer context with `write` going through the chain; the rest is the original."""

    def __init__(self, context: Context, chain: Chain, variant: Variant) -> None:
        self._context = context
        self._chain = chain
        self._variant = variant

    async def write(self, message: bytes) -> None:
        await self._context.write(self._chain.transform(message, self._variant))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class ChainInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Applies the transformer chain to every Subscribe stream that negotiated a variant."""

    def __init__(self, chain: Chain) -> None:
        self._chain = chain
        self._sessions: dict[Variant, Any] = {}
        # The servicer's Subscribe handler (the same object on every call) -> its wrapped one:
        # built once, so an open stream holds no closure or handler of its own.
        self._wrapped: dict[int, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is not None and handler_call_details.method == LIST_INBOX:
            return self._list_inbox(handler)
        if handler is None or handler_call_details.method != SUBSCRIBE:
            return handler
        known = self._wrapped.get(id(handler))
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler)
        self._wrapped[id(handler)] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        behavior: Any = handler.unary_stream
        chain = self._chain

        async def subscribe(request: stream_pb2.SubscribeRequest, context: Context) -> Any:
            variant = await chain.variant_for(
                current_principal().tenant, list(request.accept_encodings)
            )
            if variant.plain:
                return await behavior(request, context)
            counter = self._sessions.get(variant)
            if counter is None:
                counter = self._sessions[variant] = metrics.CHAIN_SESSIONS.labels(variant.label)
            counter.inc()
            return await behavior(request, _TransformingContext(context, chain, variant))

        return grpc.unary_stream_rpc_method_handler(
            subscribe,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _list_inbox(
        self, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        behavior: Any = handler.unary_unary
        chain = self._chain

        async def list_inbox(request: stream_pb2.ListInboxRequest, context: Context) -> Any:
            # The handler first: it checks the request (accept_encodings' bounds too).
            response = await behavior(request, context)
            variant = await chain.variant_for(
                current_principal().tenant, list(request.accept_encodings)
            )
            return chain.transform_inbox(response, variant)

        return grpc.unary_unary_rpc_method_handler(
            list_inbox,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

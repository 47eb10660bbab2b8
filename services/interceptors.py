"""Server interceptors: authentication, and turning every failure into a clear gRPC status.

Each herald RPC runs with the caller's `Principal` in a contextvar. Errors the caller can act on
(`HeraldError`) become their own status; anything else becomes INTERNAL with a generic message and
is logged without the request, so neither tracebacks nor payloads reach the client.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc
from grpc import aio

from services import auth
from services.errors import HeraldError, PermissionDenied

log = logging.getLogger(__name__)

# Methods anyone may call: health checks and reflection (so grpcurl and load balancers work).
_PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

# The scope each herald method needs; a method missing here is refused (fail closed).
REQUIRED_SCOPE: dict[str, str] = {
    "/herald.v1.IngestService/Send": auth.SCOPE_SEND,
    "/herald.v1.IngestService/SendBatch": auth.SCOPE_SEND,
    "/herald.v1.IngestService/GetStatus": auth.SCOPE_SEND,
    "/herald.v1.StreamService/Subscribe": auth.SCOPE_SUBSCRIBE,
    "/herald.v1.StreamService/Ack": auth.SCOPE_SUBSCRIBE,
    "/herald.v1.StreamService/AckStream": auth.SCOPE_SUBSCRIBE,
    "/herald.v1.StreamService/ListInbox": auth.SCOPE_SUBSCRIBE,
    "/herald.v1.StreamService/MarkRead": auth.SCOPE_SUBSCRIBE,
    "/herald.v1.RegistryService/RegisterSession": auth.SCOPE_NODE,
    "/herald.v1.RegistryService/HeartbeatSession": auth.SCOPE_NODE,
    "/herald.v1.RegistryService/UnregisterSession": auth.SCOPE_NODE,
    "/herald.v1.RegistryService/GetPresence": auth.SCOPE_PRESENCE_READ,
    "/herald.v1.RegistryService/ListSessions": auth.SCOPE_PRESENCE_READ,
    "/herald.v1.RegistryService/Disconnect": auth.SCOPE_SESSIONS_ADMIN,
    "/herald.v1.RegistryService/JoinChannel": auth.SCOPE_SESSIONS_ADMIN,
    "/herald.v1.RegistryService/LeaveChannel": auth.SCOPE_SESSIONS_ADMIN,
    "/herald.v1.RegistryService/PutTemplate": auth.SCOPE_TEMPLATES_WRITE,
    "/herald.v1.RegistryService/DeleteTemplate": auth.SCOPE_TEMPLATES_WRITE,
    "/herald.v1.RegistryService/GetTemplate": auth.SCOPE_SEND,
    "/herald.v1.RegistryService/ListTemplates": auth.SCOPE_SEND,
    "/herald.node.v1.NodeService/Dispatch": auth.SCOPE_NODE,
    "/herald.node.v1.NodeService/GetDeliveryStatus": auth.SCOPE_NODE,
    "/herald.node.v1.NodeService/CloseSessions": auth.SCOPE_NODE,
    "/herald.node.v1.NodeService/ChangeChannels": auth.SCOPE_NODE,
}

Behavior = Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]


async def _abort_for(
    exc: BaseException, context: aio.ServicerContext[Any, Any], method: str
) -> None:
    if isinstance(exc, HeraldError):
        await context.abort(exc.code, exc.message)
    log.error(
        "unhandled error in %s",
        method,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; it was logged on the server")


def _guard(
    behavior: Behavior, method: str, principal: auth.Principal | None, denial: HeraldError | None
) -> Behavior:
    async def guarded(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        if denial is not None:
            await context.abort(denial.code, denial.message)
        token = auth.set_principal(principal) if principal is not None else None
        try:
            return await behavior(request, context)
        except (asyncio.CancelledError, aio.AbortError):
            raise
        except Exception as exc:
            await _abort_for(exc, context, method)
        finally:
            if token is not None:
                auth.reset_principal(token)

    return guarded


class AuthInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Verifies the bearer token and scope of every herald RPC and maps errors to statuses."""

    def __init__(self, verifier: auth.TokenVerifier) -> None:
        self._verifier = verifier

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_PUBLIC_PREFIXES):
            return handler
        principal: auth.Principal | None = None
        denial: HeraldError | None = None
        try:
            scope = REQUIRED_SCOPE.get(method)
            if scope is None:
                raise PermissionDenied(f"{method} is not open to any token")
            authorization = None
            for key, value in handler_call_details.invocation_metadata or ():
                if key == "authorization":
                    authorization = value if isinstance(value, str) else value.decode()
                    break
            principal = self._verifier.verify_header(authorization)
            principal.require(scope)
        except HeraldError as exc:
            denial = exc
        return _rewrap(handler, method, principal, denial)


def _rewrap(
    handler: grpc.RpcMethodHandler[Any, Any],
    method: str,
    principal: auth.Principal | None,
    denial: HeraldError | None,
) -> grpc.RpcMethodHandler[Any, Any]:
    # grpc-stubs types behaviors as sync callables; on an aio server they are coroutines.
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _guard(cast(Behavior, handler.unary_unary), method, principal, denial),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None and not inspect.isasyncgenfunction(handler.unary_stream):
        return grpc.unary_stream_rpc_method_handler(
            _guard(cast(Behavior, handler.unary_stream), method, principal, denial),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream is not None and not inspect.isasyncgenfunction(handler.stream_stream):
        return grpc.stream_stream_rpc_method_handler(
            _guard(cast(Behavior, handler.stream_stream), method, principal, denial),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    raise TypeError(f"{method}: herald handlers are unary, or coroutines that write streams")

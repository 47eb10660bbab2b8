"""Server interceptors: authentication, request decoding, and every failure as a clear status.

Every RPC is registered again here (`_rewrap`) with an identity request deserializer; its request
is decoded inside the guarded behavior, after the token and the scope were checked:

- a call without a valid token gets UNAUTHENTICATED (or PERMISSION_DENIED), whatever its bytes;
- bytes that are not a message of the method's request type get INVALID_ARGUMENT with one fixed
  message. On a client stream (AckStream) each message is decoded as the handler reads it, and a
  bad one ends the call the same way;
- errors the caller can act on (`HeraldError`) become their own status, their message bounded;
- anything else becomes INTERNAL with a generic message. The server logs it in one line naming
  the exception's type and where it was raised, never its message, the request or the token, and
  at most once per method per minute with a count of the ones it left out.

A refused call (no token, a bad one, a missing scope) is also an `auth.failure` audit record
(services/audit.py), rate-limited the same way, naming the caller's address and never the token.

Every call that ends is counted by method and status code (`herald_rpc_handled_total`), and a
unary call's duration observed (`herald_rpc_duration_seconds`); only methods with a handler get
there, so the label set is bounded by the services served. Reflection (a public stream of its
own) is not counted.

Each herald RPC runs with the caller's `Principal` in a contextvar. Health and reflection are
public (no token), but their requests are decoded and their failures mapped in the same way.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from services import audit, auth, metrics
from services.errors import HeraldError, InvalidArgument, PermissionDenied, Unauthenticated
from services.tls import PEER_CERTIFICATE

log = logging.getLogger(__name__)

# Methods anyone may call: health checks and reflection (so grpcurl and load balancers work).
_PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

# The scope each herald method needs; a method missing here is refused (fail closed).
REQUIRED_SCOPE: dict[str, str] = {
    "/herald.v1.IngestService/Send": auth.SCOPE_SEND,
    "/herald.v1.IngestService/SendBatch": auth.SCOPE_SEND,
    "/herald.v1.IngestService/GetStatus": auth.SCOPE_SEND,
    "/herald.v1.IngestService/CancelScheduled": auth.SCOPE_SEND,
    "/herald.v1.IngestService/ListScheduled": auth.SCOPE_SEND,
    "/herald.v1.StreamService/Subscribe": auth.SCOPE_SUBSCRIBE,
    "/herald.v1.StreamService/Ack": auth.SCOPE_SUBSCRIBE,
    "/herald.v1.StreamService/AckStream": auth.SCOPE_SUBSCRIBE,
    "/herald.v1.StreamService/ListInbox": auth.SCOPE_SUBSCRIBE,
    "/herald.v1.StreamService/MarkRead": auth.SCOPE_SUBSCRIBE,
    "/herald.v1.StreamService/UpdateInboxState": auth.SCOPE_SUBSCRIBE,
    "/herald.v1.StreamService/MarkAllRead": auth.SCOPE_SUBSCRIBE,
    "/herald.v1.StreamService/GetInboxCounts": auth.SCOPE_SUBSCRIBE,
    "/herald.v1.StreamService/GetSigningKeys": auth.SCOPE_SUBSCRIBE,
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
    "/herald.v1.RegistryService/GetTenantSettings": auth.SCOPE_TENANT_READ,
    "/herald.v1.RegistryService/PutTenantSettings": auth.SCOPE_TENANT_ADMIN,
    "/herald.v1.RegistryService/DeleteTenantSettings": auth.SCOPE_TENANT_ADMIN,
    "/herald.v1.RegistryService/ListTenantSettings": auth.SCOPE_NODE,
    "/herald.v1.RegistryService/RegisterPushTarget": auth.SCOPE_PUSH_TARGETS,
    "/herald.v1.RegistryService/UnregisterPushTarget": auth.SCOPE_PUSH_TARGETS,
    "/herald.v1.RegistryService/ListPushTargets": auth.SCOPE_PUSH_TARGETS,
    "/herald.v1.RegistryService/GetPreferences": auth.SCOPE_PREFERENCES,
    "/herald.v1.RegistryService/PutPreferences": auth.SCOPE_PREFERENCES,
    **{
        f"/herald.v1.RegistryService/{method}": auth.SCOPE_TENANT_ADMIN
        for method in (
            "CreateSegment",
            "AddSegmentMembers",
            "RemoveSegmentMembers",
            "ListSegmentMembers",
            "ListSegments",
            "DeleteSegment",
            "ListParkedWebhooks",
            "ReplayWebhooks",
            "DeleteParkedWebhooks",
        )
    },
    "/herald.node.v1.NodeService/Dispatch": auth.SCOPE_NODE,
    "/herald.node.v1.NodeService/GetDeliveryStatus": auth.SCOPE_NODE,
    "/herald.node.v1.NodeService/CloseSessions": auth.SCOPE_NODE,
    "/herald.node.v1.NodeService/ChangeChannels": auth.SCOPE_NODE,
}

UNDECODABLE = (
    "the request is not a valid message of this method's type "
    "(malformed protobuf, or a string field that is not UTF-8)"
)
INTERNAL = "internal error; it was logged on the server"
NEEDS_CERTIFICATE = (
    "node-to-node calls need a verified client certificate (mTLS is on): call the node port "
    "(HERALD_NODE_PORT) with this node's certificate"
)
# Status messages quote client input only in part (services/bounds.py); this caps the rest.
_MAX_DETAILS = 512
# What protobuf raises for bytes that are not a message of the type: DecodeError (upb, and the
# pure-Python parser for most damage); UnicodeDecodeError or ValueError from the pure-Python
# parser for a string field that is not UTF-8.
_DECODE_ERRORS = (DecodeError, ValueError)
_ERROR_LOG_INTERVAL_S = 60.0
_WHERE_FRAMES = 6

Context = aio.ServicerContext[Any, Any]
Behavior = Callable[[Any, Context], Awaitable[Any]]
Responses = Callable[[Any, Context], AsyncIterator[Any]]
Deserializer = Callable[[bytes], Any]
Decode = Callable[[Any], Any]


class ErrorLog:
    """Logs unexpected errors at most once per method per `interval_s`, with the number of errors
    it left out since, so that a client triggering a bug in a loop cannot flood the log.

    A line names the method, the exception type and the innermost frames where it was raised;
    never the exception's message, which may quote the request."""

    def __init__(
        self,
        interval_s: float = _ERROR_LOG_INTERVAL_S,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval_s = interval_s
        self._now = now
        # method -> (when it was last logged, errors left out since). Only methods with a
        # handler get here, so the map is bounded by the services served.
        self._last: dict[str, tuple[float, int]] = {}

    def record(self, method: str, exc: BaseException) -> None:
        now = self._now()
        logged_at, left_out = self._last.get(method, (-math.inf, 0))
        if now - logged_at < self._interval_s:
            self._last[method] = (logged_at, left_out + 1)
            return
        self._last[method] = (now, 0)
        log.error(
            "unhandled %s in %s at %s (%d more left out since the last report)",
            type(exc).__name__,
            method,
            _where(exc),
            left_out,
            extra={"method": method, "error": type(exc).__name__, "left_out": left_out},
        )


def _where(exc: BaseException) -> str:
    """The innermost frames of a traceback as `dir/file.py:line in function`, innermost first."""
    frames = traceback.extract_tb(exc.__traceback__)[-_WHERE_FRAMES:]
    return " < ".join(
        f"{'/'.join(Path(f.filename).parts[-2:])}:{f.lineno} in {f.name}" for f in reversed(frames)
    )


def _bounded(message: str) -> str:
    return message if len(message) <= _MAX_DETAILS else message[: _MAX_DETAILS - 1] + "…"


async def _abort_for(exc: BaseException, context: Context, method: str, errors: ErrorLog) -> None:
    if isinstance(exc, HeraldError):
        message = _bounded(exc.message)
        await context.abort(exc.code, message, exc.trailing_metadata(message))
    errors.record(method, exc)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL)


def _decoder(deserialize: Deserializer | None) -> Decode:
    """Decodes one request message; bad bytes are INVALID_ARGUMENT."""
    if deserialize is None:
        return _as_is

    def decode(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except _DECODE_ERRORS:
            raise InvalidArgument(UNDECODABLE) from None

    return decode


def _stream_decoder(deserialize: Deserializer | None) -> Decode:
    """Decodes a client stream lazily: each message as the handler reads it."""
    if deserialize is None:
        return _as_is
    decode = _decoder(deserialize)

    async def decoded(raws: AsyncIterator[bytes]) -> AsyncIterator[Any]:
        async for raw in raws:
            yield decode(raw)

    return decoded


def _as_is(request: Any) -> Any:
    return request


def _guard(
    behavior: Behavior,
    method: str,
    principal: auth.Principal | None,
    denial: HeraldError | None,
    decode: Decode,
    errors: ErrorLog,
    failures: audit.AuthFailures | None,
    needs_certificate: bool,
    rpc: RpcMetrics | None = None,
) -> Behavior:
    """`behavior` guarded, and with `rpc`, counted by the status it ended with and timed.

    One coroutine for both: a Subscribe stream keeps its frame alive for as long as it is open
    (docs/performance.md, sixth session)."""

    async def guarded(request: Any, context: Context) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        token = None
        try:
            if denial is not None:
                if failures is not None:
                    failures.record(method, denial, principal, context)
                await context.abort(denial.code, _bounded(denial.message))
            if needs_certificate and not context.auth_context().get(PEER_CERTIFICATE):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, NEEDS_CERTIFICATE)
            token = auth.set_principal(principal) if principal is not None else None
            try:
                return await behavior(decode(request), context)
            except (asyncio.CancelledError, aio.AbortError):
                raise
            except Exception as exc:
                await _abort_for(exc, context, method, errors)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            # An abort set the code; anything else becomes UNKNOWN (which the guard prevents).
            aborted: grpc.StatusCode | None = context.code()
            code = aborted if aborted is not None else grpc.StatusCode.UNKNOWN
            raise
        finally:
            if token is not None:
                auth.reset_principal(token)
            if rpc is not None:
                rpc.record(code, time.perf_counter() - started)

    return guarded


class RpcMetrics:
    """The count and duration series of one method, by status code (children made once)."""

    def __init__(self, method: str, *, unary: bool) -> None:
        _, service, name = method.split("/", 2)
        self._labels = (service, name)
        self._unary = unary
        self._children: dict[grpc.StatusCode, tuple[Any, Any]] = {}

    def record(self, code: grpc.StatusCode, seconds: float) -> None:
        children = self._children.get(code)
        if children is None:
            labels = (*self._labels, code.name)
            children = self._children[code] = (
                metrics.RPCS.labels(*labels),
                metrics.RPC_DURATION.labels(*labels) if self._unary else None,
            )
        counter, duration = children
        counter.inc()
        if duration is not None:
            duration.observe(seconds)


def _guard_responses(
    behavior: Responses, method: str, decode: Decode, errors: ErrorLog
) -> Responses:
    """`_guard` for a public handler that yields its responses (reflection); no principal."""

    async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            async for response in behavior(decode(request), context):
                yield response
        except (asyncio.CancelledError, aio.AbortError):
            raise
        except Exception as exc:
            await _abort_for(exc, context, method, errors)

    return guarded


class AuthInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Verifies the bearer token and scope of every herald RPC, decodes requests after that, and
    maps errors to statuses.

    With `node_certificates` (mTLS on), node-to-node methods also need a verified client
    certificate, which only the node listener asks for: a node token alone is not enough."""

    def __init__(
        self,
        verifier: auth.TokenVerifier,
        errors: ErrorLog | None = None,
        failures: audit.AuthFailures | None = None,
        *,
        node_certificates: bool = False,
    ) -> None:
        self._verifier = verifier
        self._errors = errors or ErrorLog()
        self._failures = failures or audit.AuthFailures()
        self._node_certificates = node_certificates
        # method -> its metrics; only methods with a handler are added, so it stays bounded.
        self._rpc: dict[str, RpcMetrics] = {}

    def _rpc_metrics(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> RpcMetrics:
        rpc = self._rpc.get(method)
        if rpc is None:
            unary = handler.unary_unary is not None
            rpc = self._rpc[method] = RpcMetrics(method, unary=unary)
        return rpc

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:  # no such method: grpc answers UNIMPLEMENTED (grpc-stubs omits None)
            return handler  # type: ignore[unreachable]
        if method.startswith(_PUBLIC_PREFIXES):  # no token to check
            return _rewrap(
                handler,
                method,
                None,
                None,
                self._errors,
                None,
                rpc=self._rpc_metrics(method, handler),
                public=True,
            )
        principal: auth.Principal | None = None
        denial: HeraldError | None = None
        scope = REQUIRED_SCOPE.get(method)
        try:
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
        except Exception as exc:
            # A token the verifier did not expect: refused, and reported like any other bug.
            self._errors.record(method, exc)
            principal, denial = None, Unauthenticated("the token could not be verified")
        needs_certificate = self._node_certificates and scope == auth.SCOPE_NODE
        return _rewrap(
            handler,
            method,
            principal,
            denial,
            self._errors,
            self._failures,
            needs_certificate,
            rpc=self._rpc_metrics(method, handler),
        )


def _rewrap(
    handler: grpc.RpcMethodHandler[Any, Any],
    method: str,
    principal: auth.Principal | None,
    denial: HeraldError | None,
    errors: ErrorLog,
    failures: audit.AuthFailures | None,
    needs_certificate: bool = False,
    *,
    rpc: RpcMetrics | None = None,
    public: bool = False,
) -> grpc.RpcMethodHandler[Any, Any]:
    """The handler again, taking request bytes (`request_deserializer=None`) and guarded."""
    deserialize = handler.request_deserializer
    serialize = handler.response_serializer
    # grpc-stubs types behaviors as sync callables; on an aio server they are coroutines (or,
    # for the public services, async generators).
    behavior: Any
    make: Callable[..., grpc.RpcMethodHandler[Any, Any]]
    if handler.unary_unary is not None:
        behavior, make, decode = handler.unary_unary, grpc.unary_unary_rpc_method_handler, None
    elif handler.unary_stream is not None:
        behavior, make, decode = handler.unary_stream, grpc.unary_stream_rpc_method_handler, None
    elif handler.stream_unary is not None:
        behavior, make = handler.stream_unary, grpc.stream_unary_rpc_method_handler
        decode = _stream_decoder(deserialize)
    else:
        behavior, make = handler.stream_stream, grpc.stream_stream_rpc_method_handler
        decode = _stream_decoder(deserialize)
    if decode is None:
        decode = _decoder(deserialize)
    if inspect.iscoroutinefunction(behavior):
        guarded: Any = _guard(
            behavior, method, principal, denial, decode, errors, failures, needs_certificate, rpc
        )
    elif public and inspect.isasyncgenfunction(behavior):
        guarded = _guard_responses(behavior, method, decode, errors)
    elif public:
        return handler  # a sync handler (none is served today): left as grpc runs it
    else:
        raise TypeError(f"{method}: herald handlers are coroutines (streams write responses)")
    return make(guarded, request_deserializer=None, response_serializer=serialize)

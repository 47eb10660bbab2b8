"""The WebSocket endpoint of a stream node: a second adapter over the core that Subscribe uses.

One connection is one session (docs/websocket.md has the protocol frame by frame):

1. the handshake picks the framing by subprotocol, `herald.v1` (binary protobuf, also the
   default) or `herald.v1.json` (protobuf's canonical JSON in text frames), and may carry the
   token as a `herald.bearer.<token>` subprotocol (never echoed back, never in the URL);
2. the client's first frame is a `WebSocketClientFrame.subscribe` (the token, unless the
   handshake had it, and a `SubscribeRequest`); it is checked, admitted and opened exactly as a
   Subscribe call is (services/stream/requests.py);
3. the session writer (services/stream/writer.py) writes the stream: every frame the server
   sends is one encoded `SubscribeResponse`, the bytes the writer hands to `write`;
4. every later client frame is a `WebSocketClientFrame.ack`, taken like an Ack call;
5. the stream ends with a Closing event, then a close code: 1012 after REASON_SHUTDOWN, 1000
   after the other reasons. A refused or failed connection gets no event, only the close code
   `4000 + its gRPC status code` (4003 INVALID_ARGUMENT, 4016 UNAUTHENTICATED, ...) and the
   status message, cut to the 123 bytes a close reason can hold.

The writer hands out encoded `SubscribeResponse` bytes and `_Framing.outgoing` turns them into a
frame: the binary framing sends them as they are. That is the seam for the transformer chain: a
session's negotiated variant of the bytes (compressed, signed, JSON) is produced by the chain,
once per variant, and passed through here unchanged; the JSON framing's own conversion is then
the chain's format step.

websockets (the asyncio implementation) was chosen over a raw asyncio protocol on wsproto, for
its C-accelerated framing, its maintained sans-I/O core and its bounded handshake, frame size and
write buffer; bench/websocket_libraries.py measures both (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from herald.v1 import stream_pb2
from services import audit, auth, metrics
from services.auth import Principal
from services.chain.chain import Chain
from services.chain.policy import Variant
from services.errors import HeraldError, InvalidArgument, Unauthenticated
from services.health import NodeHealth
from services.stream.delivery import ACK_LINGER_S
from services.stream.requests import StreamRequests
from services.stream.session import Session
from services.stream.writer import Write

log = logging.getLogger(__name__)
# websockets' own lines: one per connection opened, rejected or closed at INFO. Sessions are in
# the audit log already; a node with 10k connections keeps only the library's warnings.
_library_log = logging.getLogger(f"{__name__}.library")
_library_log.setLevel(logging.WARNING)

PATH = "/ws"
HEALTH_PATH = "/healthz"
PROTOBUF = "herald.v1"
JSON = "herald.v1.json"
BEARER_PREFIX = "herald.bearer."
# Close codes after a Closing event (Closing.Reason -> code); any other reason closes with 1000.
_CLOSE_AFTER: dict[int, int] = {stream_pb2.Closing.REASON_SHUTDOWN: CloseCode.SERVICE_RESTART}
# A refused or failed connection: 4000 + the gRPC status code of the same failure on Subscribe.
STATUS_CLOSE_BASE = 4000
# RFC 6455: a close frame's reason is at most 123 bytes of UTF-8.
_MAX_REASON_BYTES = 123
INTERNAL = "internal error; it was logged on the server"
_STREAM_SERVICE = "herald.v1.StreamService"


def close_code(error: HeraldError) -> int:
    """The close code of a connection refused or ended by `error`."""
    code: int = error.code.value[0]
    return STATUS_CLOSE_BASE + code


def close_reason(message: str) -> str:
    """`message` cut to the 123 bytes a close frame can carry, on a character boundary."""
    data = message.encode()
    if len(data) <= _MAX_REASON_BYTES:
        return message
    return data[: _MAX_REASON_BYTES - 3].decode(errors="ignore") + "…"


class _Framing:
    """How the server's SubscribeResponse bytes and the client's frames travel: binary protobuf."""

    subprotocol = PROTOBUF

    def outgoing(self, data: bytes) -> bytes | str:
        return data

    def incoming(self, message: bytes | str) -> stream_pb2.WebSocketClientFrame:
        if isinstance(message, str):
            raise InvalidArgument(
                "text frame on a binary connection: send WebSocketClientFrame as binary "
                f"protobuf, or ask for {JSON!r} in the handshake"
            )
        try:
            return stream_pb2.WebSocketClientFrame.FromString(message)
        except (DecodeError, ValueError):
            raise InvalidArgument(
                "the frame is not a valid WebSocketClientFrame (malformed protobuf)"
            ) from None


class _JsonFraming(_Framing):
    """Protobuf's canonical JSON mapping, in text frames, both ways."""

    subprotocol = JSON

    def outgoing(self, data: bytes) -> bytes | str:
        return json_format.MessageToJson(stream_pb2.SubscribeResponse.FromString(data), indent=None)

    def incoming(self, message: bytes | str) -> stream_pb2.WebSocketClientFrame:
        if isinstance(message, bytes):
            raise InvalidArgument(
                "binary frame on a JSON connection: send WebSocketClientFrame as JSON text"
            )
        try:
            return json_format.Parse(message, stream_pb2.WebSocketClientFrame())
        except (json_format.ParseError, ValueError, RecursionError):
            raise InvalidArgument(
                "the frame is not a WebSocketClientFrame in protobuf's JSON mapping"
            ) from None


_FRAMINGS = {PROTOBUF: _Framing(), JSON: _JsonFraming()}


def select_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """JSON if offered, else binary protobuf if offered, else none (binary protobuf). The
    bearer subprotocol is never selected: the token is not echoed back."""
    for name in (JSON, PROTOBUF):
        if name in offered:
            return Subprotocol(name)
    return None


def bearer_token(connection: ServerConnection) -> str | None:
    """The token of a `herald.bearer.<token>` subprotocol of the handshake, if it offered one."""
    if connection.request is None:
        return None
    for header in connection.request.headers.get_all("Sec-WebSocket-Protocol"):
        for item in header.split(","):
            item = item.strip()
            if item.startswith(BEARER_PREFIX):
                return item[len(BEARER_PREFIX) :]
    return None


def _peer(connection: ServerConnection) -> audit.Peer:
    address = connection.remote_address
    text = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address or "")
    request = connection.request
    forwarded = request.headers.get("X-Forwarded-For", "") if request is not None else ""
    return audit.Peer(text, forwarded)


@dataclass
class WebSocketEndpoint:
    """Serves the WebSocket protocol for one stream node, on a port of its own."""

    requests: StreamRequests
    verifier: auth.TokenVerifier
    health: NodeHealth
    max_frame_bytes: int = 65_536
    subscribe_timeout_s: float = 10.0
    ping_interval_s: float = 25.0
    ping_timeout_s: float = 10.0
    # The transformer chain (services/chain/): None serves every session plain.
    chain: Chain | None = None
    _server: Server | None = None
    _failures: audit.AuthFailures = field(default_factory=audit.AuthFailures)

    async def start(
        self, host: str, port: int, tls: ssl.SSLContext | None = None, reuse_port: bool = False
    ) -> int:
        """Listens; returns the port (the one picked when `port` is 0)."""
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            select_subprotocol=select_subprotocol,
            # The transformer chain compresses (once per variant, not per connection).
            compression=None,
            max_size=self.max_frame_bytes,
            ping_interval=self.ping_interval_s,
            ping_timeout=self.ping_timeout_s,
            close_timeout=2,
            ssl=tls,
            reuse_port=reuse_port or None,
            server_header=None,
            logger=_library_log,
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, timeout_s: float) -> None:
        """Stops listening, then closes what is still open (1001 going away) within the time.

        The node ends its sessions first (Closing REASON_SHUTDOWN, then 1012): what is left here
        is connections that never subscribed."""
        if self._server is None:
            return
        self._server.close(close_connections=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, timeout_s)):
                await self._server.wait_closed()

    # -- HTTP --------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == HEALTH_PATH:
            # For HTTP/1.1 load balancers (Envoy's WebSocket cluster): the stream service's
            # gRPC health, as a status code.
            status = self.health.status(_STREAM_SERVICE)
            if status is None:
                status = self.health.status("")
            serving = status == 1 and not self.health.shutting_down
            return connection.respond(
                HTTPStatus.OK if serving else HTTPStatus.SERVICE_UNAVAILABLE,
                "SERVING\n" if serving else "NOT_SERVING\n",
            )
        if url.path != PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"no such path; WebSocket: {PATH}\n")
        if any("token" in name.lower() for name, _ in parse_qsl(url.query)):
            return connection.respond(
                HTTPStatus.BAD_REQUEST,
                "tokens never go in the URL (proxies log URLs): send it in the subscribe frame "
                f"or as a {BEARER_PREFIX}<token> subprotocol\n",
            )
        return None

    # -- one connection --------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        framing = _FRAMINGS.get(connection.subprotocol or PROTOBUF, _FRAMINGS[PROTOBUF])
        peer = _peer(connection)
        principal: Principal | None = None
        try:
            principal, request = await self._subscribe_frame(connection, framing)
            variant = None
            if self.chain is not None:
                # As on gRPC (services/chain/interceptor.py): negotiated before the session
                # opens, so a tenant requiring signatures on a node without a key is refused.
                variant = await self.chain.variant_for(
                    principal.tenant, list(request.accept_encodings)
                )
                if variant.plain:
                    variant = None
            session = await self._open(principal, request, peer)
        except HeraldError as exc:
            await self._refuse(connection, exc)
            return
        except ConnectionClosed:
            return
        except Exception as exc:
            log.error(
                "websocket subscribe failed: unhandled %s", type(exc).__name__, exc_info=False
            )
            await self._refuse(connection, _Internal(INTERNAL))
            return
        await self._serve(connection, framing, principal, session, peer, variant)

    async def _subscribe_frame(
        self, connection: ServerConnection, framing: _Framing
    ) -> tuple[Principal, stream_pb2.SubscribeRequest]:
        try:
            async with asyncio.timeout(self.subscribe_timeout_s):
                message = await connection.recv()
        except TimeoutError:
            raise InvalidArgument(
                f"no subscribe frame within {self.subscribe_timeout_s:g} s of connecting"
            ) from None
        frame = framing.incoming(message)
        if frame.WhichOneof("frame") != "subscribe":
            raise InvalidArgument("the first frame must be a subscribe frame")
        token = bearer_token(connection) or frame.subscribe.token
        principal: Principal | None = None
        try:
            if not token:
                raise Unauthenticated(
                    f"no token: send it in the subscribe frame or as a {BEARER_PREFIX}<token> "
                    "subprotocol"
                )
            try:
                principal = self.verifier.verify(token)
            except HeraldError:
                raise
            except Exception:
                raise Unauthenticated("the token could not be verified") from None
            principal.require(auth.SCOPE_SUBSCRIBE)
        except HeraldError as denial:
            # As the gRPC interceptor does for a refused call: rate-limited, never the token.
            self._failures.record(PATH, denial, principal, _peer(connection))
            raise
        return principal, frame.subscribe.request

    async def _open(
        self, principal: Principal, request: stream_pb2.SubscribeRequest, peer: audit.Peer
    ) -> Session:
        try:
            session = await self.requests.open(principal, request)
        except BaseException as exc:
            audit.record(
                "session.open",
                principal=principal,
                target=f"user:{principal.subject}",
                outcome=audit.outcome_of(exc),
                context=peer,
                transport="websocket",
            )
            raise
        audit.record(
            "session.open",
            principal=principal,
            target=f"session:{session.session_id}",
            outcome=audit.OK,
            context=peer,
            node_id=self.requests.core.node_id,
            device=audit.bounded(session.device),
            channels=len(session.channels),
            transport="websocket",
        )
        return session

    async def _serve(
        self,
        connection: ServerConnection,
        framing: _Framing,
        principal: Principal,
        session: Session,
        peer: audit.Peer,
        variant: Variant | None = None,
    ) -> None:
        core = self.requests.core
        opened = time.monotonic()
        ended = audit.OK
        outgoing = framing.outgoing

        async def write(data: bytes) -> None:
            await connection.send(outgoing(data))

        # Binary: the writer's bytes are the frame, as they are (no wrapper on the hot path).
        writes: Write = write if isinstance(framing, _JsonFraming) else connection.send
        if variant is not None and self.chain is not None:
            # The same chain as gRPC's: each variant of a notification built once, for every
            # session and transport (docs/transformers.md).
            chain, plain_write = self.chain, writes
            metrics.CHAIN_SESSIONS.labels(variant.label).inc()

            async def transformed(data: bytes) -> None:
                await plain_write(chain.transform(data, variant))

            writes = transformed

        writer = asyncio.ensure_future(core.run(session, writes))
        reader = asyncio.ensure_future(self._read_acks(connection, framing, principal))
        code: int = CloseCode.NORMAL_CLOSURE
        reason = ""
        try:
            await asyncio.wait((writer, reader), return_when=asyncio.FIRST_COMPLETED)
            if writer.done():
                error = _outcome(writer)
                if error is None and session.closing is not None:
                    code = _CLOSE_AFTER.get(session.closing[0], CloseCode.NORMAL_CLOSURE)
                    # The client acks what it handled as soon as it reads Closing (as it does
                    # on gRPC): those acks land before the connection closes.
                    await asyncio.wait((reader,), timeout=ACK_LINGER_S)
                elif isinstance(error, HeraldError):  # Aborted: a slow consumer
                    ended = error.code.name
                    code, reason = close_code(error), close_reason(error.message)
                elif isinstance(error, ConnectionClosed):
                    ended = "CANCELLED"
                elif error is not None:
                    ended = "INTERNAL"
                    log.error("websocket stream failed: unhandled %s", type(error).__name__)
                    code, reason = close_code(_Internal(INTERNAL)), INTERNAL
            else:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer
                error = _outcome(reader)
                if isinstance(error, HeraldError):
                    ended = error.code.name
                    code, reason = close_code(error), close_reason(error.message)
                elif error is None or isinstance(error, ConnectionClosed):
                    ended = "CANCELLED"  # the client went away
                else:
                    ended = "INTERNAL"
                    log.error("websocket acks failed: unhandled %s", type(error).__name__)
                    code, reason = close_code(_Internal(INTERNAL)), INTERNAL
        except asyncio.CancelledError:
            ended = "CANCELLED"
            raise
        finally:
            for task in (writer, reader):
                task.cancel()
            await asyncio.gather(writer, reader, return_exceptions=True)
            try:
                await core.close(session)
            finally:
                closing = session.closing
                audit.record(
                    "session.close",
                    principal=principal,
                    target=f"session:{session.session_id}",
                    outcome=ended,
                    context=peer,
                    node_id=core.node_id,
                    closing=stream_pb2.Closing.Reason.Name(closing[0]) if closing else "",
                    duration_s=round(time.monotonic() - opened, 3),
                    transport="websocket",
                )
            # After the session is forgotten: a client that stopped reading holds this for
            # the close timeout at most, not the node's shutdown or its session count.
            with contextlib.suppress(ConnectionClosed):
                await connection.close(code, reason)

    async def _read_acks(
        self, connection: ServerConnection, framing: _Framing, principal: Principal
    ) -> None:
        """Takes the client's ack frames until it closes; a bad frame raises its error."""
        async for message in connection:
            frame = framing.incoming(message)
            if frame.WhichOneof("frame") != "ack":
                raise InvalidArgument("after the subscribe frame, only ack frames may follow")
            if time.time() >= principal.expires_at:
                raise Unauthenticated("the token has expired; reconnect with a fresh token")
            await self.requests.ack(principal, frame.ack)

    async def _refuse(self, connection: ServerConnection, error: HeraldError) -> None:
        with contextlib.suppress(ConnectionClosed):
            await connection.close(close_code(error), close_reason(error.message))


class _Internal(HeraldError):
    pass


def _outcome(task: asyncio.Future[None]) -> BaseException | None:
    """What a finished task raised (a cancelled one: CancelledError), None if it returned."""
    if task.cancelled():
        return asyncio.CancelledError()
    return task.exception()


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The server TLS context of the WebSocket listener (the node's certificate and key)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["http/1.1"])
    return context

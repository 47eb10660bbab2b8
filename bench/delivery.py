"""Delivery benchmark: `herald up` against a raw grpc.aio fan-out baseline, on loopback.

    .venv/bin/python bench/delivery.py [--subscribers 1000] [--seconds 10] [--payload 200]
                                       [--markdown] [--profile-server DIR]

For each system (Herald, then the baseline of bench/baseline.py) it starts the server as a
subprocess on a free 127.0.0.1 port, starts a load generator in a second process (uvloop), and:

1. opens N subscribers (one HTTP/2 connection each, like N devices) and waits for all of them;
2. max throughput: senders push `SendBatch` requests (users round-robin) as fast as the server
   takes them, with at most `--window-per-subscriber` x N notifications sent and not yet received,
   for `--seconds`; it counts deliveries received per second and reads the server's CPU time
   (utime + stime from /proc) before and after the window;
3. latency: sends at half the measured maximum, paced every `--tick-ms`, and computes end-to-end
   latency per notification (the send time travels in `metadata["t"]`, compared in the same
   process clock on receipt): p50 / p95 / p99.

Herald subscribers ack every `--ack-interval` seconds (up_to their highest cursor, +-20 % jitter),
over one AckStream each (or unary Ack calls with `--ack-mode unary`), as an app would. The load
generator shares the machine's two cores with the server: its CPU is reported too. Everything is
bounded: fixed phase durations, timeouts, and every subprocess is killed at the end.

The `herald-pg` target runs `herald up` on the production profile, on a fresh PostgreSQL
database and Redis key prefix made for the run and removed after it (bench/production.py), and
reports PostgreSQL's and Redis's CPU next to the server's. The `protocol-pg` target is the
durable floor: the protocol floor that also commits every SendBatch (a row per notification)
and every ack (an upsert per log) to a fresh database before answering (bench/baseline.py
`--durable-dsn`), what any server making notifications and acks durable spends at the least.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import multiprocessing
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import baseline
import grpc
import production
from grpc import aio
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect as ws_connect
from websockets.typing import Subprotocol

from herald.v1 import ingest_pb2, notification_pb2, stream_pb2
from services import auth
from services.config import AuthSettings
from services.wire import varint

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
HERALD = "herald"
BASELINE = "baseline"
# The baseline plus the I/O Herald's protocol asks of any server (bench/baseline.py --protocol).
PROTOCOL = "protocol"
# Herald on the production profile: a fresh PostgreSQL database and Redis prefix per run.
HERALD_PG = "herald-pg"
# The protocol floor made durable (baseline.py --protocol --durable-dsn), on a fresh database.
PROTOCOL_PG = "protocol-pg"
# Herald's WebSocket endpoint: `herald up`, subscribers over WebSocket, senders over gRPC.
WEBSOCKET = "websocket"
# The peer: python-socketio on uvicorn + uvloop, one room per user (bench/socketio_peer.py).
SOCKETIO = "socketio"
# The protocol floor serving Herald's WebSocket protocol with websockets, and nothing else
# (baseline.py --protocol --ws-port): subscribers over WebSocket, senders over gRPC.
WEBSOCKET_FLOOR = "websocket-floor"
# The same floor on picows (baseline.py --ws-library picows; pip install picows).
WEBSOCKET_FLOOR_PICOWS = "websocket-floor-picows"
# The targets that run `herald up`, and those spoken to as Herald is.
HERALDS = (HERALD, HERALD_PG, WEBSOCKET)
PROTOCOLS = (PROTOCOL, PROTOCOL_PG, WEBSOCKET_FLOOR, WEBSOCKET_FLOOR_PICOWS)
# The targets whose subscribers speak Herald's WebSocket protocol.
HERALD_WEBSOCKETS = (WEBSOCKET, WEBSOCKET_FLOOR, WEBSOCKET_FLOOR_PICOWS)
# The targets that get a fresh database (and Redis prefix) per run.
DURABLE = (HERALD_PG, PROTOCOL_PG)

_SUBSCRIBE = "/herald.v1.StreamService/Subscribe"
_ACK = "/herald.v1.StreamService/Ack"
_ACK_STREAM = "/herald.v1.StreamService/AckStream"
_SEND_BATCH = "/herald.v1.IngestService/SendBatch"
# metadata["t"] as an encoded map entry of Notification field 9, holding 20 decimal digits.
_T_FIELD = b"\x4a\x19\x0a\x01t\x12\x14"
_T_DIGITS = 20


# -- what one load-generator run is told, and what it answers ----------------------------------


@dataclass
class RunSpec:
    target: str
    address: str
    server_pid: int
    subscribers: int
    connections: int
    seconds: float
    warmup: float
    payload: int
    batch: int
    senders: int
    window_per_subscriber: int
    ack_interval: float
    ack_mode: str
    tick_ms: float
    latency_rate: float
    data_dir: str = ""
    profile_cmd: list[str] = field(default_factory=list)
    profile_phase: str = "max"
    quiet_wait: float = 0.0
    # Count PostgreSQL's and Redis's CPU as the system's own, not as other programs'.
    stores: bool = False
    # herald-pg: the run's database, watched during the maximum phase (production.PgWatch).
    pg_dsn: str = ""
    pg_database: str = ""
    # websocket, websocket-floor and socketio: the WebSocket URL subscribers connect to.
    ws_url: str = ""
    # Herald's targets: the port of its /metrics (the latency phase's server-side histograms).
    metrics_port: int = 0


@dataclass
class RunResult:
    target: str
    # Which round of `--repeat` this run belongs to (1-based).
    round: int = 1
    notification_bytes: int = 0
    delivered_per_s: float = 0.0
    messages_per_s: float = 0.0
    server_cpu_pct: float = 0.0
    server_us_per_delivery: float = 0.0
    loadgen_cpu_pct: float = 0.0
    # CPU used on the machine by everything but the server, the load generator and the stores.
    other_cpu_pct: float = 0.0
    # PostgreSQL's processes (all of them) and Redis, in % of one core.
    pg_cpu_pct: float = 0.0
    redis_cpu_pct: float = 0.0
    sent: int = 0
    received: int = 0
    latency_rate: float = 0.0
    latency_received_per_s: float = 0.0
    latency_server_cpu_pct: float = 0.0
    latency_loadgen_cpu_pct: float = 0.0
    latency_other_cpu_pct: float = 0.0
    latency_pg_cpu_pct: float = 0.0
    latency_redis_cpu_pct: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    # Herald's targets, latency phase, from the server's histograms: acceptance (the ingest
    # core's clock) to durable in the log (herald_ingest_latency_seconds, per call) and to the
    # first write on a stream (herald_delivery_latency_seconds, per delivery). What the client's
    # latency adds to the second is the way in (the sender, HTTP/2, the server's queue of new
    # calls) and the way out (the transport, the subscriber).
    server_ingest_p50_ms: float = 0.0
    server_ingest_p99_ms: float = 0.0
    server_delivery_p50_ms: float = 0.0
    server_delivery_p99_ms: float = 0.0
    # How late the load generator's own event loop woke a 2 ms sleeper in the latency phase:
    # the time its loop is busy elsewhere is in every latency it measures, whatever the server.
    loadgen_lag_p50_ms: float = 0.0
    loadgen_lag_p99_ms: float = 0.0
    # The same acceptance to durable in the maximum phase: how long a sender's SendBatch waits
    # in the ingest core, which bounds the senders' rate when the server is not saturated.
    server_max_ingest_p50_ms: float = 0.0
    server_max_ingest_p99_ms: float = 0.0
    # The maximum phase's SendBatch round trips as the senders saw them, and the same calls'
    # durations on the server (its interceptor's, from the call's start to its answer): with a
    # fixed number of senders, delivered/s is at most senders x batch / round trip.
    send_rtt_p50_ms: float = 0.0
    send_rtt_p99_ms: float = 0.0
    server_call_p50_ms: float = 0.0
    server_call_p99_ms: float = 0.0
    redeliveries: int = 0
    ack_errors: int = 0
    ack_error_codes: str = ""
    acks: int = 0
    ack_p50_ms: float = 0.0
    ack_p99_ms: float = 0.0
    server_rss_mib: float = 0.0
    profile: str = ""
    # herald-pg, maximum phase: commits per second, and the mean number of the database's
    # client backends in each state (pg_stat_activity, sampled every 20 ms).
    pg_commits_per_s: float = 0.0
    pg_activity: list[tuple[str, float]] = field(default_factory=list)
    pg_statements: list[tuple[str, float]] = field(default_factory=list)
    pg_cpu_by_type: list[tuple[str, float]] = field(default_factory=list)


# -- fast request building ---------------------------------------------------------------------


class BatchBuilder:
    """Encodes SendBatchRequests by concatenating pre-encoded notifications (one per user).

    Only `metadata["t"]` changes between sends; it has a fixed width, so every notification of a
    user encodes to the same bytes but for those digits.
    """

    def __init__(self, users: list[str], payload: int) -> None:
        self._next = 0
        self._heads = [self._head(user, payload) for user in users]
        # The encoded Notification of the first user, without its SendBatchRequest framing.
        self.notification_bytes = len(self._notification(users[0], payload)) + _T_DIGITS

    @staticmethod
    def _notification(user: str, payload: int) -> bytes:
        """The notification without its digits: they follow as the last bytes."""
        # Payload as Herald counts it: content bytes plus metadata keys and values ("t" + digits).
        body = max(0, payload - 1 - _T_DIGITS - 7 - 3)
        content = notification_pb2.Content(title="bench", body="x" * body)
        prefix = notification_pb2.Notification(
            target=notification_pb2.Target(user_id=user), content=content
        ).SerializeToString()
        return prefix + _T_FIELD

    @classmethod
    def _head(cls, user: str, payload: int) -> bytes:
        notification = cls._notification(user, payload)
        return b"\x0a" + varint(len(notification) + _T_DIGITS) + notification

    def build(self, count: int) -> bytes:
        """`count` notifications for the next users, round-robin, stamped with the time now."""
        stamp = b"%020d" % time.monotonic_ns()
        heads = self._heads
        total = len(heads)
        start = self._next
        self._next = (start + count) % total
        parts = [heads[(start + i) % total] + stamp for i in range(count)]
        return b"".join(parts)


# -- process CPU -------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds spent busy on all cores of the machine, from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- the load generator (runs in its own process) ----------------------------------------------


class LoadGenerator:
    """Subscribers, ackers and senders against one server."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.users = [f"u{i}" for i in range(spec.subscribers)]
        self.builder = BatchBuilder(self.users, spec.payload)
        self.sent = 0
        self.received = 0
        self.messages = 0
        self.redeliveries = 0
        self.ack_errors = 0
        self.ack_error_codes: Counter[str] = Counter()
        self.ack_latencies: list[int] = []
        # SendBatch round trips (ns), while `saturate` runs.
        self.send_rtts: list[int] | None = None
        self.cursors = [0] * spec.subscribers
        self.latencies: list[int] | None = None
        self.latency_from_ns = 0
        self._started = 0
        self._all_started = asyncio.Event()
        self._room = asyncio.Event()
        self._drained: asyncio.Event | None = None
        self._window = max(spec.window_per_subscriber * spec.subscribers, 4 * spec.batch)
        self._tasks: list[asyncio.Task[None]] = []
        self._calls: list[Any] = []
        self._channels: list[aio.Channel] = []
        # The protocol floor is spoken to exactly as Herald is.
        self._herald = spec.target in (*HERALDS, *PROTOCOLS)
        self._tokens: list[str] = []
        self._send_metadata: tuple[tuple[str, str], ...] = ()
        self._sockets: list[Any] = []

    # subscribers

    def _channel(self) -> aio.Channel:
        # A local subchannel pool gives every channel its own TCP connection, like a device.
        channel = aio.insecure_channel(
            self.spec.address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self._channels.append(channel)
        return channel

    def _mint(self) -> None:
        if not self._herald:
            return
        settings = AuthSettings()
        minter = auth.TokenMinter(auth.load_keys(settings, Path(self.spec.data_dir)), settings)
        self._tokens = [minter.mint(u, "bench", [auth.SCOPE_SUBSCRIBE]) for u in self.users]
        service = minter.mint("bench-sender", "bench", [auth.SCOPE_SEND])
        self._send_metadata = (("authorization", f"Bearer {service}"),)

    async def _subscriber(self, index: int, channel: aio.Channel) -> None:
        if self._herald:
            metadata = (("authorization", f"Bearer {self._tokens[index]}"),)
            method = _SUBSCRIBE
        else:
            metadata = ((baseline.USER_KEY, self.users[index]),)
            method = baseline.SUBSCRIBE
        subscribe = channel.unary_stream(
            method,
            request_serializer=stream_pb2.SubscribeRequest.SerializeToString,
            response_deserializer=stream_pb2.SubscribeResponse.FromString,
        )
        call = subscribe(stream_pb2.SubscribeRequest(device="bench"), metadata=metadata)
        self._calls.append(call)
        async for event in call:
            self._on_event(index, event)

    def _on_event(self, index: int, event: stream_pb2.SubscribeResponse) -> None:
        items = event.deliveries.deliveries
        count = len(items)
        if count:
            cursors = self.cursors
            self.received += count
            self.messages += 1
            cursor = items[count - 1].cursor
            if cursor > cursors[index]:
                cursors[index] = cursor
            if self.latencies is not None:
                self._record(items)
            self._progress()
        elif event.HasField("session_started"):
            self._started_one()

    def _progress(self) -> None:
        if not self._room.is_set() and self.sent - self.received <= self._window // 2:
            self._room.set()
        if self._drained is not None and self.received >= self.sent:
            self._drained.set()

    def _started_one(self) -> None:
        self._started += 1
        if self._started == self.spec.subscribers:
            self._all_started.set()

    # -- WebSocket subscribers (Herald's endpoint) --------------------------------------------

    async def _ws_subscriber(self, index: int) -> None:
        """One WebSocket per subscriber: the subscribe frame, then events; acks are frames on
        the same connection every interval (the WebSocket counterpart of one AckStream)."""
        connection = await ws_connect(
            self.spec.ws_url, subprotocols=[Subprotocol("herald.v1")], compression=None,
            max_size=None, open_timeout=60,
        )  # fmt: skip
        self._sockets.append(connection)
        subscribe = stream_pb2.WebSocketSubscribe(
            token=self._tokens[index], request=stream_pb2.SubscribeRequest(device="bench")
        )
        await connection.send(
            stream_pb2.WebSocketClientFrame(subscribe=subscribe).SerializeToString()
        )
        if self.spec.ack_interval > 0:
            self._spawn(self._ws_acker(index, connection))
        decode = stream_pb2.SubscribeResponse.FromString
        async for message in connection:
            self._on_event(index, decode(message))  # type: ignore[arg-type]

    async def _ws_acker(self, index: int, connection: Any) -> None:
        interval = self.spec.ack_interval
        acked = 0
        await asyncio.sleep(random.uniform(0, interval))
        while True:
            cursor = self.cursors[index]
            if cursor > acked:
                ack = stream_pb2.AckRequest(up_to=[stream_pb2.LogCursor(log="user", cursor=cursor)])
                await connection.send(stream_pb2.WebSocketClientFrame(ack=ack).SerializeToString())
                acked = cursor
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))

    # -- socket.io subscribers and senders (the peer) ------------------------------------------

    async def _sio_open(self, auth_user: str) -> Any:
        """An Engine.IO 4 WebSocket, connected to the default namespace with `auth`."""
        url = self.spec.ws_url + "/socket.io/?EIO=4&transport=websocket"
        connection = await ws_connect(url, compression=None, max_size=None, open_timeout=60)
        self._sockets.append(connection)
        opened = await connection.recv()
        assert isinstance(opened, str), opened
        assert opened.startswith("0"), opened
        await connection.send("40" + json.dumps({"user": auth_user}))
        return connection

    async def _sio_subscriber(self, index: int) -> None:
        connection = await self._sio_open(self.users[index])
        loads = json.loads
        async for message in connection:
            assert isinstance(message, str)
            if message.startswith("42"):
                _, notification = loads(message[2:])
                self.received += 1
                self.messages += 1
                if self.latencies is not None:
                    sent_at = int(notification["t"])
                    if sent_at >= self.latency_from_ns:
                        self.latencies.append(time.monotonic_ns() - sent_at)
                self._progress()
            elif message == "2":
                await connection.send("3")  # Engine.IO pong
            elif message.startswith("40"):
                self._started_one()
            elif message.startswith("44"):
                raise RuntimeError(f"socket.io refused the connection: {message}")

    def _sio_sender(self) -> Callable[[int], Awaitable[None]]:
        """`send(count)`: emits `send` with `count` notifications and waits for its ack."""
        state: dict[str, Any] = {"connection": None, "next": 0, "waiting": {}}
        body = "x" * max(0, self.builder.notification_bytes - 60)
        users = self.users
        position = [0]

        async def reader(connection: Any) -> None:
            async for message in connection:
                if message == "2":
                    await connection.send("3")
                elif message.startswith("43"):
                    digits = message[2:].split("[", 1)[0]
                    state["waiting"].pop(int(digits)).set_result(None)

        opening = asyncio.Lock()

        async def send(count: int) -> None:
            async with opening:  # the concurrent senders share one connection
                if state["connection"] is None:
                    connection = await self._sio_open("bench-sender")
                    first = await connection.recv()
                    assert first.startswith("40"), first
                    self._spawn(reader(connection))
                    state["connection"] = connection
            stamp = f"{time.monotonic_ns():020d}"
            start = position[0]
            position[0] = (start + count) % len(users)
            batch = [
                [users[(start + i) % len(users)], {"title": "bench", "body": body, "t": stamp}]
                for i in range(count)
            ]
            ack_id = state["next"]
            state["next"] += 1
            done = asyncio.get_running_loop().create_future()
            state["waiting"][ack_id] = done
            self.sent += count
            await state["connection"].send(f"42{ack_id}" + json.dumps(["send", batch]))
            await asyncio.wait_for(done, 30.0)

        return send

    def _record(self, items: Any) -> None:
        now = time.monotonic_ns()
        since = self.latency_from_ns
        latencies = self.latencies
        assert latencies is not None
        for item in items:
            sent_at = int(item.notification.metadata["t"])
            if sent_at >= since:
                latencies.append(now - sent_at)
            if item.attempt > 1:
                self.redeliveries += 1

    async def _acker(self, index: int, channel: aio.Channel) -> None:
        """Acks `up_to` the subscriber's cursor every interval, timing each round trip."""
        metadata = (("authorization", f"Bearer {self._tokens[index]}"),)
        send = (
            self._stream_ack(channel, metadata)
            if self.spec.ack_mode == "stream"
            else self._unary_ack(channel, metadata)
        )
        interval = self.spec.ack_interval
        acked = 0
        await asyncio.sleep(random.uniform(0, interval))
        while True:
            cursor = self.cursors[index]
            if cursor > acked:
                started = time.monotonic_ns()
                try:
                    await send([stream_pb2.LogCursor(log="user", cursor=cursor)])
                    acked = cursor
                    self.ack_latencies.append(time.monotonic_ns() - started)
                except (aio.AioRpcError, TimeoutError, RuntimeError) as exc:
                    self.ack_errors += 1
                    code = (
                        exc.code().name if isinstance(exc, aio.AioRpcError) else type(exc).__name__
                    )
                    self.ack_error_codes[code] += 1
            # +-20 %, as the client library does: acks that once went out together (after a
            # stall) drift apart instead of arriving as one burst every interval.
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))

    @staticmethod
    def _unary_ack(channel: aio.Channel, metadata: Any) -> Callable[[list[Any]], Awaitable[None]]:
        ack = channel.unary_unary(
            _ACK,
            request_serializer=stream_pb2.AckRequest.SerializeToString,
            response_deserializer=stream_pb2.AckResponse.FromString,
        )

        async def send(up_to: list[Any]) -> None:
            await ack(stream_pb2.AckRequest(up_to=up_to), metadata=metadata, timeout=10.0)

        return send

    @staticmethod
    def _stream_ack(channel: aio.Channel, metadata: Any) -> Callable[[list[Any]], Awaitable[None]]:
        """Acks over one `AckStream` call, as the client library does (reopened on error)."""
        open_stream = channel.stream_stream(
            _ACK_STREAM,
            request_serializer=stream_pb2.AckStreamRequest.SerializeToString,
            response_deserializer=stream_pb2.AckStreamResponse.FromString,
        )
        call: Any = None

        async def send(up_to: list[Any]) -> None:
            nonlocal call
            try:
                if call is None:
                    call = open_stream(metadata=metadata)
                await call.write(stream_pb2.AckStreamRequest(up_to=up_to))
                async with asyncio.timeout(10.0):
                    response = await call.read()
                if response is aio.EOF:
                    raise RuntimeError("the ack stream ended")
            except BaseException:
                if call is not None:
                    call.cancel()
                call = None
                raise

        return send

    async def connect(self) -> None:
        self._mint()
        spec = self.spec
        connections = spec.connections or spec.subscribers
        over_websocket = spec.target in (*HERALD_WEBSOCKETS, SOCKETIO)
        channels = [] if over_websocket else [self._channel() for _ in range(connections)]
        for i in range(spec.subscribers):
            if spec.target in HERALD_WEBSOCKETS:
                self._spawn(self._ws_subscriber(i))
            elif spec.target == SOCKETIO:
                self._spawn(self._sio_subscriber(i))
            else:
                channel = channels[i % connections]
                self._spawn(self._subscriber(i, channel))
                if self._herald and spec.ack_interval > 0:
                    self._spawn(self._acker(i, channel))
            if i % 100 == 99:
                await asyncio.sleep(0.05 if over_websocket else 0.01)  # connections in waves
        try:
            started = asyncio.ensure_future(self._all_started.wait())
            await asyncio.wait(
                [started, *self._tasks],
                timeout=30 + spec.subscribers / 20,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in self._tasks:
                if task.done() and task.exception() is not None:
                    raise RuntimeError(f"a subscriber failed: {task.exception()!r}")
            if not started.done():
                started.cancel()
                raise TimeoutError
        except TimeoutError:
            raise RuntimeError(
                f"only {self._started} of {spec.subscribers} subscribers started"
            ) from None

    def _spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.ensure_future(coro))

    # senders

    def _send_stub(self) -> Callable[..., Any]:
        if self.spec.target == SOCKETIO:
            return self._sio_sender()
        channel = self._channel()
        method = _SEND_BATCH if self._herald else baseline.PUBLISH
        return channel.unary_unary(method)  # bytes in, bytes out: requests are pre-encoded

    async def _send(self, send: Callable[..., Any], count: int) -> None:
        if self.spec.target == SOCKETIO:
            await send(count)
            return
        body = self.builder.build(count)
        self.sent += count
        started = time.perf_counter_ns()
        answer = await send(body, metadata=self._send_metadata, timeout=30.0)
        if self.send_rtts is not None:
            self.send_rtts.append(time.perf_counter_ns() - started)
        if self._herald:
            results = ingest_pb2.SendBatchResponse.FromString(answer).results
            refused = [r.error.message for r in results if r.HasField("error")]
            if refused:
                raise RuntimeError(f"{len(refused)} notifications refused: {refused[0]}")

    async def saturate(self, seconds: float) -> None:
        """Sends as fast as the server answers, keeping the in-flight window bounded."""
        send = self._send_stub()
        deadline = time.monotonic() + seconds

        async def sender() -> None:
            while time.monotonic() < deadline:
                if self.sent - self.received + self.spec.batch > self._window:
                    self._room.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._room.wait(), deadline - time.monotonic())
                    continue
                await self._send(send, self.spec.batch)

        await asyncio.gather(*(sender() for _ in range(self.spec.senders)))

    async def paced(self, rate: float, seconds: float) -> None:
        """Sends `rate` notifications per second, a batch per tick, not waiting for answers."""
        send = self._send_stub()
        tick = self.spec.tick_ms / 1000
        start = time.monotonic()
        sent_here = 0
        pending: set[asyncio.Task[None]] = set()
        while (now := time.monotonic()) < start + seconds:
            due = int(rate * (now - start)) - sent_here
            while due > 0:
                count = min(due, self.spec.batch)
                task = asyncio.ensure_future(self._send(send, count))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent_here += count
                due -= count
            await asyncio.sleep(tick)
        if pending:
            await asyncio.gather(*pending)

    async def drain(self, limit_s: float) -> None:
        """Waits until everything sent was received, at most `limit_s`."""
        if self.received >= self.sent:
            return
        self._drained = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), limit_s)
        self._drained = None

    async def close(self) -> None:
        for socket_ in self._sockets:
            socket_.transport.abort()
        for call in self._calls:
            call.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(c.close(grace=None) for c in self._channels), return_exceptions=True)


Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Values:
    """Every sample of the node's /metrics, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    values: Values = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return values


def metric(values: Values, name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


def histogram_quantile(before: Values, after: Values, name: str, q: float, **labels: str) -> float:
    """The `q` quantile, in seconds, of what histogram `name` observed between two scrapes,
    interpolated within its bucket as Prometheus's histogram_quantile does (0: nothing
    observed; the highest finite bound when the quantile lies above it); `labels` pick one
    series of a labelled histogram."""
    wanted = set(labels.items())
    buckets = sorted(
        (float(dict(pairs)["le"]), value - before.get((sample, pairs), 0.0))
        for (sample, pairs), value in after.items()
        if sample == f"{name}_bucket" and wanted <= set(pairs)
    )
    if not buckets or buckets[-1][1] <= 0:
        return 0.0
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


class Window:
    """CPU used during a measured window: by the server, the load generator, the stores
    (PostgreSQL and Redis) and the rest."""

    def __init__(self, server_pid: int) -> None:
        self._pid = server_pid
        self._server = proc_cpu_seconds(server_pid)
        self._own = time.process_time()
        self._busy = machine_busy_seconds()
        self._stores = production.StoreCpu()
        self._start = time.monotonic()
        # PostgreSQL's and Redis's CPU over the window, in % of one core (set by close).
        self.pg_pct = 0.0
        self.redis_pct = 0.0
        self.elapsed = 0.0

    def pg_by_type(self, watch: production.PgWatch) -> list[tuple[str, float]]:
        """PostgreSQL's CPU over the closed window by process type (% of one core)."""
        return production.pg_cpu_by_type(self._stores, watch, self.elapsed)

    def close(self, pg_pids: set[int] | None = None) -> tuple[float, float, float, float]:
        """Elapsed seconds, then server, load-generator and other CPU in % of one core;
        `pg_pids`: the PostgreSQL processes to count (default: all)."""
        elapsed = time.monotonic() - self._start
        server = proc_cpu_seconds(self._pid) - self._server
        own = time.process_time() - self._own
        stores = self._stores.close(pg_pids)
        self.elapsed = elapsed
        busy = machine_busy_seconds() - self._busy
        other = max(0.0, busy - server - own - stores["pg"] - stores["redis"])
        self.pg_pct, self.redis_pct = 100 * stores["pg"] / elapsed, 100 * stores["redis"] / elapsed
        return elapsed, 100 * server / elapsed, 100 * own / elapsed, 100 * other / elapsed


def percentile(ordered: list[int], q: float) -> float:
    """The q-quantile of sorted nanoseconds, in milliseconds."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


async def run_load(spec: RunSpec) -> RunResult:
    result = RunResult(spec.target)
    load = LoadGenerator(spec)
    result.notification_bytes = load.builder.notification_bytes
    try:
        await load.connect()
        await load.saturate(spec.warmup)
        await load.drain(5.0)
        # The load generator's own collector pauses would show up as server latency.
        gc.collect()
        gc.disable()

        # Phase 1: maximum throughput.
        await asyncio.to_thread(
            wait_for_quiet, spec.quiet_wait, spec.server_pid, stores=spec.stores
        )
        profiler = _profiler(spec, "max")
        watch = None
        if spec.pg_database:
            watch = production.PgWatch(spec.pg_dsn, spec.pg_database)
            await watch.start()
        received, messages = load.received, load.messages
        histograms = (
            await asyncio.to_thread(scrape, spec.metrics_port) if spec.metrics_port else None
        )
        window = Window(spec.server_pid)
        load.send_rtts = []
        await load.saturate(spec.seconds)
        elapsed, result.server_cpu_pct, result.loadgen_cpu_pct, result.other_cpu_pct = window.close(
            watch.pids if watch is not None else None
        )
        rtts, load.send_rtts = sorted(load.send_rtts), None
        if rtts:
            result.send_rtt_p50_ms, result.send_rtt_p99_ms = (
                percentile(rtts, 0.5),
                percentile(rtts, 0.99),
            )
        if histograms is not None:
            after = await asyncio.to_thread(scrape, spec.metrics_port)
            for q in (50, 99):
                seconds = histogram_quantile(
                    histograms, after, "herald_ingest_latency_seconds", q / 100
                )
                setattr(result, f"server_max_ingest_p{q}_ms", seconds * 1000)
                calls = histogram_quantile(
                    histograms,
                    after,
                    "herald_rpc_duration_seconds",
                    q / 100,
                    method="SendBatch",
                    code="OK",
                )
                setattr(result, f"server_call_p{q}_ms", calls * 1000)
        if watch is not None:
            counters = await watch.stop()
            result.pg_commits_per_s = counters.get("xact_commit", 0) / elapsed
            result.pg_activity = watch.busy()
            result.pg_statements = watch.busiest_statements()
            result.pg_cpu_by_type = window.pg_by_type(watch)
        result.pg_cpu_pct, result.redis_cpu_pct = window.pg_pct, window.redis_pct
        delivered = load.received - received
        result.delivered_per_s = delivered / elapsed
        result.messages_per_s = (load.messages - messages) / elapsed
        result.server_us_per_delivery = result.server_cpu_pct * 1e4 / max(result.delivered_per_s, 1)
        await _profiled(profiler, spec)
        await load.drain(10.0)

        # Phase 2: latency at half the maximum (or the rate given).
        gc.collect()
        await asyncio.to_thread(
            wait_for_quiet, spec.quiet_wait, spec.server_pid, stores=spec.stores
        )
        result.latency_rate = spec.latency_rate or result.delivered_per_s / 2
        received = load.received
        load.latencies = []
        load.latency_from_ns = time.monotonic_ns() + int(1e9 * min(1.0, spec.seconds / 5))
        histograms = (
            await asyncio.to_thread(scrape, spec.metrics_port) if spec.metrics_port else None
        )
        window = Window(spec.server_pid)
        profiler = _profiler(spec, "latency")
        lags: list[int] = []
        probe = asyncio.ensure_future(loop_lag(lags))
        await load.paced(result.latency_rate, spec.seconds)
        probe.cancel()
        lags.sort()
        if lags:
            result.loadgen_lag_p50_ms = percentile(lags, 0.50)
            result.loadgen_lag_p99_ms = percentile(lags, 0.99)
        # The PostgreSQL processes the maximum phase found (the pool's connections stay).
        elapsed, result.latency_server_cpu_pct, result.latency_loadgen_cpu_pct, other = (
            window.close(watch.pids if watch is not None else None)
        )
        result.latency_other_cpu_pct = other
        result.latency_pg_cpu_pct, result.latency_redis_cpu_pct = window.pg_pct, window.redis_pct
        await _profiled(profiler, spec)
        result.latency_received_per_s = (load.received - received) / elapsed
        await load.drain(5.0)
        if histograms is not None:
            after = await asyncio.to_thread(scrape, spec.metrics_port)
            for kind in ("ingest", "delivery"):
                for q in (50, 99):
                    seconds = histogram_quantile(
                        histograms, after, f"herald_{kind}_latency_seconds", q / 100
                    )
                    setattr(result, f"server_{kind}_p{q}_ms", seconds * 1000)
        samples = sorted(load.latencies)
        if samples:
            result.p50_ms, result.p95_ms = percentile(samples, 0.50), percentile(samples, 0.95)
            result.p99_ms, result.max_ms = percentile(samples, 0.99), samples[-1] / 1e6
        result.sent, result.received = load.sent, load.received
        result.redeliveries, result.ack_errors = load.redeliveries, load.ack_errors
        acks = sorted(load.ack_latencies)
        if acks:
            result.acks = len(acks)
            result.ack_p50_ms, result.ack_p99_ms = percentile(acks, 0.5), percentile(acks, 0.99)
        result.ack_error_codes = ", ".join(f"{k} {v}" for k, v in load.ack_error_codes.items())
        result.server_rss_mib = proc_rss_mib(spec.server_pid)
    finally:
        gc.enable()
        await load.close()
    return result


async def loop_lag(samples: list[int], interval_s: float = 0.002) -> None:
    """Appends, until cancelled, how late (ns) this process's event loop wakes a sleeper."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        samples.append(int((loop.time() - due) * 1e9))


def _profiler(spec: RunSpec, phase: str) -> subprocess.Popen[bytes] | None:
    if not spec.profile_cmd or spec.profile_phase != phase:
        return None
    return subprocess.Popen(spec.profile_cmd)  # noqa: S603 - our own py-spy command line


async def _profiled(profiler: subprocess.Popen[bytes] | None, spec: RunSpec) -> None:
    if profiler is not None:
        await asyncio.to_thread(profiler.wait, spec.seconds + 30)


def _load_process(spec: RunSpec, answer: Connection) -> None:
    """Entry point of the load-generator process: runs `run_load` on uvloop, answers a dict."""
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is not available on Windows
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            answer.send(("ok", asdict(runner.run(run_load(spec)))))
    except BaseException:
        answer.send(("error", traceback.format_exc()))


# -- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    target: str,
    port: int,
    data_dir: Path,
    log_path: Path,
    *,
    acks: bool,
    extra_env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    wrap: list[str] | None = None,
    listen_limit_s: float = 0.0,
) -> subprocess.Popen[bytes]:
    """`extra_env` (the production profile's DSN, URL and prefix) goes to the server as well;
    `wrap` is a Python command the server's script and arguments are appended to (bench/memory.py
    runs servers under tracemalloc so)."""
    if target in HERALDS:
        herald = Path(sys.executable).with_name("herald")
        command = [str(herald), "up"]
        if not herald.exists():
            command = [sys.executable, "-m", "services", "up"]
    elif target == SOCKETIO:
        peer = Path(__file__).resolve().with_name("socketio_peer.py")
        command = [sys.executable, str(peer), "--port", str(port)]
    else:
        command = [sys.executable, str(Path(baseline.__file__).resolve()), "--port", str(port)]
        if target in PROTOCOLS:
            command.append("--protocol")
        command.extend(extra_args or ())
    if wrap:
        command = [*wrap, *(command[1:] if command[0] == sys.executable else command)]
    env = {
        **os.environ,
        "HERALD_HOST": "127.0.0.1",
        "HERALD_PORT": str(port),
        "HERALD_AUTH_MODE": "dev",
        # The bench measures delivery: its senders and 1,000 subscribers of one tenant would
        # otherwise meet the default rate limits (docs/rate-limits.md).
        "HERALD_RATE_LIMIT_ENABLED": "false",
        "XDG_DATA_HOME": str(data_dir.parent),
        # Only the websocket target's Herald listens for WebSocket (its port in extra_env).
        "HERALD_WS_PORT": "off",
        **(extra_env or {}),
    }
    if not acks:
        # Subscribers that never ack would get everything again after the ack timeout.
        env["HERALD_DELIVERY_ACK_TIMEOUT_S"] = "3600"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    # The production profile connects and migrates the fresh database before it listens.
    limit = listen_limit_s or (60 if extra_env or extra_args else 20)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{target} exited with {process.returncode}: {log_path.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return process
        time.sleep(0.1)
    stop_server(process)
    raise RuntimeError(f"{target} did not listen on port {port} within {limit} s")


def _wait_listening(port: int, process: subprocess.Popen[bytes], limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} within {limit_s:g} s")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def wait_for_quiet(
    limit_s: float, server_pid: int = 0, busy_pct: float = 25.0, *, stores: bool = False
) -> float:
    """Waits (at most `limit_s`) until programs other than ours use at most `busy_pct` of a core.

    With `stores`, PostgreSQL and Redis count as ours (the production profile's server keeps
    them busy). Returns the share measured last: other programs on a 2-core machine change
    every number this benchmark reports.
    """
    deadline = time.monotonic() + limit_s
    while True:
        started = time.monotonic()
        busy0, own0 = machine_busy_seconds(), time.process_time()
        server0 = proc_cpu_seconds(server_pid) if server_pid else 0.0
        store_cpu = production.StoreCpu() if stores else None
        time.sleep(1.0)
        ours = time.process_time() - own0
        if server_pid:
            ours += proc_cpu_seconds(server_pid) - server0
        if store_cpu is not None:
            ours += sum(store_cpu.close().values())
        elapsed = time.monotonic() - started
        busy = 100 * (machine_busy_seconds() - busy0 - ours) / elapsed
        if busy <= busy_pct or time.monotonic() >= deadline:
            return busy
        print(f"  other programs use {busy:.0f}% of a core; waiting ...", flush=True)


def run_target(target: str, args: argparse.Namespace, workdir: Path, rate: float) -> RunResult:
    """Starts the server (on a fresh database and Redis prefix for `herald-pg`, removed
    afterwards), runs the load generator in its own process, stops both."""
    if target not in DURABLE:
        return _run_target(target, args, workdir, rate, None)
    with production.fresh_backends(args.pg_dsn, args.redis_url) as backends:
        print(
            f"  production profile: database {backends.database}, Redis prefix {backends.prefix!r}",
            flush=True,
        )
        return _run_target(target, args, workdir, rate, backends)


def _run_target(
    target: str,
    args: argparse.Namespace,
    workdir: Path,
    rate: float,
    backends: production.Backends | None,
) -> RunResult:
    extra_env = backends.env if backends is not None and target in HERALDS else None
    ws_url = ""
    extra_args = (
        ["--durable-dsn", backends.dsn] if backends is not None and target in PROTOCOLS else []
    )
    if target in HERALD_WEBSOCKETS:
        ws_port = free_port()
        ws_url = f"ws://127.0.0.1:{ws_port}/ws"
        if target == WEBSOCKET:
            extra_env = {**(extra_env or {}), "HERALD_WS_PORT": str(ws_port)}
        else:
            extra_args = [*extra_args, "--ws-port", str(ws_port)]
            if target == WEBSOCKET_FLOOR_PICOWS:
                extra_args += ["--ws-library", "picows"]
    metrics_port = 0
    if target in HERALDS:
        metrics_port = free_port()
        extra_env = {**(extra_env or {}), "HERALD_METRICS_PORT": str(metrics_port)}
    data_dir = workdir / target / "herald"
    data_dir.mkdir(parents=True)
    if target in (*HERALDS, *PROTOCOLS):
        auth.load_keys(AuthSettings(), data_dir)  # creates the dev key the server will read
    port = free_port()
    server = start_server(
        target,
        port,
        data_dir,
        workdir / f"{target}.log",
        acks=args.ack_interval > 0,
        extra_env=extra_env,
        extra_args=extra_args,
    )
    if ws_url:
        _wait_listening(int(ws_url.rsplit(":", 1)[1].split("/", 1)[0]), server)
    context = multiprocessing.get_context("spawn")
    receive, answer = context.Pipe(duplex=False)
    profile_cmd: list[str] = []
    if args.profile_server:
        out = Path(args.profile_server) / f"{target}-{args.subscribers}-{args.profile_phase}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        profile_cmd = [args.py_spy, "record", "--pid", str(server.pid), "--duration"]
        profile_cmd += [str(int(args.seconds)), "--rate", "250", "--format", "raw"]
        profile_cmd += ["--nonblocking", "--output", str(out)]
    spec = RunSpec(
        target=target,
        address=f"127.0.0.1:{port}",
        server_pid=server.pid,
        subscribers=args.subscribers,
        connections=args.connections,
        seconds=args.seconds,
        warmup=args.warmup,
        payload=args.payload,
        batch=args.batch,
        senders=args.senders,
        window_per_subscriber=args.window_per_subscriber,
        ack_interval=args.ack_interval,
        ack_mode=args.ack_mode,
        tick_ms=args.tick_ms,
        latency_rate=rate,
        data_dir=str(data_dir),
        profile_cmd=profile_cmd,
        profile_phase=args.profile_phase,
        metrics_port=metrics_port,
        quiet_wait=args.quiet_wait,
        stores=backends is not None,
        pg_dsn=args.pg_dsn,
        pg_database=backends.database if backends is not None else "",
        ws_url=ws_url or (f"ws://127.0.0.1:{port}" if target == SOCKETIO else ""),
    )
    load = context.Process(target=_load_process, args=(spec, answer), name=f"load-{target}")
    try:
        load.start()
        answer.close()
        budget = 120 + args.subscribers / 10 + 3 * args.seconds + args.warmup + 2 * args.quiet_wait
        if not receive.poll(budget):
            raise RuntimeError(f"the load generator for {target} did not finish in {budget:.0f} s")
        status, value = receive.recv()
        if status != "ok":
            raise RuntimeError(f"the load generator for {target} failed:\n{value}")
        result = RunResult(**value)
        if profile_cmd:
            result.profile = profile_cmd[-1]
        return result
    finally:
        if load.is_alive():
            load.join(timeout=20)
        if load.is_alive():
            load.kill()
            load.join(timeout=5)
        stop_server(server)


# -- profiles ----------------------------------------------------------------------------------


def summarize_profile(path: Path, top: int = 20) -> str:
    """Self and inclusive sample shares per function, from py-spy's raw (collapsed) output.

    Time spent in C (grpc's Cython layer and core, uvloop) counts as self time of the Python
    frame that called it: `DeliveryCore.run` at its `await write(...)` line is the stream write.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[_frame_name(frames[-1], line_too=True)] += count
        for name in {_frame_name(f) for f in frames}:
            inclusive[name] += count
    if not total:
        return "no samples"
    lines = [f"{total} samples; self time (with the line):"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines.append("inclusive, Herald's own functions:")
    ours = [
        (k, v)
        for k, v in inclusive.most_common()
        if k.endswith(_HERALD_FILES) and v < total / 2  # above half: the entry point's frames
    ]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in ours[:top]]
    return "\n".join(lines)


_HERALD_FILES = tuple(f"{p.parent.name}/{p.name})" for p in (ROOT / "services").rglob("*.py"))


def _frame_name(frame: str, *, line_too: bool = False) -> str:
    """'func (path/to/stream/delivery.py:283)' -> 'func (stream/delivery.py)'."""
    name, _, where = frame.partition(" (")
    where, _, line = where.rstrip(")").rpartition(":")
    where = "/".join(where.split("/")[-2:])
    return f"{name} ({where}:{line})" if line_too else f"{name} ({where})"


# -- report ------------------------------------------------------------------------------------


def table(results: list[RunResult]) -> list[str]:
    """With the production target, two more columns: PostgreSQL's and Redis's CPU, and the
    server's plus theirs per delivery (the SQL a durable server has run is CPU it spends)."""
    stores = any(r.target in DURABLE for r in results)
    head = (
        "| system | delivered/s | stream msgs/s | server CPU | server CPU per delivery "
        "| load-gen CPU | other CPU |"
    )
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    if stores:
        head += " PostgreSQL / Redis CPU | server + stores CPU per delivery |"
        rule += "---:|---:|"
    rows = [head + " latency at rate | p50 | p95 | p99 |", rule + "---:|---:|---:|---:|"]
    rounds = max((r.round for r in results), default=1)
    for r in results:
        row = (
            f"| {_label(r, rounds)} | {r.delivered_per_s:,.0f} | {r.messages_per_s:,.0f} "
            f"| {r.server_cpu_pct:.0f}% | {r.server_us_per_delivery:.1f} µs "
            f"| {r.loadgen_cpu_pct:.0f}% | {r.other_cpu_pct:.0f}% |"
        )
        if stores:
            with_stores = (
                (r.server_cpu_pct + r.pg_cpu_pct + r.redis_cpu_pct)
                * 1e4
                / max(r.delivered_per_s, 1)
            )
            row += f" {r.pg_cpu_pct:.0f}% / {r.redis_cpu_pct:.0f}% | {with_stores:.1f} µs |"
        rows.append(
            row + f" {r.latency_rate:,.0f}/s | {r.p50_ms:.1f} ms | {r.p95_ms:.1f} ms "
            f"| {r.p99_ms:.1f} ms |"
        )
    return rows


def _label(r: RunResult, rounds: int) -> str:
    return f"{r.target} #{r.round}" if rounds > 1 else r.target


def _spread(values: list[float], fmt: str, unit: str = "") -> str:
    """The median, and with several rounds every value it is the median of."""
    median = statistics.median(values)
    if len(values) == 1:
        return f"**{median:{fmt}}{unit}**"
    each = ", ".join(f"{v:{fmt}}" for v in values)
    return f"**{median:{fmt}}{unit}** (median of {each}{unit})"


def verdicts(results: list[RunResult]) -> list[str]:
    """Targets judged on the median over rounds (`--repeat`): one run on a shared 2-core machine
    moves by 10% or more."""
    rounds = max((r.round for r in results), default=1)
    by = {(r.target, r.round): r for r in results}
    lines = []

    def ratios(over: str, under: str) -> list[float]:
        return [
            by[(over, n)].delivered_per_s / by[(under, n)].delivered_per_s
            for n in range(1, rounds + 1)
            if (over, n) in by and (under, n) in by and by[(under, n)].delivered_per_s
        ]

    if herald := ratios(HERALD, BASELINE):
        met = "met" if statistics.median(herald) >= 0.8 else "NOT met"
        lines.append(
            f"- Herald / baseline delivered/s: {_spread(herald, '.2f')} (target >= 0.8: {met})"
        )
    if floor := ratios(PROTOCOL, BASELINE):
        lines.append(
            f"- protocol floor / baseline delivered/s: {_spread(floor, '.2f')} "
            "(the protocol's own I/O, with no Herald logic)"
        )
    if within := ratios(HERALD, PROTOCOL):
        lines.append(f"- Herald / protocol floor delivered/s: {_spread(within, '.2f')}")
    if durable := ratios(HERALD_PG, HERALD):
        met = "met" if statistics.median(durable) >= 0.7 else "NOT met"
        lines.append(
            "- production (PostgreSQL + Redis) / memory delivered/s: "
            f"{_spread(durable, '.2f')} (target >= 0.7: {met})"
        )
    if pg_floor := ratios(HERALD_PG, PROTOCOL):
        lines.append(f"- production / protocol floor delivered/s: {_spread(pg_floor, '.2f')}")
    if durable_floor := ratios(PROTOCOL_PG, PROTOCOL):
        lines.append(
            f"- durable floor / protocol floor delivered/s: {_spread(durable_floor, '.2f')} "
            "(what making notifications and acks durable costs any server here)"
        )
    if pg_within := ratios(HERALD_PG, PROTOCOL_PG):
        lines.append(f"- production / durable floor delivered/s: {_spread(pg_within, '.2f')}")
    if over_sio := ratios(WEBSOCKET, SOCKETIO):
        met = "met" if statistics.median(over_sio) >= 2 else "NOT met"
        lines.append(
            f"- Herald WebSocket / python-socketio delivered/s: {_spread(over_sio, '.2f')} "
            f"(target >= 2: {met})"
        )
    if over_grpc := ratios(WEBSOCKET, HERALD):
        lines.append(f"- Herald WebSocket / Herald gRPC delivered/s: {_spread(over_grpc, '.2f')}")
    if floor_sio := ratios(WEBSOCKET_FLOOR, SOCKETIO):
        lines.append(
            f"- WebSocket floor / python-socketio delivered/s: {_spread(floor_sio, '.2f')} "
            "(the most any server on this library reaches at this load shape)"
        )
    if ws_within := ratios(WEBSOCKET, WEBSOCKET_FLOOR):
        lines.append(
            f"- Herald WebSocket / WebSocket floor delivered/s: {_spread(ws_within, '.2f')}"
        )
    if websockets := [r.server_us_per_delivery for r in results if r.target == WEBSOCKET]:
        met = "met" if statistics.median(websockets) <= 50 else "NOT met"
        lines.append(
            f"- Herald WebSocket server CPU per delivery: {_spread(websockets, '.1f', ' µs')} "
            f"(target <= 50 µs: {met})"
        )
    for target, library in ((WEBSOCKET_FLOOR, "websockets"), (WEBSOCKET_FLOOR_PICOWS, "picows")):
        if ws_floor := [r.server_us_per_delivery for r in results if r.target == target]:
            lines.append(
                f"- WebSocket floor ({library}) server CPU per delivery: "
                f"{_spread(ws_floor, '.1f', ' µs')} "
                f"(gRPC SendBatch in, one {library} frame out per delivery, acks read)"
            )
    disturbed = [
        _label(r, rounds) for r in results if max(r.other_cpu_pct, r.latency_other_cpu_pct) > 25
    ]
    if disturbed:
        lines.append(
            f"- WARNING: other programs used over 25% of a core while measuring {disturbed}: "
            "those numbers are low; run again on a quiet machine"
        )
    for target, name, limit in ((HERALD, "Herald", 50), (HERALD_PG, "production", 100)):
        heralds = [r for r in results if r.target == target]
        if not heralds:
            continue
        p99s = [r.p99_ms for r in heralds]
        rate = statistics.median(r.latency_rate for r in heralds)
        met = "met" if statistics.median(p99s) < limit else "NOT met"
        lines.append(
            f"- {name} p99 at half its maximum (~{rate:,.0f}/s): {_spread(p99s, '.1f', ' ms')} "
            f"(target < {limit} ms: {met})"
        )
    lines += [_details(r, rounds) for r in results]
    return lines


def _details(r: RunResult, rounds: int = 1) -> str:
    per_delivery = r.latency_server_cpu_pct * 1e4 / max(r.latency_received_per_s, 1)
    stores = ""
    if r.target in DURABLE:
        stores = (
            f", PostgreSQL CPU {r.latency_pg_cpu_pct:.0f}%, Redis CPU "
            f"{r.latency_redis_cpu_pct:.0f}%"
        )
    pg = ""
    if r.pg_activity or r.pg_commits_per_s:
        busy = ", ".join(f"{state} {n:.2f}" for state, n in r.pg_activity[:6])
        statements = "; ".join(f"{n:.2f} {q!r}" for q, n in r.pg_statements[:5])
        kinds = ", ".join(f"{kind} {pct:.0f}%" for kind, pct in r.pg_cpu_by_type[:4])
        pg = (
            f"; maximum phase: {r.pg_commits_per_s:,.0f} PostgreSQL commits/s, its CPU by "
            f"process {kinds}; its backends (mean number by state) {busy}; by statement: "
            f"{statements}"
        )
    acks = "no acks"
    if r.acks or r.ack_errors:
        acks = f"{r.acks:,} acks (round trip p50 {r.ack_p50_ms:.0f} ms, p99 {r.ack_p99_ms:.0f} ms)"
        if r.ack_errors:
            acks += f", {r.ack_errors} failed ({r.ack_error_codes})"
    server = ""
    if r.server_max_ingest_p99_ms:
        server = (
            f"; maximum phase, acceptance to durable on the server p50 "
            f"{r.server_max_ingest_p50_ms:.1f} / p99 {r.server_max_ingest_p99_ms:.1f} ms"
        )
    if r.send_rtt_p50_ms:
        server += (
            f"; maximum phase, SendBatch round trip p50 {r.send_rtt_p50_ms:.1f} / p99 "
            f"{r.send_rtt_p99_ms:.1f} ms (the server's call p50 {r.server_call_p50_ms:.1f} / "
            f"p99 {r.server_call_p99_ms:.1f} ms)"
        )
    if r.server_delivery_p99_ms:
        server += (
            f"; on the server, acceptance to durable p50 {r.server_ingest_p50_ms:.1f} / p99 "
            f"{r.server_ingest_p99_ms:.1f} ms, to the stream write p50 "
            f"{r.server_delivery_p50_ms:.1f} / p99 {r.server_delivery_p99_ms:.1f} ms"
        )
    return (
        f"- {_label(r, rounds)}: latency phase {r.latency_received_per_s:,.0f}/s received, "
        "server CPU "
        f"{r.latency_server_cpu_pct:.0f}% ({per_delivery:.0f} µs per delivery), load-gen CPU "
        f"{r.latency_loadgen_cpu_pct:.0f}%, other CPU {r.latency_other_cpu_pct:.0f}%"
        f"{stores}, max "
        f"{r.max_ms:.1f} ms, the load generator's loop lag p50 {r.loadgen_lag_p50_ms:.1f} / "
        f"p99 {r.loadgen_lag_p99_ms:.1f} ms{server}; {acks}; {r.sent:,} sent, "
        f"{r.received:,} received in all "
        f"({r.received - r.sent:,} duplicates, {r.redeliveries} of them in the latency phase); "
        f"notification {r.notification_bytes} B as sent; server RSS {r.server_rss_mib:.0f} MiB "
        f"at the end{pg}"
    )


def environment() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import uvloop

        loop = f"uvloop {uvloop.__version__}"
    except ImportError:  # pragma: no cover
        loop = "asyncio"
    return (
        f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, grpcio {grpc.__version__}, {loop}"
    )


def code_version(label: str) -> str:
    """Which Herald was measured: the label given, or the git state of the imported `services`."""
    if label:
        return label
    checkout = Path(auth.__file__).resolve().parents[1]
    try:
        described = subprocess.run(  # noqa: S603 - fixed git command line
            ["git", "-C", str(checkout), "describe", "--always", "--dirty"],  # noqa: S607
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"services from {checkout}"
    return f"commit {described}"


def command_line() -> str:
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        python = python.relative_to(Path.cwd())
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(Path.cwd())
    words = [str(python), str(script), *sys.argv[1:]]
    if os.environ.get("PYTHONPATH"):  # another checkout was measured (see bench/README.md)
        words.insert(0, f"PYTHONPATH={os.environ['PYTHONPATH']}")
    return shlex.join(words)


def markdown_section(args: argparse.Namespace, results: list[RunResult]) -> str:
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    acks = "off"
    if args.ack_interval > 0:
        via = "one AckStream each" if args.ack_mode == "stream" else "Ack calls"
        acks = f"every {args.ack_interval:g} s ({via})"
    production = ", memory and production profiles" if HERALD_PG in args.targets else ""
    if {*HERALD_WEBSOCKETS, SOCKETIO} & set(args.targets):
        production += ", WebSocket and python-socketio"
    lines = [
        _marker(args, "start"),
        f"### {args.subscribers:,} subscribers, acks {acks}{production}",
        "",
        f"Command: `{command_line()}`  ",
        f"Run: {today}; {environment()}; Herald {code_version(args.code_label)}.  ",
        f"Settings: {args.seconds:g} s per phase, payload {args.payload} B, batches of "
        f"{args.batch}, {args.senders} concurrent senders, in-flight window "
        f"{args.window_per_subscriber} per subscriber, acks {acks}, "
        f"pacing tick {args.tick_ms:g} ms, {args.repeat} round(s).",
        "",
        *table(results),
        "",
        *verdicts(results),
        _marker(args, "end"),
    ]
    return "\n".join(lines)


def _marker(args: argparse.Namespace, edge: str) -> str:
    return (
        f"<!-- bench:delivery subscribers={args.subscribers} "
        f"ack-interval={args.ack_interval:g}{_mode_tag(args)} {edge} -->"
    )


def _mode_tag(args: argparse.Namespace) -> str:
    """What else names the section: unary acks, the production target (its runs do not replace
    the memory profile's section)."""
    tag = " ack-mode=unary" if args.ack_interval > 0 and args.ack_mode == "unary" else ""
    if {*HERALD_WEBSOCKETS, SOCKETIO} & set(args.targets):
        tag += " websocket"
    return tag + (" profile=production" if HERALD_PG in args.targets else "")


def write_markdown(args: argparse.Namespace, results: list[RunResult]) -> None:
    section = markdown_section(args, results)
    text = DOC.read_text() if DOC.exists() else "# Performance\n\n## Results\n"
    start, end = _marker(args, "start"), _marker(args, "end")
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")


# -- entry point -------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before phase 1")
    parser.add_argument("--payload", type=int, default=200, help="content + metadata bytes")
    parser.add_argument("--batch", type=int, default=250, help="notifications per SendBatch")
    parser.add_argument("--senders", type=int, default=4, help="concurrent SendBatch calls")
    parser.add_argument(
        "--window-per-subscriber",
        type=int,
        default=32,
        help="notifications sent and not yet received, per subscriber, in phase 1",
    )
    parser.add_argument(
        "--connections", type=int, default=0, help="HTTP/2 connections (0: one per subscriber)"
    )
    parser.add_argument(
        "--ack-interval",
        type=float,
        default=5.0,
        help="seconds between a subscriber's acks (5: the client library's default); 0: no acks",
    )
    parser.add_argument(
        "--ack-mode",
        choices=["stream", "unary"],
        default="stream",
        help="acks over one AckStream per subscriber (the client library's way) or Ack calls",
    )
    parser.add_argument("--tick-ms", type=float, default=5.0, help="pacing tick in phase 2")
    parser.add_argument(
        "--latency-rate", type=float, default=0.0, help="phase 2 rate (0: half the measured max)"
    )
    parser.add_argument(
        "--targets",
        default=f"{HERALD},{BASELINE}",
        help="comma-separated: herald, baseline, websocket (herald up, subscribers over its "
        "WebSocket endpoint), socketio (python-socketio on uvicorn, bench/socketio_peer.py), "
        "websocket-floor (the protocol floor serving Herald's WebSocket protocol with "
        "websockets and nothing else), websocket-floor-picows (the same on picows), "
        "protocol (the baseline plus the I/O of "
        "Herald's protocol: per-notification answers, Herald's framing, AckStream), herald-pg "
        "(herald up on the production profile: a fresh PostgreSQL database and Redis prefix), "
        "protocol-pg (the durable floor: the protocol floor committing each SendBatch and "
        "each ack to a fresh database)",
    )
    parser.add_argument(
        "--pg-dsn",
        default=production.DEFAULT_PG_DSN,
        help="herald-pg: a PostgreSQL server's DSN to make (and drop) the run's database on",
    )
    parser.add_argument(
        "--redis-url",
        default=production.DEFAULT_REDIS_URL,
        help="herald-pg: the Redis (its keys go under a fresh prefix, deleted afterwards)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="seconds to wait for other programs to go idle before each system (0: do not)",
    )
    parser.add_argument(
        "--markdown", action="store_true", help=f"write the results into {DOC.relative_to(ROOT)}"
    )
    parser.add_argument(
        "--profile-server",
        metavar="DIR",
        help="record each server with py-spy into DIR (its sampling skews the numbers)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of all targets, alternating; the verdicts use the median over rounds",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    parser.add_argument(
        "--code-label", default="", help="what code is measured (default: git describe)"
    )
    parser.add_argument(
        "--profile-phase", choices=["max", "latency"], default="max", help="the phase to profile"
    )
    parser.add_argument(
        "--py-spy", default=shutil.which("py-spy") or "py-spy", help="the py-spy executable"
    )
    args = parser.parse_args()
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - {*HERALDS, BASELINE, *PROTOCOLS, SOCKETIO}
    if unknown:
        parser.error(f"unknown targets: {sorted(unknown)}")
    return args


def main() -> int:
    args = parse_args()
    print(f"{environment()}; Herald {code_version(args.code_label)}\n{command_line()}", flush=True)
    results: list[RunResult] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="herald-bench-") as tmp:
        # Rounds alternate the systems, so a slow spell of the machine hits both.
        for round_ in range(1, args.repeat + 1):
            for target in args.targets:
                busy = wait_for_quiet(args.quiet_wait)
                which = f" (round {round_} of {args.repeat})" if args.repeat > 1 else ""
                print(
                    f"running {target}{which} with {args.subscribers} subscribers "
                    f"(other programs use {busy:.0f}% of a core) ...",
                    flush=True,
                )
                try:
                    workdir = Path(tmp) / f"round-{round_}"
                    workdir.mkdir(exist_ok=True)
                    result = run_target(target, args, workdir, args.latency_rate)
                except RuntimeError as exc:
                    print(f"{target} failed: {exc}", file=sys.stderr)
                    failed = True
                    continue
                result.round = round_
                results.append(result)
    print()
    print("\n".join(table(results)))
    print("\n".join(verdicts(results)))
    for r in results:
        if r.profile:
            print(f"\nprofile of {r.target}, {args.profile_phase} phase ({r.profile}):")
            print(summarize_profile(Path(r.profile)))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    if args.markdown and not failed:
        write_markdown(args, results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

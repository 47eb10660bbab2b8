"""Stalled streams: does a burst to subscribers that stopped reading stay within the byte bounds?

    .venv/bin/python bench/stalled.py [--stalled 500] [--per-user 200] [--payload 3000]
                                      [--node-budget-mib 64]

Starts `herald up` (memory profile) as bench/delivery.py does, in its own process, with /metrics
on a free port and `HERALD_DELIVERY_NODE_BUFFER_BYTES` set to `--node-budget-mib` (the
per-session bound stays at its default, 1 MiB, so 500 stalled sessions could ask for twice the
node's bound). Then, with acks off (ack timeout 1 h, so nothing is redelivered):

1. opens `--stalled` Subscribe streams, one HTTP/2 connection each, reads each one's
   SessionStarted and then stops reading: the client's HTTP/2 windows fill, then the server's
   socket, then its writes stall;
2. control burst: sends `--per-user` notifications of `--payload` bytes to each of as many users
   who have no stream (their offline logs), and takes the RSS growth: what the burst costs in the
   node's logs alone;
3. stalled burst: the same to the stalled users, sampling the server's RSS and, from /metrics,
   `herald_buffered_bytes` and `herald_slow_consumers_total` every `--sample-s`, until every
   stalled session was closed (after `HERALD_DELIVERY_WRITE_TIMEOUT_S`, 10 s) and the RSS settled;
4. reads each stalled call to its end (its status should be ABORTED, slow consumer), then
   resubscribes every stalled user without cursors and checks that every notification accepted
   for it arrives (the log kept them; nothing accepted is lost).

Verdicts: the stalled burst's RSS growth beyond the control burst's stays within the node's byte
budget; `herald_buffered_bytes{kind="used"}` never exceeds the limit; every stalled session was
closed as a slow consumer; every accepted notification was delivered after the reconnect.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
from delivery import (
    HERALD,
    BatchBuilder,
    environment,
    free_port,
    metric,
    proc_rss_mib,
    scrape,
    start_server,
    stop_server,
)
from grpc import aio
from memory import _settled_rss

from herald.v1 import ingest_pb2, stream_pb2
from services import auth
from services.config import AuthSettings
from services.stream.session import ENTRY_OVERHEAD

_SUBSCRIBE = "/herald.v1.StreamService/Subscribe"
_SEND_BATCH = "/herald.v1.IngestService/SendBatch"
_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
# A client that does not read grants no more than its initial HTTP/2 window: without BDP
# probing, grpc core's window grows only as the application reads.
_STALLED_OPTIONS = [*_OPTIONS, ("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65_535)]


@dataclass
class Sample:
    at_s: float
    rss_mib: float
    buffered_bytes: int
    slow_consumers: int


class Node:
    """The server under test and what the bench says to it."""

    def __init__(self, address: str, pid: int, metrics_port: int, minter: auth.TokenMinter) -> None:
        self.address = address
        self.pid = pid
        self.metrics_port = metrics_port
        self.minter = minter
        self.sender = aio.insecure_channel(address, options=_OPTIONS)
        token = minter.mint("bench-sender", "bench", [auth.SCOPE_SEND])
        self.send_metadata = (("authorization", f"Bearer {token}"),)

    def token(self, user: str) -> str:
        return self.minter.mint(user, "bench", [auth.SCOPE_SUBSCRIBE])

    async def burst(
        self, users: list[str], per_user: int, payload: int, batch: int, grouped: bool = False
    ) -> dict[str, set[str]]:
        """`per_user` notifications to each user, 4 SendBatch calls at a time: round-robin over
        the users, or (`grouped`) user after user, each SendBatch to one user; returns the ids
        accepted, by user."""
        builders = {u: BatchBuilder([u], payload) for u in users} if grouped else {}
        builder = BatchBuilder(users, payload)
        send = self.sender.unary_unary(_SEND_BATCH)
        accepted: dict[str, set[str]] = {user: set() for user in users}
        total = len(users) * per_user
        position = 0
        lock = asyncio.Lock()

        def chunk(start: int) -> tuple[int, bytes, list[str]]:
            if grouped:
                user = users[start // per_user]
                count = min(batch, per_user - start % per_user)
                return count, builders[user].build(count), [user] * count
            count = min(batch, total - start)
            to = [users[(start + i) % len(users)] for i in range(count)]
            return count, builder.build(count), to

        async def sender() -> None:
            nonlocal position
            while True:
                async with lock:
                    if position >= total:
                        return
                    count, body, to = chunk(position)
                    position += count
                answer = await send(body, metadata=self.send_metadata, timeout=60.0)
                results = ingest_pb2.SendBatchResponse.FromString(answer).results
                for user, result in zip(to, results, strict=True):
                    if result.HasField("error"):
                        raise RuntimeError(f"refused: {result.error.message}")
                    accepted[user].add(result.accepted.notification_id)

        await asyncio.gather(*(sender() for _ in range(4)))
        return accepted

    def sample(self, started: float) -> Sample:
        values = scrape(self.metrics_port)
        return Sample(
            at_s=time.monotonic() - started,
            rss_mib=proc_rss_mib(self.pid),
            buffered_bytes=int(metric(values, "herald_buffered_bytes", kind="used")),
            slow_consumers=int(metric(values, "herald_slow_consumers_total")),
        )


async def open_stalled(
    node: Node, users: list[str]
) -> tuple[
    list[aio.Channel],
    list[aio.UnaryStreamCall[stream_pb2.SubscribeRequest, stream_pb2.SubscribeResponse]],
]:
    """One connection and one Subscribe per user, each read up to its SessionStarted only."""
    channels = [aio.insecure_channel(node.address, options=_STALLED_OPTIONS) for _ in users]
    calls = []
    for channel, user in zip(channels, users, strict=True):
        subscribe = channel.unary_stream(
            _SUBSCRIBE,
            request_serializer=stream_pb2.SubscribeRequest.SerializeToString,
            response_deserializer=stream_pb2.SubscribeResponse.FromString,
        )
        calls.append(
            subscribe(
                stream_pb2.SubscribeRequest(device="stalled"),
                metadata=(("authorization", f"Bearer {node.token(user)}"),),
            )
        )
    for start in range(0, len(calls), 100):
        events = await asyncio.gather(*(call.read() for call in calls[start : start + 100]))
        for event in events:
            assert event.WhichOneof("event") == "session_started", event
    return channels, calls


async def read_to_end(
    call: aio.UnaryStreamCall[stream_pb2.SubscribeRequest, stream_pb2.SubscribeResponse],
) -> tuple[int, str]:
    """Deliveries the stalled call still had, and the status it ended with."""
    received = 0
    try:
        async with asyncio.timeout(30):
            while (event := await call.read()) is not aio.EOF:
                received += len(event.deliveries.deliveries)
    except aio.AioRpcError as error:
        return received, error.code().name
    except TimeoutError:
        call.cancel()
        return received, "still open"
    return received, "OK"


async def resume(node: Node, user: str, expected: set[str]) -> set[str]:
    """Subscribes again without cursors (everything unacked replays) until every expected id
    arrived, or 60 s passed; returns the ids still missing."""
    missing = set(expected)
    async with aio.insecure_channel(node.address, options=_OPTIONS) as channel:
        subscribe = channel.unary_stream(
            _SUBSCRIBE,
            request_serializer=stream_pb2.SubscribeRequest.SerializeToString,
            response_deserializer=stream_pb2.SubscribeResponse.FromString,
        )
        call = subscribe(
            stream_pb2.SubscribeRequest(device="resumed"),
            metadata=(("authorization", f"Bearer {node.token(user)}"),),
        )
        try:
            async with asyncio.timeout(60):
                async for event in call:
                    for delivery in event.deliveries.deliveries:
                        missing.discard(delivery.notification.id)
                    if not missing:
                        break
        except TimeoutError:
            pass
        call.cancel()
    return missing


async def measure(args: argparse.Namespace) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="herald-stalled-") as tmp:
        data_dir = Path(tmp) / "herald"
        data_dir.mkdir()
        port, metrics_port = free_port(), free_port()
        log_path = Path(tmp) / "server.log"
        budget = args.node_budget_mib * 1024 * 1024
        server = start_server(
            HERALD,
            port,
            data_dir,
            log_path,
            acks=False,
            extra_env={
                "HERALD_METRICS_PORT": str(metrics_port),
                "HERALD_DELIVERY_NODE_BUFFER_BYTES": str(budget),
            },
        )
        try:
            settings = AuthSettings()
            minter = auth.TokenMinter(auth.load_keys(settings, data_dir), settings)
            node = Node(f"127.0.0.1:{port}", server.pid, metrics_port, minter)
            return await _measure(node, args, budget)
        except BaseException:
            print(log_path.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            stop_server(server)


async def _measure(node: Node, args: argparse.Namespace, budget: int) -> list[str]:
    stalled_users = [f"stalled{i}" for i in range(args.stalled)]
    offline_users = [f"offline{i}" for i in range(args.stalled)]
    # A small burst first: imports, the first sends and the channel machinery are paid once.
    await node.burst(["warm"], 10, args.payload, args.batch)
    idle = await _settled_rss(node.pid)
    channels, calls = await open_stalled(node, stalled_users)
    with_streams = await _settled_rss(node.pid)
    print(
        f"RSS idle {idle:.1f} MiB, with {args.stalled} stalled streams {with_streams:.1f} MiB",
        flush=True,
    )

    sent_at = time.monotonic()
    await node.burst(offline_users, args.per_user, args.payload, args.batch, grouped=args.grouped)
    control_s = time.monotonic() - sent_at
    after_control = await _settled_rss(node.pid)
    control = after_control - with_streams
    total = args.stalled * args.per_user
    print(
        f"control burst: {total:,} notifications to offline users in {control_s:.1f} s, "
        f"RSS {after_control:.1f} MiB (+{control:.1f} MiB)",
        flush=True,
    )

    started = time.monotonic()
    samples = [node.sample(started)]
    stop = threading.Event()
    all_closed = threading.Event()

    def sampler() -> None:
        # A thread of its own: the bench's event loop is busy sending while the peak happens.
        while not stop.wait(args.sample_s):
            s = node.sample(started)
            samples.append(s)
            print(
                f"  {s.at_s:5.1f} s  RSS {s.rss_mib:7.1f} MiB  buffered "
                f"{s.buffered_bytes / 2**20:6.1f} MiB  slow consumers {s.slow_consumers}",
                flush=True,
            )
            if s.slow_consumers >= args.stalled:
                all_closed.set()

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    accepted = await node.burst(
        stalled_users, args.per_user, args.payload, args.batch, grouped=args.grouped
    )
    burst_s = time.monotonic() - started
    # Closed after the write timeout (10 s); the verdict says if some never were.
    await asyncio.to_thread(all_closed.wait, 120)
    after_stalled = await _settled_rss(node.pid)
    stop.set()
    thread.join()

    ended = await asyncio.gather(*(read_to_end(call) for call in calls))
    codes = Counter(code for _, code in ended)
    received_before = sum(received for received, _ in ended)
    for channel in channels:
        await channel.close()
    resumed_at = time.monotonic()
    missing: list[set[str]] = []
    for start in range(0, len(stalled_users), 50):
        missing.extend(
            await asyncio.gather(
                *(resume(node, u, accepted[u]) for u in stalled_users[start : start + 50])
            )
        )
    resume_s = time.monotonic() - resumed_at
    lost = sum(len(m) for m in missing)
    peak = max(s.rss_mib for s in samples)
    peak_buffered = max(s.buffered_bytes for s in samples)
    # Beyond the limit, each session may hold two entries' worth: a session with nothing waiting
    # may always take one, and its write in flight (one entry, when the node is full) counts
    # twice, with the transport's copy (docs/delivery.md, 12).
    allowed = budget + args.stalled * 2 * (args.payload + 100 + ENTRY_OVERHEAD)
    beyond = peak - after_control - control
    slow = samples[-1].slow_consumers
    budget_mib = budget / 2**20
    order = "user after user" if args.grouped else "round-robin"
    return [
        f"- {args.stalled} stalled streams (one connection each), {args.per_user} notifications "
        f"of {args.payload} bytes to each, {order} ({total:,}, "
        f"{total * args.payload / 2**20:.0f} MiB of payload); node budget {budget_mib:.0f} MiB, "
        "session budget 1 MiB",
        f"- RSS: idle {idle:.1f} MiB, with the streams {with_streams:.1f} MiB, after the control "
        f"burst to offline users {after_control:.1f} MiB (+{control:.1f} MiB: the logs), peak "
        f"during the stalled burst {peak:.1f} MiB, settled after it {after_stalled:.1f} MiB; "
        f"the burst took {burst_s:.1f} s",
        f"- stalled burst's RSS beyond the logs' (peak - after control - control growth): "
        f"**{beyond:+.1f} MiB** (target <= node budget {budget_mib:.0f} MiB: "
        f"{'met' if beyond <= budget_mib else 'NOT met'})",
        f'- `herald_buffered_bytes{{kind="used"}}` peak **{peak_buffered / 2**20:.2f} MiB** '
        f"(limit {budget_mib:.0f} MiB plus two entries per stalled session, "
        f"{allowed / 2**20:.2f} MiB: {'met' if peak_buffered <= allowed else 'NOT met'})",
        f"- closed as slow consumers: **{slow} of {args.stalled}** "
        f"(`herald_slow_consumers_total`); the stalled calls ended with "
        f"{dict(codes)} after {received_before:,} deliveries had reached the clients",
        f"- after reconnecting without cursors: **{lost} of {total:,} accepted notifications "
        f"missing** (resumed in {resume_s:.1f} s; target 0: {'met' if lost == 0 else 'NOT met'})",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stalled", type=int, default=500)
    parser.add_argument("--per-user", type=int, default=200)
    parser.add_argument("--payload", type=int, default=3000, help="content + metadata bytes")
    parser.add_argument("--batch", type=int, default=100, help="notifications per SendBatch")
    parser.add_argument("--node-budget-mib", type=int, default=64)
    parser.add_argument("--sample-s", type=float, default=1.0)
    parser.add_argument(
        "--grouped",
        action="store_true",
        help="send user after user (each SendBatch to one user): full batches in flight",
    )
    args = parser.parse_args()
    print(" ".join([Path(sys.executable).name, *sys.argv]))
    print(environment())
    for line in asyncio.run(measure(args)):
        print(line)


if __name__ == "__main__":
    grpc.aio.init_grpc_aio()
    main()

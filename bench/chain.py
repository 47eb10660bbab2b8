"""Transformer-chain benchmark: server CPU per delivery, plain against a negotiated variant.

    .venv/bin/python bench/chain.py [--subscribers 1000] [--accept zstd,signed] [--rate 8]
                                    [--seconds 10] [--rounds 2] [--payload 400]

One `herald up` (dev mode, rate limits off, a signing key ring of one key, acks never due) runs
as a subprocess on a free loopback port. This process is the load generator (uvloop). Each round
measures both variants against the same server, one after the other: N subscribers (one HTTP/2
connection each) open with `accept_encodings` empty (plain) or `--accept`, then a sender sends
`--rate` broadcasts per second for `--seconds`, each reaching all N; the window ends when every
delivery arrived. Server CPU (utime + stime from /proc) over the window, divided by the
deliveries received, is the cost per delivery. Every round uses a tenant of its own, so no
session replays the previous rounds' broadcasts. The subscribers do not ack (the same for both
variants; the ack path does not go through the chain). The first delivery of each transformed
round is opened and verified with the keys from GetSigningKeys, so the run measures real,
verifiable deliveries.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from delivery import (
    HERALD,
    free_port,
    machine_busy_seconds,
    proc_cpu_seconds,
    start_server,
    stop_server,
    wait_for_quiet,
)
from grpc import aio

from herald.v1 import ingest_pb2, notification_pb2, stream_pb2
from services import auth
from services.chain import Opener
from services.chain.signing import write_private_key
from services.config import AuthSettings

_SUBSCRIBE = "/herald.v1.StreamService/Subscribe"
_SEND = "/herald.v1.IngestService/Send"
_KEYS = "/herald.v1.StreamService/GetSigningKeys"


@dataclass
class Round:
    variant: str
    delivered: int
    expected: int
    seconds: float
    server_cpu_s: float
    machine_busy_s: float

    @property
    def us_per_delivery(self) -> float:
        return 1e6 * self.server_cpu_s / max(self.delivered, 1)

    @property
    def per_s(self) -> float:
        return self.delivered / self.seconds


class Subscribers:
    """N Subscribe streams of one tenant and variant, counting what they receive."""

    def __init__(self, address: str, tokens: list[str], accept: list[str]) -> None:
        self.received = 0
        self.first: stream_pb2.Delivery | None = None
        self._started = 0
        self._all_started = asyncio.Event()
        self._target = 0
        self._done = asyncio.Event()
        self._channels = [
            aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in tokens
        ]
        self._calls: list[Any] = []
        self._tasks = [
            asyncio.ensure_future(self._run(channel, token, accept))
            for channel, token in zip(self._channels, tokens, strict=True)
        ]

    async def _run(self, channel: aio.Channel, token: str, accept: list[str]) -> None:
        subscribe = channel.unary_stream(
            _SUBSCRIBE,
            request_serializer=stream_pb2.SubscribeRequest.SerializeToString,
            response_deserializer=stream_pb2.SubscribeResponse.FromString,
        )
        call = subscribe(
            stream_pb2.SubscribeRequest(device="bench", accept_encodings=accept),
            metadata=(("authorization", f"Bearer {token}"),),
        )
        self._calls.append(call)
        with _suppress_cancel():
            async for event in call:
                items = event.deliveries.deliveries
                if items:
                    if self.first is None:
                        self.first = items[0]
                    self.received += len(items)
                    if self._target and self.received >= self._target:
                        self._done.set()
                elif event.HasField("session_started"):
                    self._started += 1
                    if self._started == len(self._tasks):
                        self._all_started.set()

    async def started(self, within: float) -> None:
        async with asyncio.timeout(within):
            await self._all_started.wait()

    async def until(self, total: int, within: float) -> None:
        self._target = total
        if self.received >= total:
            return
        try:
            async with asyncio.timeout(within):
                await self._done.wait()
        except TimeoutError:
            pass

    async def close(self) -> None:
        for call in self._calls:
            call.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(c.close(grace=None) for c in self._channels))


class _suppress_cancel:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, value: object, tb: object) -> bool:
        return isinstance(value, (asyncio.CancelledError, grpc.RpcError))


def _broadcast(payload: int) -> bytes:
    notification = notification_pb2.Notification(ttl_seconds=3600)
    notification.target.broadcast = True
    notification.content.title = "bench"
    notification.content.body = "x" * max(0, payload - 5)
    return ingest_pb2.SendRequest(notification=notification).SerializeToString()


async def measure(
    args: argparse.Namespace,
    address: str,
    server_pid: int,
    minter: auth.TokenMinter,
    tenant: str,
    accept: list[str],
) -> Round:
    tokens = [minter.mint(f"u{i}", tenant, [auth.SCOPE_SUBSCRIBE]) for i in range(args.subscribers)]
    sender = minter.mint("bench-sender", tenant, [auth.SCOPE_SEND])
    subscribers = Subscribers(address, tokens, accept)
    try:
        await subscribers.started(60)
        await asyncio.to_thread(wait_for_quiet, 10.0, server_pid)
        async with aio.insecure_channel(address) as channel:
            send = channel.unary_unary(_SEND)
            metadata = (("authorization", f"Bearer {sender}"),)
            request = _broadcast(args.payload)
            count = int(args.rate * args.seconds)
            cpu0, busy0, t0 = proc_cpu_seconds(server_pid), machine_busy_seconds(), time.monotonic()
            for i in range(count):
                await send(request, metadata=metadata, timeout=10)
                await asyncio.sleep(max(0.0, t0 + (i + 1) / args.rate - time.monotonic()))
            expected = count * args.subscribers
            await subscribers.until(expected, 30)
            elapsed = time.monotonic() - t0
            cpu = proc_cpu_seconds(server_pid) - cpu0
            busy = machine_busy_seconds() - busy0
            if accept and subscribers.first is not None:
                keys = stream_pb2.GetSigningKeysResponse.FromString(
                    await channel.unary_unary(_KEYS)(
                        stream_pb2.GetSigningKeysRequest().SerializeToString(),
                        metadata=(("authorization", f"Bearer {tokens[0]}"),),
                    )
                )
                opened = Opener(verify="signed" in accept, keys=keys.keys).open(subscribers.first)
                assert opened.content.title == "bench", "the delivery did not open"
                assert subscribers.first.sealed.encoding in accept or not any(
                    a in ("zstd", "gzip") for a in accept
                ), "the delivery was not compressed"
        return Round(
            "+".join(accept) or "plain", subscribers.received, expected, elapsed, cpu, busy
        )
    finally:
        await subscribers.close()


async def run(args: argparse.Namespace) -> list[Round]:
    accept = [a.strip() for a in args.accept.split(",") if a.strip()]
    with tempfile.TemporaryDirectory(prefix="herald-chain-bench-") as work:
        workdir = Path(work)
        data_dir = workdir / "herald"
        keys = workdir / "keys"
        write_private_key(keys, "bench-1")
        port = free_port()
        server = start_server(
            HERALD,
            port,
            data_dir,
            workdir / "server.log",
            acks=False,
            extra_env={"HERALD_CHAIN_SIGNING_KEYS_DIR": str(keys)},
        )
        try:
            address = f"127.0.0.1:{port}"
            settings = AuthSettings(mode="dev")
            minter = auth.TokenMinter(auth.load_keys(settings, data_dir), settings)
            rounds: list[Round] = []
            for index in range(args.rounds):
                # Alternate which goes first, so drift in the machine's load hits both alike.
                order = [[], accept] if index % 2 == 0 else [accept, []]
                for variant in order:
                    tenant = f"r{index}-{'+'.join(variant) or 'plain'}"
                    result = await measure(args, address, server.pid, minter, tenant, variant)
                    rounds.append(result)
                    print(
                        f"round {index + 1} {result.variant:>12}: {result.delivered:,} of "
                        f"{result.expected:,} delivered, {result.per_s:,.0f}/s, "
                        f"{result.us_per_delivery:.1f} µs server CPU per delivery",
                        file=sys.stderr,
                    )
            return rounds
        finally:
            stop_server(server)


def report(args: argparse.Namespace, rounds: list[Round]) -> str:
    def median(variant: str) -> float:
        return statistics.median(r.us_per_delivery for r in rounds if r.variant == variant)

    transformed = next(r.variant for r in rounds if r.variant != "plain")
    plain, other = median("plain"), median(transformed)
    lines = [
        f"{args.subscribers} subscribers, {args.rate:g} broadcasts/s for {args.seconds:g} s per "
        f"round, {args.rounds} rounds, payload {args.payload} B",
        "",
        "| round | variant | delivered | deliveries/s | server CPU µs / delivery |",
        "|---|---|---|---|---|",
    ]
    for i, r in enumerate(rounds):
        lines.append(
            f"| {i // 2 + 1} | {r.variant} | {r.delivered:,} / {r.expected:,} | {r.per_s:,.0f} "
            f"| {r.us_per_delivery:.1f} |"
        )
    lines += [
        "",
        f"median: plain {plain:.1f} µs, {transformed} {other:.1f} µs: "
        f"{100 * (other / plain - 1):+.1f} % (target: at most +15 %)",
    ]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--accept", default="zstd,signed", help="the variant to compare")
    parser.add_argument("--rate", type=float, default=8.0, help="broadcasts per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="sending time per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--payload", type=int, default=400, help="body bytes (compressible)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        rounds = runner.run(run(args))
    print(report(args, rounds))


if __name__ == "__main__":
    main()

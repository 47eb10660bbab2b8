"""Idle memory per subscription: the server's RSS with N open, idle Subscribe streams.

    .venv/bin/python bench/memory.py [--streams 5000] [--connections 50] [--rounds 2]

Starts `herald up` (memory profile) as bench/delivery.py does, opens `--streams` Subscribe
streams spread over `--connections` HTTP/2 connections (one user per stream, each reading its
SessionStarted), waits for the server's RSS to settle, and reports (RSS with the streams - RSS
before) / streams. Then it closes every stream and reports how much of that memory came back.
`--rounds` repeats open and close on the same server: the second round shows whether memory is
reused (allocator pools, caches filled once) rather than leaked.

Issue #13's target: at most 12 KiB per subscription, returned after the streams close. The
client runs in this process; only the server's RSS is read (/proc/PID/status).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import grpc
from delivery import free_port, proc_rss_mib, start_server, stop_server
from grpc import aio

from herald.v1 import stream_pb2
from services import auth
from services.config import AuthSettings

_SUBSCRIBE = "/herald.v1.StreamService/Subscribe"


async def _settled_rss(pid: int, quiet_s: float = 1.5, limit_s: float = 30.0) -> float:
    """The RSS once it has moved by less than 0.5 MiB for `quiet_s`."""
    deadline = time.monotonic() + limit_s
    last = proc_rss_mib(pid)
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        now = proc_rss_mib(pid)
        if abs(now - last) >= 0.5:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= quiet_s:
            return now
    return proc_rss_mib(pid)


async def _open(
    address: str, tokens: list[str], connections: int
) -> tuple[list[aio.Channel], list[aio.UnaryStreamCall[bytes, bytes]]]:
    channels = [
        aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(connections)
    ]
    calls = []
    for index, token in enumerate(tokens):
        subscribe = channels[index % connections].unary_stream(
            _SUBSCRIBE,
            request_serializer=stream_pb2.SubscribeRequest.SerializeToString,
            response_deserializer=stream_pb2.SubscribeResponse.FromString,
        )
        calls.append(
            subscribe(
                stream_pb2.SubscribeRequest(device="bench"),
                metadata=(("authorization", f"Bearer {token}"),),
            )
        )
    # Every stream has its session once SessionStarted arrived.
    for start in range(0, len(calls), 500):
        events = await asyncio.gather(*(call.read() for call in calls[start : start + 500]))
        for event in events:
            assert event.WhichOneof("event") == "session_started", event
    return channels, calls


async def _close(
    channels: list[aio.Channel], calls: list[aio.UnaryStreamCall[bytes, bytes]]
) -> None:
    for call in calls:
        call.cancel()
    for channel in channels:
        await channel.close()


async def measure(streams: int, connections: int, rounds: int) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="herald-memory-") as tmp:
        data_dir = Path(tmp) / "herald"
        data_dir.mkdir()
        port = free_port()
        server = start_server(
            "herald",
            port,
            data_dir,
            Path(tmp) / "server.log",
            acks=True,
        )
        try:
            settings = AuthSettings()
            minter = auth.TokenMinter(auth.load_keys(settings, data_dir), settings)
            tokens = [minter.mint(f"u{i}", "bench", [auth.SCOPE_SUBSCRIBE]) for i in range(streams)]
            address = f"127.0.0.1:{port}"
            # One stream first: imports, the first session and the channel machinery are paid
            # once, not counted per subscription.
            warm = await _open(address, tokens[:1], 1)
            await _close(*warm)
            results = []
            for _ in range(rounds):
                before = await _settled_rss(server.pid)
                opened = time.monotonic()
                channels, calls = await _open(address, tokens, connections)
                open_s = time.monotonic() - opened
                with_streams = await _settled_rss(server.pid)
                await _close(channels, calls)
                await asyncio.sleep(1.0)
                after = await _settled_rss(server.pid)
                grown = with_streams - before
                results.append(
                    {
                        "before_mib": before,
                        "with_mib": with_streams,
                        "after_mib": after,
                        "kib_per_stream": grown * 1024 / streams,
                        "returned": (with_streams - after) / grown if grown > 0 else 1.0,
                        "open_s": open_s,
                    }
                )
            return results
        except BaseException:
            print((Path(tmp) / "server.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            stop_server(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(" ".join([Path(sys.executable).name, *sys.argv]))
    results = asyncio.run(measure(args.streams, args.connections, args.rounds))
    print(f"{args.streams} idle streams over {args.connections} connections, `herald up` (memory)")
    print("| round | RSS before | with streams | after close | per stream | returned | open |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, r in enumerate(results, 1):
        print(
            f"| {n} | {r['before_mib']:.1f} MiB | {r['with_mib']:.1f} MiB | "
            f"{r['after_mib']:.1f} MiB | {r['kib_per_stream']:.1f} KiB | "
            f"{100 * r['returned']:.0f} % | {r['open_s']:.1f} s |"
        )
    worst = max(r["kib_per_stream"] for r in results)
    verdict = "met" if worst <= 12 else "NOT met"
    print(f"- idle memory per subscription: **{worst:.1f} KiB** (target <= 12 KiB: {verdict})")


if __name__ == "__main__":
    grpc.aio.init_grpc_aio()
    main()

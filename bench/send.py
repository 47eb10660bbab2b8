"""What one `Send` costs: `herald up` answering unary calls from concurrent backends, on loopback.

    .venv/bin/python bench/send.py [--callers 16] [--seconds 10] [--batch 0] [--repeat 3]

`Send` with one notification is the call most backends make. This starts `herald up` (as
bench/delivery.py does, with a throwaway data directory), and `--callers` concurrent callers,
sharing one channel like a backend's connection pool, call `Send` back to back through the
generated stub for `--seconds` after `--warmup`, each to the next of 1,000 users (nobody
subscribed: the notifications go to the offline inboxes). With `--batch N` they call `SendBatch`
with N notifications instead. It reports calls/s and notifications/s, the server's CPU per call
(utime + stime from /proc, over the measured window) and the callers' latency, p50 and p99.

The callers run in this process; like the server, they share the machine's two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

from delivery import HERALD, free_port, percentile, proc_cpu_seconds, start_server, stop_server
from grpc import aio

from herald.v1 import ingest_pb2, ingest_pb2_grpc, notification_pb2
from services import auth
from services.config import AuthSettings


def notification(user: str, payload: int) -> notification_pb2.Notification:
    return notification_pb2.Notification(
        target=notification_pb2.Target(user_id=user),
        content=notification_pb2.Content(title="bench", body="x" * max(0, payload - 5)),
    )


async def measure(
    address: str, token: str, server_pid: int, args: argparse.Namespace
) -> dict[str, float]:
    users = [f"u{i}" for i in range(1000)]
    metadata = (("authorization", f"Bearer {token}"),)
    latencies: list[int] = []
    calls = 0
    recording = False
    stop_at = time.monotonic() + args.warmup + args.seconds
    async with aio.insecure_channel(address) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        turn = 0

        async def caller() -> None:
            nonlocal calls, turn
            while time.monotonic() < stop_at:
                turn += 1
                started = time.monotonic_ns()
                if args.batch:
                    batch = [
                        notification(users[(turn * args.batch + i) % 1000], args.payload)
                        for i in range(args.batch)
                    ]
                    request = ingest_pb2.SendBatchRequest(notifications=batch)
                    await stub.SendBatch(request, metadata=metadata, timeout=10)
                else:
                    request = ingest_pb2.SendRequest(
                        notification=notification(users[turn % 1000], args.payload)
                    )
                    await stub.Send(request, metadata=metadata, timeout=10)
                if recording:
                    latencies.append(time.monotonic_ns() - started)
                    calls += 1

        tasks = [asyncio.ensure_future(caller()) for _ in range(args.callers)]
        await asyncio.sleep(args.warmup)
        recording = True
        cpu0, t0 = proc_cpu_seconds(server_pid), time.monotonic()
        own0 = time.process_time()
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - t0
        cpu = proc_cpu_seconds(server_pid) - cpu0
        own = time.process_time() - own0
    latencies.sort()
    per_call = max(args.batch, 1)
    return {
        "calls_per_s": calls / elapsed,
        "notifications_per_s": calls * per_call / elapsed,
        "server_cpu_pct": 100 * cpu / elapsed,
        "server_us_per_call": 1e6 * cpu / max(calls, 1),
        "caller_cpu_pct": 100 * own / elapsed,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
    }


def run_once(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    data_dir = workdir / "herald"
    data_dir.mkdir(parents=True)
    settings = AuthSettings()
    keys = auth.load_keys(settings, data_dir)
    token = auth.TokenMinter(keys, settings).mint("bench-sender", "bench", [auth.SCOPE_SEND])
    port = free_port()
    server = start_server(HERALD, port, data_dir, workdir / "herald.log", acks=True)
    try:
        return asyncio.run(measure(f"127.0.0.1:{port}", token, server.pid, args))
    finally:
        stop_server(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=16, help="concurrent calls in flight")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--payload", type=int, default=200, help="body bytes, about")
    parser.add_argument("--batch", type=int, default=0, help="SendBatch of N instead of Send")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    rows = []
    for round_ in range(1, args.repeat + 1):
        with tempfile.TemporaryDirectory(prefix="herald-send-") as tmp:
            result = run_once(args, Path(tmp))
        rows.append(result)
        print(
            f"round {round_}: {result['calls_per_s']:,.0f} calls/s "
            f"({result['notifications_per_s']:,.0f} notifications/s), server CPU "
            f"{result['server_cpu_pct']:.0f}% = {result['server_us_per_call']:.0f} µs per call, "
            f"callers' CPU {result['caller_cpu_pct']:.0f}%, "
            f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms",
            flush=True,
        )
    if len(rows) > 1:
        with contextlib.suppress(statistics.StatisticsError):
            print(
                "median: "
                f"{statistics.median(r['calls_per_s'] for r in rows):,.0f} calls/s, "
                f"{statistics.median(r['server_us_per_call'] for r in rows):.0f} µs per call, "
                f"p99 {statistics.median(r['p99_ms'] for r in rows):.2f} ms"
            )


if __name__ == "__main__":
    main()

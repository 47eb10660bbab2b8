"""What one `Send` costs: `herald up` answering unary calls from concurrent backends, on loopback.

    .venv/bin/python bench/send.py [--callers 16] [--seconds 10] [--batch 0] [--repeat 3]
                                   [--profile memory,production]

`Send` with one notification is the call most backends make. This starts `herald up` (as
bench/delivery.py does, with a throwaway data directory), and `--callers` concurrent callers,
sharing one channel like a backend's connection pool, call `Send` back to back through the
generated stub for `--seconds` after `--warmup`, each to the next of 1,000 users (nobody
subscribed: the notifications go to the offline inboxes). With `--batch N` they call `SendBatch`
with N notifications instead. It reports calls/s and notifications/s, the server's CPU per call
(utime + stime from /proc, over the measured window) and the callers' latency, p50 and p99.

`--profile production` runs `herald up` on the production profile instead of the embedded
memory one: a fresh PostgreSQL database `bench_<random>` on the server of `--pg-dsn` and a fresh
Redis key prefix on `--redis-url`, both removed afterwards (bench/production.py). It then also
reports PostgreSQL's and Redis's CPU over the window (all their processes, from /proc), the
database's commits and rows written (pg_stat_database), and what its client backends were doing,
sampled every 20 ms (pg_stat_activity). `--profile memory,production` alternates the two in
every round. `--profile floor` runs the durable floor instead of Herald (bench/baseline.py
`--protocol --durable-dsn`: every SendBatch answered with ids and committed to PostgreSQL as one
row per notification, nothing else), on a fresh database as well: what any server must spend
to make a notification durable on this machine.

The callers run in this process; like the server, they share the machine's two cores. The
requests are built before the run (one per starting user, round-robin over 1,000 users), so
the callers' CPU is the stub's serialization and the call, not building messages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import production
from delivery import (
    HERALD,
    PROTOCOL,
    free_port,
    percentile,
    proc_cpu_seconds,
    start_server,
    stop_server,
)
from grpc import aio

from herald.v1 import ingest_pb2, ingest_pb2_grpc, notification_pb2
from services import auth
from services.config import AuthSettings


def notification(user: str, payload: int) -> notification_pb2.Notification:
    return notification_pb2.Notification(
        target=notification_pb2.Target(user_id=user),
        content=notification_pb2.Content(title="bench", body="x" * max(0, payload - 5)),
    )


def requests(args: argparse.Namespace) -> list[Any]:
    """The requests the callers cycle through: call k starts at user k * size (mod 1,000)."""
    users = [f"u{i}" for i in range(1000)]
    size = max(args.batch, 1)
    built = []
    for turn in range(1000 // math.gcd(size, 1000)):
        if args.batch:
            batch = [
                notification(users[(turn * size + i) % 1000], args.payload) for i in range(size)
            ]
            built.append(ingest_pb2.SendBatchRequest(notifications=batch))
        else:
            built.append(
                ingest_pb2.SendRequest(notification=notification(users[turn], args.payload))
            )
    return built


async def measure(
    address: str,
    token: str,
    server_pid: int,
    args: argparse.Namespace,
    backends: production.Backends | None,
) -> dict[str, Any]:
    metadata = (("authorization", f"Bearer {token}"),)
    latencies: list[int] = []
    calls = 0
    refused = 0
    recording = False
    built = requests(args)
    stop_at = time.monotonic() + args.warmup + args.seconds
    async with aio.insecure_channel(address) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        turn = 0

        async def caller() -> None:
            nonlocal calls, turn, refused
            while time.monotonic() < stop_at:
                turn += 1
                request = built[turn % len(built)]
                started = time.monotonic_ns()
                if args.batch:
                    answer = await stub.SendBatch(request, metadata=metadata, timeout=10)
                    refused += sum(1 for r in answer.results if r.HasField("error"))
                else:
                    await stub.Send(request, metadata=metadata, timeout=10)
                if recording:
                    latencies.append(time.monotonic_ns() - started)
                    calls += 1

        tasks = [asyncio.ensure_future(caller()) for _ in range(args.callers)]
        await asyncio.sleep(args.warmup)
        recording = True
        watch = None
        if backends is not None:
            watch = production.PgWatch(args.pg_dsn, backends.database)
            await watch.start()
        stores = production.StoreCpu()
        cpu0, t0 = proc_cpu_seconds(server_pid), time.monotonic()
        own0 = time.process_time()
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - t0
        cpu = proc_cpu_seconds(server_pid) - cpu0
        own = time.process_time() - own0
        store_cpu = stores.close(watch.pids if watch is not None else None)
        counters = await watch.stop() if watch is not None else {}
    if refused:
        raise RuntimeError(f"{refused} notifications refused")
    latencies.sort()
    per_call = max(args.batch, 1)
    notifications = calls * per_call
    return {
        "calls_per_s": calls / elapsed,
        "notifications_per_s": notifications / elapsed,
        "server_cpu_pct": 100 * cpu / elapsed,
        "server_us_per_call": 1e6 * cpu / max(calls, 1),
        "server_us_per_notification": 1e6 * cpu / max(notifications, 1),
        "pg_cpu_pct": 100 * store_cpu["pg"] / elapsed,
        "redis_cpu_pct": 100 * store_cpu["redis"] / elapsed,
        "stores_us_per_notification": 1e6
        * (store_cpu["pg"] + store_cpu["redis"])
        / max(notifications, 1),
        "caller_cpu_pct": 100 * own / elapsed,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "commits_per_s": counters.get("xact_commit", 0) / elapsed,
        "rows_per_notification": sum(
            counters.get(k, 0) for k in ("tup_inserted", "tup_updated", "tup_deleted")
        )
        / max(notifications, 1),
        "pg_activity": watch.busy() if watch is not None else [],
        "pg_statements": watch.busiest_statements() if watch is not None else [],
        "pg_cpu_by_type": production.pg_cpu_by_type(stores, watch, elapsed) if watch else [],
    }


def run_once(args: argparse.Namespace, workdir: Path, profile: str) -> dict[str, Any]:
    if profile == "memory":
        return _run_once(args, workdir, None)
    with production.fresh_backends(args.pg_dsn, args.redis_url) as backends:
        return _run_once(args, workdir, backends, floor=profile == "floor")


def _run_once(
    args: argparse.Namespace,
    workdir: Path,
    backends: production.Backends | None,
    *,
    floor: bool = False,
) -> dict[str, Any]:
    data_dir = workdir / "herald"
    data_dir.mkdir(parents=True)
    settings = AuthSettings()
    keys = auth.load_keys(settings, data_dir)
    token = auth.TokenMinter(keys, settings).mint("bench-sender", "bench", [auth.SCOPE_SEND])
    port = free_port()
    env = backends.env if backends is not None else None
    log = workdir / "herald.log"
    if floor:
        assert backends is not None
        server = start_server(
            PROTOCOL, port, data_dir, log, acks=True, extra_args=["--durable-dsn", backends.dsn]
        )
    else:
        server = start_server(HERALD, port, data_dir, log, acks=True, extra_env=env)
    try:
        return asyncio.run(measure(f"127.0.0.1:{port}", token, server.pid, args, backends))
    finally:
        stop_server(server)
        if args.server_log:
            Path(args.server_log).write_bytes(log.read_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=16, help="concurrent calls in flight")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--payload", type=int, default=200, help="body bytes, about")
    parser.add_argument("--batch", type=int, default=0, help="SendBatch of N instead of Send")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--profile",
        default="memory",
        help="memory, production (a fresh PostgreSQL database and Redis prefix), floor (the "
        "durable floor: bench/baseline.py --protocol --durable-dsn on a fresh database), or "
        "several comma-separated: alternated in every round",
    )
    parser.add_argument("--pg-dsn", default=production.DEFAULT_PG_DSN)
    parser.add_argument("--redis-url", default=production.DEFAULT_REDIS_URL)
    parser.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    parser.add_argument("--server-log", metavar="PATH", help="keep the last server's log here")
    args = parser.parse_args()
    profiles = [p.strip() for p in args.profile.split(",") if p.strip()]
    if not profiles or set(profiles) - {"memory", "production", "floor"}:
        parser.error(f"--profile: memory, production and/or floor, not {args.profile!r}")
    what = f"SendBatch of {args.batch}" if args.batch else "Send"
    print(f"{what}, {args.callers} concurrent callers, {args.seconds:g} s per run", flush=True)
    rows: dict[str, list[dict[str, Any]]] = {p: [] for p in profiles}
    for round_ in range(1, args.repeat + 1):
        for profile in profiles:
            with tempfile.TemporaryDirectory(prefix="herald-send-") as tmp:
                result = run_once(args, Path(tmp), profile)
            result.update(profile=profile, round=round_, batch=args.batch, callers=args.callers)
            rows[profile].append(result)
            print(f"{profile} round {round_}: {_line(result)}", flush=True)
    for profile, results in rows.items():
        if len(results) > 1:
            with contextlib.suppress(statistics.StatisticsError):
                print(
                    f"{profile} median: "
                    f"{statistics.median(r['notifications_per_s'] for r in results):,.0f} "
                    "notifications/s, "
                    f"{statistics.median(r['server_us_per_call'] for r in results):.0f} µs "
                    f"per call, p99 {statistics.median(r['p99_ms'] for r in results):.2f} ms"
                )
    _verdicts(rows, args.batch)
    if args.json:
        everything = [r for results in rows.values() for r in results]
        Path(args.json).write_text(json.dumps(everything, indent=2) + "\n")


# Issue #10's durable ingest target: SendBatch on the production profile, the load generator
# on the same machine.
INGEST_TARGET = 20_000


def _verdicts(rows: dict[str, list[dict[str, Any]]], batch: int) -> None:
    """Issue #10's ingest figure, and production against the references run in the same rounds
    (the machine's speed moves the absolute figure; the ratios move less)."""
    production = [r["notifications_per_s"] for r in rows.get("production", [])]
    if not production or not batch:
        return
    median = statistics.median(production)
    verdict = "met" if median >= INGEST_TARGET else "NOT met"
    print(
        f"- durable ingest (production, SendBatch of {batch}): **{median:,.0f} notifications/s**"
        f" (median of {', '.join(f'{v:,.0f}' for v in production)})"
        f" (target >= {INGEST_TARGET:,}/s: {verdict})"
    )
    for reference in ("floor", "memory"):
        others = [r["notifications_per_s"] for r in rows.get(reference, [])]
        if len(others) == len(production):
            ratios = [p / o for p, o in zip(production, others, strict=True) if o]
            if ratios:
                name = "the durable floor" if reference == "floor" else "memory"
                print(
                    f"- production / {name}, round by round: "
                    f"{', '.join(f'{r:.2f}' for r in ratios)}"
                )


def _line(r: dict[str, Any]) -> str:
    line = (
        f"{r['calls_per_s']:,.0f} calls/s ({r['notifications_per_s']:,.0f} notifications/s), "
        f"server CPU {r['server_cpu_pct']:.0f}% = {r['server_us_per_call']:.0f} µs per call "
        f"({r['server_us_per_notification']:.1f} µs per notification), "
        f"callers' CPU {r['caller_cpu_pct']:.0f}%, "
        f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms"
    )
    if r["pg_activity"] or r["pg_cpu_pct"] > 5:
        line += (
            f"; PostgreSQL CPU {r['pg_cpu_pct']:.0f}%, Redis CPU {r['redis_cpu_pct']:.0f}% "
            f"({r['stores_us_per_notification']:.1f} µs per notification); "
            f"{r['commits_per_s']:,.0f} commits/s, "
            f"{r['rows_per_notification']:.1f} rows written per notification"
        )
    if r["pg_activity"]:
        busy = ", ".join(f"{k} {v:.2f}" for k, v in r["pg_activity"][:6])
        kinds = ", ".join(f"{kind} {pct:.0f}%" for kind, pct in r["pg_cpu_by_type"][:4])
        line += f"; PostgreSQL CPU by process: {kinds}"
        line += f"; PostgreSQL backends (mean number, by state): {busy}"
        statements = "; ".join(f"{n:.2f} {q!r}" for q, n in r["pg_statements"][:5])
        line += f"; by statement: {statements}"
    return line


if __name__ == "__main__":
    main()

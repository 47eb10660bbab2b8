"""Soak: a million notifications through one node with acks; is the server's RSS flat?

    .venv/bin/python bench/soak.py [--total 1000000] [--subscribers 200] [--sample-s 3]

Starts `herald up` (memory profile) as bench/delivery.py does, with /metrics on a free port,
opens `--subscribers` Subscribe streams (one connection and one AckStream each, acking every
`--ack-interval` seconds as the client library does) and sends `--total` notifications of
`--payload` bytes as fast as the node takes them (bench/delivery.py's load generator: at most
`--window-per-subscriber` x subscribers sent and not yet received). Every `--sample-s` seconds
it samples the server's RSS (/proc/PID/status) and, from /metrics, the status records the
memory store has dropped (`herald_status_records_evicted_total`), the bytes buffered and the
entries waiting for an ack.

The memory store keeps at most `HERALD_DELIVERY_STATUS_MAX_RECORDS` status records (default
1,000,000: a run of a million would fill it only at its end); the soak sets `--status-max-records`
(default 200,000) so that the bound is reached early and its eviction runs for most of the run.
The user logs are bounded by `HERALD_DELIVERY_INBOX_LIMIT` (1,000 entries each).

Verdicts (issue #13): over the second half of the notifications, the RSS moves by at most 10 %
(max / min), and the status records (accepted - evicted) never exceed the bound.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from delivery import (
    HERALD,
    LoadGenerator,
    RunSpec,
    environment,
    free_port,
    metric,
    proc_rss_mib,
    scrape,
    start_server,
    stop_server,
)


@dataclass
class Sample:
    at_s: float
    sent: int
    received: int
    rss_mib: float
    accepted: int
    evicted: int
    buffered_bytes: int
    unacked: int

    @property
    def records(self) -> int:
        """Status records the memory store holds: one per accepted notification, less those
        it dropped."""
        return self.accepted - self.evicted


async def soak(args: argparse.Namespace) -> tuple[list[Sample], LoadGenerator]:
    with tempfile.TemporaryDirectory(prefix="herald-soak-") as tmp:
        data_dir = Path(tmp) / "herald"
        data_dir.mkdir()
        port, metrics_port = free_port(), free_port()
        log_path = Path(tmp) / "server.log"
        server = start_server(
            HERALD,
            port,
            data_dir,
            log_path,
            acks=True,
            extra_env={
                "HERALD_METRICS_PORT": str(metrics_port),
                "HERALD_DELIVERY_STATUS_MAX_RECORDS": str(args.status_max_records),
            },
        )
        spec = RunSpec(
            target=HERALD,
            address=f"127.0.0.1:{port}",
            server_pid=server.pid,
            subscribers=args.subscribers,
            connections=args.subscribers,
            seconds=0,
            warmup=0,
            payload=args.payload,
            batch=args.batch,
            senders=args.senders,
            window_per_subscriber=args.window_per_subscriber,
            ack_interval=args.ack_interval,
            ack_mode="stream",
            tick_ms=5,
            latency_rate=0,
            data_dir=str(data_dir),
        )
        load = LoadGenerator(spec)
        samples: list[Sample] = []
        started = time.monotonic()

        def sample() -> None:
            values = scrape(metrics_port)
            samples.append(
                Sample(
                    at_s=time.monotonic() - started,
                    sent=load.sent,
                    received=load.received,
                    rss_mib=proc_rss_mib(server.pid),
                    accepted=int(metric(values, "herald_notifications_accepted_total")),
                    evicted=int(metric(values, "herald_status_records_evicted_total")),
                    buffered_bytes=int(metric(values, "herald_buffered_bytes", kind="used")),
                    unacked=int(metric(values, "herald_queue_depth", queue="unacked")),
                )
            )
            s = samples[-1]
            print(
                f"  {s.at_s:6.0f} s  sent {s.sent:>9,}  received {s.received:>9,}  "
                f"RSS {s.rss_mib:7.1f} MiB  status records {s.records:>9,}  "
                f"unacked {s.unacked:>7,}",
                flush=True,
            )

        async def sampler() -> None:
            while True:
                await asyncio.sleep(args.sample_s)
                sample()

        try:
            await load.connect()
            sample()
            sampling = asyncio.ensure_future(sampler())
            while load.sent < args.total:
                await load.saturate(1.0)
            await load.drain(60.0)
            # Past the ack interval, so the last acks are in.
            await asyncio.sleep(2 * args.ack_interval)
            sampling.cancel()
            sample()
            return samples, load
        except BaseException:
            print(log_path.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            await load.close()
            stop_server(server)


def verdicts(samples: list[Sample], load: LoadGenerator, args: argparse.Namespace) -> list[str]:
    half = [s for s in samples if s.sent >= load.sent / 2]
    low, high = min(s.rss_mib for s in half), max(s.rss_mib for s in half)
    spread = (high - low) / low
    # Least-squares slope of RSS against notifications sent, over the second half.
    mean_x = sum(s.sent for s in half) / len(half)
    mean_y = sum(s.rss_mib for s in half) / len(half)
    var = sum((s.sent - mean_x) ** 2 for s in half)
    slope = sum((s.sent - mean_x) * (s.rss_mib - mean_y) for s in half) / var if var else 0.0
    records = max(s.records for s in samples)
    elapsed = samples[-1].at_s - samples[0].at_s
    lost = load.sent - load.received
    peak = max(s.rss_mib for s in samples)
    bounded = "met" if records <= args.status_max_records else "NOT met"
    return [
        f"- {load.sent:,} notifications of {args.payload} bytes to {args.subscribers} acking "
        f"subscribers in {elapsed:.0f} s ({load.sent / elapsed:,.0f}/s); received "
        f"{load.received:,} ({lost:,} not received), {load.redeliveries:,} redeliveries, "
        f"{load.ack_errors} ack errors",
        f"- RSS: start {samples[0].rss_mib:.1f} MiB, peak {peak:.1f} MiB, end "
        f"{samples[-1].rss_mib:.1f} MiB; second half ({len(half)} samples) {low:.1f}-{high:.1f} "
        f"MiB, slope {slope * 100_000:+.2f} MiB per 100,000 notifications",
        f"- RSS flat over the second half: **{100 * spread:.1f} %** "
        f"(target <= 10 %: {'met' if spread <= 0.10 else 'NOT met'})",
        f"- status records at most **{records:,}** (bound {args.status_max_records:,}: {bounded})",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total", type=int, default=1_000_000)
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--payload", type=int, default=200, help="content + metadata bytes")
    parser.add_argument("--batch", type=int, default=250, help="notifications per SendBatch")
    parser.add_argument("--senders", type=int, default=4, help="concurrent SendBatch calls")
    parser.add_argument("--window-per-subscriber", type=int, default=50)
    parser.add_argument("--ack-interval", type=float, default=5.0)
    parser.add_argument("--sample-s", type=float, default=3.0)
    parser.add_argument("--status-max-records", type=int, default=200_000)
    args = parser.parse_args()
    print(" ".join([Path(sys.executable).name, *sys.argv]))
    print(environment())
    samples, load = asyncio.run(soak(args))
    for line in verdicts(samples, load, args):
        print(line)


if __name__ == "__main__":
    grpc.aio.init_grpc_aio()
    main()

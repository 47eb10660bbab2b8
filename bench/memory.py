"""Idle memory per subscription: the server's RSS with N open, idle Subscribe streams.

    .venv/bin/python bench/memory.py [--targets floor,herald] [--streams 5000] [--connections 50]
        [--rounds 2] [--trace] [--connect-rate 0]

Starts `herald up` (memory profile) as bench/delivery.py does, opens `--streams` Subscribe
streams spread over `--connections` HTTP/2 connections (0: one connection per stream; one user
per stream, each reading its SessionStarted), waits for the server's RSS to settle, and reports
(RSS with the streams - RSS before) / streams. Then it closes every stream and reports how much of
that memory came back. `--rounds` repeats open and close on the same server: the second round
shows whether memory is reused (allocator pools, caches filled once) rather than leaked.

The `floor` target is the protocol floor: bench/baseline.py --idle, a bare grpc.aio servicer that
writes one SessionStarted per Subscribe and awaits forever (same grpcio, uvloop and pending-call
bounds as Herald, no interceptors). `herald - floor` is what Herald itself holds per stream.

`--trace` runs each target once more under tracemalloc (a separate server, one round) and prints
where the Python allocations per stream were made (file:line, grown between before and with the
streams) and what is left after they closed. The RSS figures come from the untraced servers.

Each stream's connect time is from its call to its SessionStarted; `--connect-rate` opens the
streams at that many per second (0: all at once, a connect storm) and the table gives the rate
reached and the connect p50 / p95 / p99. The file limit is raised to the hard limit first, in
this process and so in the server it starts (one connection per stream needs a descriptor each
on both sides).

Issue #13's target: at most 12 KiB per subscription, returned after the streams close; connect
p95 <= 100 ms for a storm of 10,000. The client runs in this process; only the server's RSS is
read (/proc/PID/status).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import os
import pickle
import resource
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import grpc
from delivery import BASELINE, HERALD, free_port, proc_rss_mib, start_server, stop_server
from grpc import aio

from herald.v1 import stream_pb2
from services import auth
from services.config import AuthSettings

_SUBSCRIBE = "/herald.v1.StreamService/Subscribe"
# Frames kept per traced allocation: enough to name the project's line that led to it.
_FRAMES = 6
_ROOT = str(Path(__file__).resolve().parent.parent)
_THIS = str(Path(__file__).resolve())


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
    address: str, tokens: list[str], connections: int, rate: float = 0.0
) -> tuple[list[aio.Channel], list[aio.UnaryStreamCall[bytes, bytes]], list[float]]:
    """Opens a stream per token (connections 0: a channel each); returns the channels, the calls
    and each stream's connect time (its call to its SessionStarted), in seconds."""
    count = connections or len(tokens)
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [aio.insecure_channel(address, options=options) for _ in range(count)]
    calls: list[aio.UnaryStreamCall[bytes, bytes]] = []
    connect_s: list[float] = []

    async def one(call: aio.UnaryStreamCall[bytes, bytes], started: float) -> None:
        event = await call.read()
        connect_s.append(time.monotonic() - started)
        assert event.WhichOneof("event") == "session_started", event

    reads = []
    begun = time.monotonic()
    for index, token in enumerate(tokens):
        if rate:
            await asyncio.sleep(max(0.0, begun + index / rate - time.monotonic()))
        subscribe = channels[index % count].unary_stream(
            _SUBSCRIBE,
            request_serializer=stream_pb2.SubscribeRequest.SerializeToString,
            response_deserializer=stream_pb2.SubscribeResponse.FromString,
        )
        call = subscribe(
            stream_pb2.SubscribeRequest(device="bench"),
            metadata=(("authorization", f"Bearer {token}"),),
        )
        calls.append(call)
        reads.append(asyncio.ensure_future(one(call, time.monotonic())))
    # Every stream has its session once SessionStarted arrived.
    await asyncio.gather(*reads)
    return channels, calls, connect_s


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def _close(
    channels: list[aio.Channel], calls: list[aio.UnaryStreamCall[bytes, bytes]]
) -> None:
    for call in calls:
        call.cancel()
    for channel in channels:
        await channel.close()


class Probe:
    """Asks the server (run by `--serve`) for a snapshot (SIGUSR1: tracemalloc when traced, and
    the count of GC-tracked objects by type) or to give freed memory back (SIGUSR2)."""

    def __init__(self, pid: int, directory: Path) -> None:
        self._pid = pid
        self._directory = directory
        self._taken = 0

    async def snapshot(self) -> tuple[tracemalloc.Snapshot | None, dict[str, int]]:
        path = self._directory / f"snapshot-{self._taken}"
        self._taken += 1
        os.kill(self._pid, signal.SIGUSR1)
        await self._wait_for(path)
        types = pickle.loads((path.with_suffix(".types")).read_bytes())  # noqa: S301 - our own
        traced = tracemalloc.Snapshot.load(str(path)) if path.stat().st_size else None
        return traced, types

    async def trim(self) -> None:
        """glibc's malloc_trim(0) in the server: what RSS keeps after it is held, not pooled."""
        path = self._directory / f"trimmed-{self._taken}"
        self._taken += 1
        os.kill(self._pid, signal.SIGUSR2)
        await self._wait_for(path)

    async def _wait_for(self, path: Path) -> None:
        deadline = time.monotonic() + 180
        while not path.exists():  # noqa: ASYNC240 - a stat every 0.2 s
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server wrote no {path.name} within 180 s")
            await asyncio.sleep(0.2)


def _serve(directory: str, traced: bool, command: list[str]) -> None:
    """Runs a server's script (or `-m module`), under tracemalloc if `traced`. Each SIGUSR1
    writes `directory`/snapshot-N (after a collection) and snapshot-N.types; each SIGUSR2 calls
    malloc_trim(0) and writes trimmed-N (N counts both)."""
    if traced:
        tracemalloc.start(_FRAMES)
    taken = [0]

    def snapshot(signum: int, frame: object) -> None:
        gc.collect()
        path = Path(directory) / f"snapshot-{taken[0]}"
        taken[0] += 1
        types = Counter(type(o).__qualname__ for o in gc.get_objects())
        path.with_suffix(".types").write_bytes(pickle.dumps(dict(types)))
        if traced:
            tracemalloc.take_snapshot().dump(f"{path}.tmp")
        else:
            Path(f"{path}.tmp").write_bytes(b"")
        os.replace(f"{path}.tmp", path)

    def trim(signum: int, frame: object) -> None:
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        (Path(directory) / f"trimmed-{taken[0]}").write_bytes(b"")
        taken[0] += 1

    signal.signal(signal.SIGUSR1, snapshot)
    signal.signal(signal.SIGUSR2, trim)
    sys.argv = command
    if command[0] == "-m":
        sys.argv = command[1:]
        runpy.run_module(command[1], run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(command[0], run_name="__main__")


def _start(
    target: str, port: int, tmp: Path, data_dir: Path, traced: bool
) -> subprocess.Popen[bytes]:
    wrap = [sys.executable, __file__, "--serve", str(tmp), "traced" if traced else "untraced"]
    log_path = tmp / "server.log"
    if target == "floor":
        return start_server(
            BASELINE,
            port,
            data_dir,
            log_path,
            acks=True,
            extra_args=["--idle"],
            wrap=wrap,
            listen_limit_s=120,
        )
    return start_server(HERALD, port, data_dir, log_path, acks=True, wrap=wrap, listen_limit_s=120)


async def measure(
    target: str,
    streams: int,
    connections: int,
    rounds: int,
    *,
    rate: float = 0.0,
    traced: bool = False,
) -> list[dict[str, object]]:
    """One server: `rounds` of open, settle, close. With `traced`, each round's result also
    holds the tracemalloc snapshots before, with the streams and after they closed."""
    with tempfile.TemporaryDirectory(prefix="herald-memory-") as name:
        tmp = Path(name)
        data_dir = tmp / "herald"
        data_dir.mkdir()
        port = free_port()
        server = _start(target, port, tmp, data_dir, traced)
        probe = Probe(server.pid, tmp)
        try:
            settings = AuthSettings()
            minter = auth.TokenMinter(auth.load_keys(settings, data_dir), settings)
            tokens = [minter.mint(f"u{i}", "bench", [auth.SCOPE_SUBSCRIBE]) for i in range(streams)]
            address = f"127.0.0.1:{port}"
            # One stream first: imports, the first session and the channel machinery are paid
            # once, not counted per subscription.
            warm = await _open(address, tokens[:1], 1)
            await _close(*warm[:2])
            results: list[dict[str, object]] = []
            for _ in range(rounds):
                before = await _settled_rss(server.pid)
                snap_before = await probe.snapshot()
                opened = time.monotonic()
                channels, calls, connect_s = await _open(address, tokens, connections, rate)
                open_s = time.monotonic() - opened
                with_streams = await _settled_rss(server.pid)
                snap_with = await probe.snapshot()
                await _close(channels, calls)
                # The server ends its side of each call after the client's cancel arrives.
                await asyncio.sleep(max(2.0, open_s))
                after = await _settled_rss(server.pid)
                snap_after = await probe.snapshot()
                await probe.trim()
                trimmed = await _settled_rss(server.pid)
                grown = with_streams - before
                results.append(
                    {
                        "before_mib": before,
                        "with_mib": with_streams,
                        "after_mib": after,
                        "trimmed_mib": trimmed,
                        "kib_per_stream": grown * 1024 / streams,
                        "returned": (with_streams - after) / grown if grown > 0 else 1.0,
                        "open_s": open_s,
                        "rate": streams / open_s,
                        "p50_ms": 1000 * _percentile(connect_s, 0.50),
                        "p95_ms": 1000 * _percentile(connect_s, 0.95),
                        "p99_ms": 1000 * _percentile(connect_s, 0.99),
                        "snapshots": (snap_before, snap_with, snap_after),
                    }
                )
            return results
        except BaseException:
            print((tmp / "server.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            stop_server(server)


def _site(traceback: tracemalloc.Traceback) -> str:
    """The innermost frame in this repository (services/, bench/), else the innermost one."""
    frames = list(traceback)[::-1]  # a Traceback runs from the oldest frame
    own = [
        f
        for f in frames
        if f.filename.startswith(_ROOT)
        and "/.venv/" not in f.filename
        and f.filename != _THIS  # the --serve wrapper: every frame's outermost
    ]
    frame = (own or frames)[0]
    where = frame.filename.replace(_ROOT + "/", "").split("site-packages/")[-1]
    return f"{where.split('/lib/python3')[-1]}:{frame.lineno}"


def _by_site(new: tracemalloc.Snapshot, old: tracemalloc.Snapshot) -> list[tuple[str, int, int]]:
    sites: dict[str, list[int]] = {}
    for diff in new.compare_to(old, "traceback"):
        site = sites.setdefault(_site(diff.traceback), [0, 0])
        site[0] += diff.size_diff
        site[1] += diff.count_diff
    return sorted(((k, v[0], v[1]) for k, v in sites.items()), key=lambda s: -s[1])


def _types_diff(new: dict[str, int], old: dict[str, int], streams: int, top: int) -> str:
    grown = sorted(((n - old.get(t, 0), t) for t, n in new.items()), reverse=True)
    return ", ".join(f"{t} {d / streams:.2f}" for d, t in grown[:top] if d >= streams / 100)


def _print_trace(target: str, streams: int, result: dict[str, object], top: int) -> None:
    (before, types_before), (with_streams, types_with), (after, types_after) = result["snapshots"]  # type: ignore[misc]
    print(
        f"\n{target}, GC-tracked objects per stream, by type: "
        f"{_types_diff(types_with, types_before, streams, 30)}"
    )
    print(f"left after close: {_types_diff(types_after, types_before, streams, 15) or 'none'}")
    if before is None:
        return
    grown = _by_site(with_streams, before)
    left = _by_site(after, before)
    total = sum(size for _, size, _ in grown)
    print(
        f"{target}, tracemalloc: {total / streams / 1024:.2f} KiB of Python allocations per "
        f"stream; after close {sum(s for _, s, _ in left) / streams / 1024:.2f} KiB per stream left"
    )
    print("| allocated at (innermost frame of this repository) | bytes per stream | objects |")
    print("|---|---:|---:|")
    for site, size, count in grown[:top]:
        if abs(size) >= streams:
            print(f"| {site} | {size / streams:.0f} | {count / streams:.2f} |")
    print("left after close:")
    for site, size, count in left[:8]:
        if abs(size) >= streams:
            print(f"| {site} | {size / streams:.0f} | {count / streams:.2f} |")


def _raise_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="floor,herald", help="floor, herald or both")
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=50, help="0: one connection per stream")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--connect-rate", type=float, default=0.0, help="streams opened per second (0: at once)"
    )
    parser.add_argument("--trace", action="store_true", help="also run each target traced")
    parser.add_argument(
        "--trace-rate", type=float, default=100, help="streams opened per second when traced"
    )
    parser.add_argument("--trace-streams", type=int, default=2000, help="streams when traced")
    parser.add_argument("--top", type=int, default=25, help="allocation sites shown per trace")
    args = parser.parse_args()
    targets = args.targets.split(",")
    if set(targets) - {"floor", "herald"}:
        parser.error("--targets are floor and herald")
    limit = _raise_file_limit()
    # A descriptor per connection in this process (the client) and in the server.
    if not args.connections and args.streams + 100 > limit:
        parser.error(
            f"one connection per stream: {args.streams} streams need more than {limit} fds"
        )
    print(" ".join([Path(sys.executable).name, *sys.argv]))
    spread = f"over {args.connections} connections" if args.connections else "one connection each"
    pace = f"{args.connect_rate:g}/s" if args.connect_rate else "at once"
    print(f"{args.streams} idle streams {spread}, opened {pace}; `herald up` (memory profile)")
    print(
        "| target | round | RSS before | with streams | after close | after malloc_trim "
        "| per stream | returned | open | connects/s | connect p50 / p95 / p99 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    worst: dict[str, float] = {}
    for target in targets:
        results = asyncio.run(
            measure(target, args.streams, args.connections, args.rounds, rate=args.connect_rate)
        )
        for n, r in enumerate(results, 1):
            print(
                f"| {target} | {n} | {r['before_mib']:.1f} MiB | {r['with_mib']:.1f} MiB | "
                f"{r['after_mib']:.1f} MiB | {r['trimmed_mib']:.1f} MiB | "
                f"{r['kib_per_stream']:.1f} KiB | "
                f"{100 * r['returned']:.0f} % | {r['open_s']:.1f} s | {r['rate']:,.0f} | "
                f"{r['p50_ms']:.0f} / {r['p95_ms']:.0f} / {r['p99_ms']:.0f} ms |",
                flush=True,
            )
        _print_trace(target, args.streams, results[0], args.top)
        worst[target] = max(float(r["kib_per_stream"]) for r in results)  # type: ignore[arg-type]
    if "herald" in worst:
        verdict = "met" if worst["herald"] <= 12 else "NOT met"
        print(
            f"- idle memory per subscription: **{worst['herald']:.1f} KiB** "
            f"(target <= 12 KiB: {verdict})"
        )
    if "floor" in worst:
        print(f"- the protocol floor (bare grpc.aio): {worst['floor']:.1f} KiB per stream")
    if len(worst) == 2:
        print(f"- Herald's own: {worst['herald'] - worst['floor']:.1f} KiB per stream")
    if args.trace:
        for target in targets:
            # Paced: tracemalloc slows the server several times, and grpc core cancels calls
            # that wait too long for it.
            [traced] = asyncio.run(
                measure(
                    target,
                    args.trace_streams,
                    args.connections,
                    1,
                    rate=args.trace_rate,
                    traced=True,
                )
            )
            _print_trace(target, args.trace_streams, traced, args.top)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        _serve(sys.argv[2], sys.argv[3] == "traced", sys.argv[4:])
    else:
        grpc.aio.init_grpc_aio()
        main()

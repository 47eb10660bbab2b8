"""Throwaway production backends for the benches: a fresh PostgreSQL database and Redis prefix.

`herald up` runs on the production profile when HERALD_POSTGRES_DSN and HERALD_REDIS_URL are
set. `fresh_backends()` makes a database `bench_<random>` on the server of `--pg-dsn` (the
server migrates it when it starts) and picks a Redis key prefix `herald-bench-<random>:`,
answers the environment for the server, and afterwards drops the database (`WITH (FORCE)`) and
deletes every key under the prefix (SCAN + UNLINK: the Redis may be shared, so never FLUSHALL).

`StoreCpu` reads the CPU time of PostgreSQL's and Redis's processes from /proc, so a bench can
say how much of the machine the stores used next to the server: on the production profile the
server's own CPU leaves out the SQL it has PostgreSQL run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import redis

DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Backends:
    """What one run made: the server's environment, and what to clean up."""

    env: dict[str, str]
    database: str
    dsn: str
    prefix: str


def _server_dsn(admin_dsn: str, database: str) -> str:
    """The admin DSN with its database replaced (query string kept)."""
    base, _, query = admin_dsn.partition("?")
    server = base.rsplit("/", 1)[0] if base.count("/") > 2 else base
    return f"{server}/{database}" + (f"?{query}" if query else "")


async def _admin(dsn: str, statement: str) -> None:
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        await connection.execute(statement, timeout=60)
    finally:
        await connection.close(timeout=10)


def delete_prefix(redis_url: str, prefix: str) -> int:
    """Deletes every key under `prefix` (SCAN + UNLINK); returns how many."""
    if not prefix or any(c in prefix for c in "*?[]\\"):
        raise ValueError(f"refusing to delete keys under {prefix!r}")
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(client.unlink(*batch))
    finally:
        client.close()
    return deleted


@contextlib.contextmanager
def fresh_backends(pg_dsn: str, redis_url: str, *, pool_max: int = 0) -> Iterator[Backends]:
    """A fresh database and Redis prefix for one server run, removed afterwards."""
    tag = secrets.token_hex(4)
    database = f"bench_{tag}"
    prefix = f"herald-bench-{tag}:"
    dsn = _server_dsn(pg_dsn, database)
    asyncio.run(_admin(pg_dsn, f'CREATE DATABASE "{database}"'))
    # A SIGTERM (timeout, kill) ends the run through the `finally` below, not around it.
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_term)
    try:
        env = {
            "HERALD_POSTGRES_DSN": dsn,
            "HERALD_REDIS_URL": redis_url,
            "HERALD_REDIS_PREFIX": prefix,
        }
        if pool_max:
            env["HERALD_POSTGRES_POOL_MAX"] = str(pool_max)
        yield Backends(env, database, dsn, prefix)
    finally:
        try:
            asyncio.run(_admin(pg_dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        finally:
            delete_prefix(redis_url, prefix)
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, previous)


def _exit_on_term(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


# -- the stores' CPU ---------------------------------------------------------------------------

_STORE_NAMES = {"postgres": "pg", "redis-server": "redis"}


def _parent(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return int(raw[raw.rindex(")") + 2 :].split()[1])


def _store_times() -> dict[int, tuple[str, float]]:
    """pid -> (store, utime + stime seconds) of every PostgreSQL and Redis process."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        store = _STORE_NAMES.get(comm)
        if store is None:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        found[int(entry.name)] = (store, (int(fields[11]) + int(fields[12])) / tick)
    return found


class StoreCpu:
    """CPU seconds PostgreSQL and Redis used since it was made.

    PostgreSQL is every process of the server, or with `pg_pids` (what `PgWatch.pids` found:
    the run's database's backends and the server's own background processes) only those, so
    that other databases' clients on a shared server do not count. A process that started in
    between counts whole; one that ended in between is lost (the server's pool keeps its
    connections, so that is rare)."""

    def __init__(self) -> None:
        self._start = _store_times()

    def close(self, pg_pids: set[int] | None = None) -> dict[str, float]:
        used = {"pg": 0.0, "redis": 0.0}
        for store, seconds in self.per_process(pg_pids).values():
            used[store] += seconds
        return used

    def per_process(self, pg_pids: set[int] | None = None) -> dict[int, tuple[str, float]]:
        """pid -> (store, CPU seconds since this was made)."""
        used: dict[int, tuple[str, float]] = {}
        for pid, (store, seconds) in _store_times().items():
            if store == "pg" and pg_pids is not None and pid not in pg_pids:
                continue
            before = self._start.get(pid)
            used[pid] = (store, seconds - (before[1] if before and before[0] == store else 0.0))
        return used


# -- what PostgreSQL did -----------------------------------------------------------------------

_DB_COUNTERS = (
    "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, deadlocks "
    "FROM pg_stat_database WHERE datname = $1"
)
_ACTIVITY = (
    "SELECT pid, backend_type = 'client backend' AND datname = $1, state, "
    "coalesce(wait_event_type || ':' || wait_event, 'CPU'), left(query, 300), backend_type "
    "FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
    "AND (datname = $1 OR backend_type <> 'client backend')"
)


class PgWatch:
    """Counters of the run's database (pg_stat_database) over a window, and, sampled every
    `interval_s`, what its client backends were doing (pg_stat_activity: state and wait
    event; 'active CPU' means active with no wait event, which is running or on the run queue).
    """

    def __init__(self, dsn: str, database: str, interval_s: float = 0.02) -> None:
        self._dsn = dsn
        self._database = database
        self._interval_s = interval_s
        self._connection: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._start: dict[str, int] = {}
        self.samples = 0
        self.states: dict[str, int] = {}
        # Active (or idle in transaction) backends by the statement they ran, in samples.
        self.statements: dict[str, int] = {}
        # The run's database's backends and the server's background processes (walwriter,
        # checkpointer, autovacuum, ...) seen while sampling, with the postmaster's own pid.
        self.pids: set[int] = set()
        # pid -> backend_type ("client backend", "walwriter", "autovacuum worker", ...).
        self.types: dict[int, str] = {}

    async def _counters(self) -> dict[str, int]:
        assert self._connection is not None
        row = await self._connection.fetchrow(_DB_COUNTERS, self._database)
        return dict(row) if row else {}

    async def start(self) -> None:
        self._connection = await asyncpg.connect(self._dsn, timeout=10)
        self._start = await self._counters()
        postmaster = await self._connection.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        )
        parent = _parent(int(postmaster))
        self.pids.add(parent)
        self.types[parent] = "postmaster"
        await self._poll()
        self._task = asyncio.ensure_future(self._sample())

    async def _poll(self) -> list[asyncpg.Record]:
        assert self._connection is not None
        rows = await self._connection.fetch(_ACTIVITY, self._database)
        for row in rows:
            self.pids.add(int(row[0]))
            self.types[int(row[0])] = str(row[5])
        return rows

    async def _sample(self) -> None:
        while True:
            rows = await self._poll()
            self.samples += 1
            for _, client, state, wait, query, _ in rows:
                if not client:
                    continue
                key = f"{state} {wait}" if state == "active" else str(state)
                self.states[key] = self.states.get(key, 0) + 1
                if state != "idle":
                    name = f"{'active' if state == 'active' else 'in transaction'}: "
                    name += _statement(query or "")
                    self.statements[name] = self.statements.get(name, 0) + 1
            await asyncio.sleep(self._interval_s)

    async def stop(self) -> dict[str, int]:
        """The counters' increase over the window."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        end = await self._counters()
        assert self._connection is not None
        await self._connection.close(timeout=10)
        return {k: end.get(k, 0) - v for k, v in self._start.items()}

    def busy(self) -> list[tuple[str, float]]:
        """(state, mean backends in it), busiest first."""
        n = max(self.samples, 1)
        return sorted(((k, v / n) for k, v in self.states.items()), key=lambda kv: -kv[1])

    def busiest_statements(self) -> list[tuple[str, float]]:
        """(statement, mean backends running it, or idle in a transaction after it), busiest
        first."""
        n = max(self.samples, 1)
        return sorted(((k, v / n) for k, v in self.statements.items()), key=lambda kv: -kv[1])


def pg_cpu_by_type(store_cpu: StoreCpu, watch: PgWatch, elapsed: float) -> list[tuple[str, float]]:
    """PostgreSQL's CPU over the window by process type, in % of one core, busiest first."""
    by: dict[str, float] = {}
    for pid, (store, seconds) in store_cpu.per_process(watch.pids).items():
        if store == "pg":
            kind = watch.types.get(pid, "other")
            by[kind] = by.get(kind, 0.0) + 100 * seconds / elapsed
    return sorted(by.items(), key=lambda kv: -kv[1])


def _statement(query: str) -> str:
    """A statement's first words (the tables it names), whitespace collapsed."""
    words = " ".join(query.split())
    return words[:90]

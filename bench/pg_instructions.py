"""What an append costs PostgreSQL, in CPU instructions per notification: the noise-free
counterpart of bench/pg_ingest.py, as bench/instructions.py is for the node.

    .venv/bin/python bench/pg_instructions.py [--batches 5 25] [--batch 500] [--users 1000]
                                              [--acks] [--marks] [--variant SQL ...]

Starts a throwaway PostgreSQL server under valgrind's callgrind (initdb in a temporary
directory, a free port; as the `postgres` user when run as root), and twice, on a fresh
database migrated to this tree's schema, makes `--batches` calls of `PostgresLogStore.append`
with their status records (`--batch` notifications, each to one of `--users` users, as
bench/pg_ingest.py's "fresh logs"), after five calls of warm-up, on one connection. It prints
the difference of that connection's instructions between the two runs divided by the
difference in notifications: PostgreSQL's marginal instructions per appended notification,
the connection's start-up, the migrations and the warm-up excluded. With `--acks`, every user
also acks its log up to the entry just appended after each call (PostgresAckStore.ack_up_to,
the batch of one round trip a stream node sends): append and ack together. With `--marks`,
every new entry is also marked DELIVERED and then ACKED (PostgresStatusStore.record, one call
each, as the status writer flushes them).

`--variant SQL` runs the statement after the migrations (repeatable): what an index or a table
setting would change, before writing a migration for it. Instructions are not time (a cache
miss costs more than an add), but on this shared machine wall-clock and /proc CPU figures move
by 10-30 % between runs, where these move by well under 1 %. Needs valgrind and PostgreSQL's
server binaries (initdb, postgres); a run takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
from delivery import free_port
from pg_ingest import TENANT, Load

from services.domain import State, user_log
from services.postgres import create_pool, migrate
from services.stream.acks_postgres import PostgresAckStore
from services.stream.log_postgres import PostgresLogStore
from services.stream.status import Mark
from services.stream.status_postgres import PostgresStatusStore

WARMUP = 5


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
            return candidate
        raise SystemExit(f"{name} is not installed")
    return found


def _as_postgres(args: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextlib.contextmanager
def server_under_callgrind() -> Iterator[tuple[str, Path]]:
    """A started server; yields its admin DSN and the directory of the callgrind outputs (one
    file per process, named by its pid, written when the process ends)."""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    directory = Path(tempfile.mkdtemp(prefix="herald-pgcg-"))
    data, out = directory / "data", directory / "out"
    out.mkdir()
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
        shutil.chown(out, "postgres")
    subprocess.run(  # noqa: S603 - fixed tool, arguments made here
        _as_postgres([_binary("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]),
        check=True,
        capture_output=True,
    )
    port = free_port()
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}/cg.%p",
        _binary("postgres"),
        "-D",
        str(data),
        "-p",
        str(port),
        "-k",
        str(directory),
        "-c",
        "listen_addresses=127.0.0.1",
        # Nothing in the background changes the counts: no autovacuum between the runs.
        "-c",
        "autovacuum=off",
    ]
    server = subprocess.Popen(  # noqa: S603
        _as_postgres(command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 120
        while subprocess.run(  # noqa: S603
            [_binary("pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"], check=False
        ).returncode:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server under callgrind did not start")
            time.sleep(1)
        yield dsn, out
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(directory, ignore_errors=True)


def _instructions(out: Path, pid: int) -> int:
    """The total of a process's callgrind output, once the process has written it."""
    path = out / f"cg.{pid}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
        time.sleep(0.5)
    raise SystemExit(f"no callgrind output for backend {pid}")


async def appended(admin_dsn: str, out: Path, args: argparse.Namespace, batches: int) -> int:
    """The instructions of one connection that appends `WARMUP + batches` calls."""
    name = f"pgcg_{os.getpid()}_{batches}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        pool = await create_pool(admin_dsn.rsplit("/", 1)[0] + f"/{name}", min_size=1, max_size=1)
        try:
            await migrate(pool)
            for statement in args.variant:
                await pool.execute(statement)
            pid = await pool.fetchval("SELECT pg_backend_pid()")
            status = PostgresStatusStore(pool)
            store = PostgresLogStore(pool, status)
            now = time.time()
            acks = PostgresAckStore(pool)
            load = Load(args.batch, args.payload)
            calls = [
                load.next_batch(lambda n: f"user-{n % args.users}") for _ in range(WARMUP + batches)
            ]
            for appends, records in calls:
                results = await store.append(TENANT, appends, records)
                if args.marks:
                    # What a stream node's status writer sends for these: each entry written
                    # (DELIVERED), then acked (ACKED), one flush each.
                    for state in (State.DELIVERED, State.ACKED):
                        await status.record(
                            TENANT,
                            [
                                Mark(r.key.name, r.key, state, [(e.cursor, e.notification_id)], now)
                                for r in results
                                for e in r.entries
                            ],
                        )
                if args.acks:
                    # Every user acks its log up to what was just appended: one batch.
                    await asyncio.gather(
                        *(
                            acks.ack_up_to(TENANT, r.key.name, user_log(r.key.name), e.cursor)
                            for r in results
                            for e in r.entries[-1:]
                        )
                    )
        finally:
            await pool.close()
        return _instructions(out, pid)
    finally:
        await admin.execute(f"DROP DATABASE {name}")
        await admin.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--batches", type=int, nargs=2, default=(5, 25))
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--payload", type=int, default=200)
    parser.add_argument("--variant", action="append", default=[], metavar="SQL")
    parser.add_argument(
        "--acks", action="store_true", help="each user also acks up to its new entry (batched)"
    )
    parser.add_argument(
        "--marks",
        action="store_true",
        help="each new entry is also marked DELIVERED, then ACKED (the status written behind)",
    )
    args = parser.parse_args()
    low, high = sorted(args.batches)
    if high <= low:
        parser.error("--batches needs two different counts")
    with server_under_callgrind() as (dsn, out):
        counts = [await appended(dsn, out, args, n) for n in (low, high)]
    per = (counts[1] - counts[0]) / ((high - low) * args.batch)
    print(
        f"PostgreSQL: {per:,.0f} instructions per appended notification"
        f"{' and its ack' if args.acks else ''}{' and its two marks' if args.marks else ''}"
        f" (SendBatch of {args.batch} to {args.users} users, {low} and {high} calls"
        f"{', variants: ' + '; '.join(args.variant) if args.variant else ''})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

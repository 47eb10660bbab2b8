"""PostgreSQL for tests: the server when it is reachable, one fresh database per test session.

The session's database (`herald_test_<pid>_<random>`) is made and migrated on first use and
dropped when the session ends (tests/conftest.py); `clean_pool` empties every table before it
hands out a pool, so tests never see each other's rows. Without a server the tests that need
one are skipped with the reason, and under CI=true they fail instead.

HERALD_TEST_POSTGRES_DSN names the server and a database to connect to for CREATE DATABASE
(default: postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import NoReturn

import asyncpg
import pytest

from services.postgres import create_pool, migrate

ADMIN_DSN = os.environ.get(
    "HERALD_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
# Tables that keep their rows between tests: the schema's own bookkeeping.
_KEPT = ("herald_meta", "herald_schema_migrations")


@dataclass
class _Session:
    database: str = ""
    dsn: str = ""
    # One round trip that empties every table of the schema.
    clean: str = ""
    unreachable: str = ""


_session = _Session()


def unavailable(reason: str) -> NoReturn:
    """Skips the test, or fails it under CI=true, where every server must be there."""
    message = f"PostgreSQL is needed: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def dsn_for(database: str) -> str:
    """ADMIN_DSN's server, connecting to `database`."""
    base, _, query = ADMIN_DSN.partition("?")
    server = base.rsplit("/", 1)[0] if base.count("/") > 2 else base
    return f"{server}/{database}" + (f"?{query}" if query else "")


async def _admin() -> asyncpg.Connection:
    if _session.unreachable:
        unavailable(_session.unreachable)
    try:
        return await asyncpg.connect(ADMIN_DSN, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError) as error:
        _session.unreachable = f"no server at {ADMIN_DSN} ({type(error).__name__}: {error})"
        unavailable(_session.unreachable)


async def create_database() -> str:
    """A new, empty database; returns its name."""
    name = f"herald_test_{os.getpid()}_{secrets.token_hex(4)}"
    admin = await _admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name


async def drop_database(name: str) -> None:
    admin = await _admin()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """A new, empty database for one test (no schema); yields its DSN and drops it after."""
    name = await create_database()
    try:
        yield dsn_for(name)
    finally:
        await drop_database(name)


async def session_dsn() -> str:
    """The DSN of this session's migrated database, made on first use."""
    if not _session.dsn:
        name = await create_database()
        dsn = dsn_for(name)
        _session.database = name
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            await migrate(pool)
            tables = await pool.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename LIKE 'herald\\_%' AND NOT tablename = ANY($1::text[])"
                " ORDER BY tablename",
                list(_KEPT),
            )
        finally:
            await pool.close()
        # DELETE, not TRUNCATE: on tables this small it is about 20 times faster. The names
        # come from the catalog of the database just migrated, not from input.
        _session.clean = "; ".join(
            f"DELETE FROM {row['tablename']}"  # noqa: S608
            for row in tables
        )
        _session.dsn = dsn
    return _session.dsn


@asynccontextmanager
async def clean_pool(max_size: int = 4) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the session's database, every table emptied; closed afterwards."""
    pool = await create_pool(await session_dsn(), min_size=1, max_size=max_size)
    try:
        await pool.execute(_session.clean)
        yield pool
    finally:
        await pool.close()


def drop_session_database() -> None:
    """Drops the session's database, if one was made (at the end of the test session)."""
    if _session.database:
        asyncio.run(drop_database(_session.database))
        _session.database = _session.dsn = ""

"""PostgreSQL for the durable stores: the connection pool, the schema migrations, and the
backend that owns the pool its stores share.

Migrations are the files `services/migrations/NNNN_<name>.sql`, applied in version order, all
in one transaction that holds an advisory lock: two nodes starting together apply them once,
the second waits and then finds nothing to do. `herald_schema_migrations` records what is
applied. A migration is never edited once released; a change is a new file.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import re
from dataclasses import dataclass
from typing import Final

import asyncpg

from services.ingest.idempotency_postgres import PostgresIdempotencyStore
from services.ingest.scheduled_postgres import PostgresScheduledStore
from services.preferences.store_postgres import PostgresPreferenceStore
from services.push.pending_postgres import PostgresPendingPushStore
from services.push.targets_postgres import PostgresPushTargetStore
from services.registry.segments_postgres import PostgresSegmentStore
from services.registry.templates_postgres import PostgresTemplateStore
from services.registry.tenant_settings_postgres import PostgresTenantSettingsStore
from services.secrets_at_rest import SecretBox
from services.stream.acks_postgres import PostgresAckStore
from services.stream.inbox_state_postgres import PostgresInboxStateStore
from services.stream.log_postgres import PostgresLogStore
from services.stream.status_postgres import PostgresStatusStore
from services.webhooks.parked_postgres import PostgresParkedWebhookStore

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key of the migration runner ("HERALD" in ASCII): any constant no other
# application on the same database uses.
MIGRATION_LOCK: Final = 0x4845_5241_4C44
# How much longer than the server's statement timeout a client waits for an answer.
COMMAND_TIMEOUT_MARGIN_S: Final = 2.0
# A migration waits for another node's as long as that takes (the statement timeout is off in
# its transaction); asyncpg has no "no timeout" per call, so: a day.
_MIGRATION_WAIT_S: Final = 86_400.0
_MIGRATION_FILE: Final = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")

_CREATE_MIGRATIONS_TABLE: Final = """
CREATE TABLE IF NOT EXISTS herald_schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped in the package, by version (1, 2, ... with no gap).

    Raises:
        RuntimeError: the versions have a gap or a duplicate (a packaging mistake).
    """
    folder = importlib.resources.files("services").joinpath("migrations")
    found = []
    for item in folder.iterdir():
        match = _MIGRATION_FILE.fullmatch(item.name)
        if match is not None:
            found.append(Migration(int(match[1]), item.name, item.read_text(encoding="utf-8")))
    found.sort(key=lambda migration: migration.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration versions must be 1..n: {[m.name for m in found]}")
    return found


async def migrate(pool: asyncpg.Pool) -> list[int]:
    """Brings the database's schema up to date; returns the versions applied now, in order
    (empty when it already was). Versions the database has beyond this code's are left alone:
    a node of the previous release keeps running against the next release's schema.
    """
    async with pool.acquire() as connection, connection.transaction():
        # Neither waiting for another node's migration nor a long migration is a stuck query.
        await connection.execute("SET LOCAL statement_timeout = 0")
        await connection.execute(
            "SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK, timeout=_MIGRATION_WAIT_S
        )
        await connection.execute(_CREATE_MIGRATIONS_TABLE)
        rows = await connection.fetch("SELECT version FROM herald_schema_migrations")
        done = {int(row["version"]) for row in rows}
        applied = []
        for migration in migrations():
            if migration.version in done:
                continue
            # No arguments: the simple query protocol, so one file may hold many statements.
            await connection.execute(migration.sql, timeout=_MIGRATION_WAIT_S)
            await connection.execute(
                "INSERT INTO herald_schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied.append(migration.version)
    return applied


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Hands a connection back to the pool as it is. asyncpg has rolled back any transaction
    left open before calling this; the stores keep no other session state (no SET outside a
    transaction, no LISTEN, cursors or session advisory locks), so the default reset query
    (RESET ALL and others) would add a round trip to every call for nothing: measured, 708 us
    per `heads` call with it, 425 us without."""
    return None


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    statement_timeout_s: float = 30.0,
    connect_timeout_s: float = 10.0,
) -> asyncpg.Pool:
    """A pool of connections to `dsn` whose statements are cancelled by the server after
    `statement_timeout_s` (0: never), for Herald's stores only (see `_keep_session`).

    The client gives up too, `COMMAND_TIMEOUT_MARGIN_S` later: a server that stopped answering
    without closing the connection (a host gone, a network partition: no RST ever comes) cancels
    nothing, and a call would otherwise wait for the kernel to give up on the connection, many
    minutes. A call to a silent server so ends after about twice that time (asyncpg then sends
    a cancel request, bounded by the same timeout), and the TimeoutError counts as a failure in
    the circuit breaker."""
    command_timeout = (
        statement_timeout_s + COMMAND_TIMEOUT_MARGIN_S if statement_timeout_s else None
    )
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=connect_timeout_s,
        command_timeout=command_timeout,
        reset=_keep_session,
        server_settings={
            "application_name": "herald",
            "statement_timeout": str(round(statement_timeout_s * 1000)),
            # Generic plans from the first execution on. Herald's statements take arrays and
            # look rows up by key, so a plan does not depend on the values; the append
            # (log_postgres._APPEND_ONE) planned with its arrays as constants (what PostgreSQL
            # does for a statement's first five executions) took 0.8-0.9 s for 1,000
            # notifications instead of 50-80 ms, on every new connection.
            "plan_cache_mode": "force_generic_plan",
        },
    )


class PostgresBackend:
    """The PostgreSQL stores of a node, on one pool that this object owns.

    The stores never close the pool (their `aclose` leaves it open); `aclose` here closes the
    stores, then the pool, once.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        close_timeout_s: float = 10.0,
        secrets: SecretBox | None = None,
    ) -> None:
        self.pool = pool
        self.status = PostgresStatusStore(pool)
        self.logs = PostgresLogStore(pool, self.status)
        self.acks = PostgresAckStore(pool)
        self.idempotency = PostgresIdempotencyStore(pool)
        self.templates = PostgresTemplateStore(pool)
        self.tenant_settings = PostgresTenantSettingsStore(pool, secrets or SecretBox())
        self.push_targets = PostgresPushTargetStore(pool)
        self.push_pending = PostgresPendingPushStore(pool)
        self.segments = PostgresSegmentStore(pool)
        self.scheduled = PostgresScheduledStore(pool)
        self.inbox_states = PostgresInboxStateStore(pool)
        self.preferences = PostgresPreferenceStore(pool)
        self.webhooks_parked = PostgresParkedWebhookStore(pool)
        self._close_timeout_s = close_timeout_s

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        statement_timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        close_timeout_s: float = 10.0,
        migrate_schema: bool = True,
        secrets: SecretBox | None = None,
    ) -> PostgresBackend:
        """Connects to `dsn` and, unless told not to, brings the schema up to date. `secrets`
        seals the tenants' stored credentials (services/secrets_at_rest.py)."""
        pool = await create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            statement_timeout_s=statement_timeout_s,
            connect_timeout_s=connect_timeout_s,
        )
        try:
            if migrate_schema:
                applied = await migrate(pool)
                if applied:
                    log.info("schema migrated", extra={"versions": applied})
        except BaseException:
            await pool.close()
            raise
        return cls(pool, close_timeout_s=close_timeout_s, secrets=secrets)

    async def aclose(self) -> None:
        """Closes the stores (which may write what they buffer), then the pool; connections
        still busy after the close timeout are cut."""
        if self.pool.is_closing():
            return
        for store in (
            self.logs,
            self.status,
            self.acks,
            self.idempotency,
            self.templates,
            self.tenant_settings,
            self.segments,
            self.inbox_states,
            self.preferences,
        ):
            await store.aclose()
        try:
            await asyncio.wait_for(self.pool.close(), self._close_timeout_s)
        except TimeoutError:
            log.warning("PostgreSQL connections still busy at close; terminating them")
            self.pool.terminate()

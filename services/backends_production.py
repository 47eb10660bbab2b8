"""The production profile: PostgreSQL for what must last, Redis for what is shared and short.

Each backend has a circuit breaker (services/breaker.py) in front of every store call, and a probe
the node runs on a timer; a breaker that opens turns the services that need the backend
NOT_SERVING, and closes by itself once a probe gets through.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import redis.asyncio as redis_asyncio
import redis.exceptions as redis_errors
from pydantic import SecretStr
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from services.backends import Backend, HealthChange, Stores
from services.breaker import BreakerState, CircuitBreaker, guarded
from services.clock import Clock
from services.config import Config
from services.errors import Unavailable
from services.postgres import PostgresBackend
from services.ratelimit.limiter_redis import RedisRateLimiter
from services.registry.sessions_redis import RedisSessionDirectory
from services.secrets_at_rest import SecretBox
from services.stream.broker_redis import RedisBroker
from services.stream.status_buffered import WriteBehindStatusStore

log = logging.getLogger(__name__)

# What says "the server is not there" (and so counts against the breaker); anything else is an
# error in the request and passes through.
POSTGRES_FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.QueryCanceledError,
)
REDIS_FAILURES: tuple[type[BaseException], ...] = (
    # The session directory says "unreachable" itself (services/registry/sessions_redis.py).
    Unavailable,
    OSError,
    TimeoutError,
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
)


# What keeps a node from starting on PostgreSQL: unreachable, or a DSN it may not use.
STARTUP_FAILURES: tuple[type[BaseException], ...] = (*POSTGRES_FAILURES, asyncpg.PostgresError)


def _secret(value: SecretStr | None, name: str) -> str:
    if value is None:
        raise ValueError(f"the production profile needs {name}")
    return value.get_secret_value()


def _dsn(config: Config) -> str:
    dsn = _secret(config.backends.postgres_dsn, "HERALD_POSTGRES_DSN")
    sslmode = config.backends.postgres_sslmode
    if sslmode:
        dsn += ("&" if "?" in dsn else "?") + f"sslmode={sslmode}"
    return dsn


# Connections per process to Redis. More concurrent commands than this wait for one (at most
# the socket timeout): redis-py's default pool raises instead, which the breaker would count as
# Redis being down (a burst of sends, each checking its rate limit, opened it).
REDIS_POOL_MAX = 100


def _redis_client(url: str) -> redis_asyncio.Redis:
    pool = redis_asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_POOL_MAX,
        timeout=5.0,
        socket_timeout=5.0,
        socket_connect_timeout=5.0,
        # A peer gone without closing (a half-open pub/sub connection) is noticed.
        socket_keepalive=True,
        health_check_interval=15,
        # After a Redis restart each pooled connection is dead once: try again on a new one
        # (from_url clients do not retry by default in redis-py 8).
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        retry_on_error=[redis_errors.ConnectionError, redis_errors.TimeoutError],
    )
    return redis_asyncio.Redis.from_pool(pool)  # the client owns the pool and closes it


async def production_stores(config: Config, clock: Clock, on_change: HealthChange) -> Stores:
    """Connects to PostgreSQL (migrating its schema) and Redis.

    Raises:
        ValueError: a backend cannot be reached at start-up (the message never holds the DSN or
            URL: they may hold passwords).
    """
    settings = config.backends
    redis_url = _secret(settings.redis_url, "HERALD_REDIS_URL")
    secrets = SecretBox.from_setting(
        "" if settings.secrets_keys is None else settings.secrets_keys.get_secret_value()
    )
    if not secrets.encrypting:
        log.warning(
            "HERALD_SECRETS_KEYS is not set: tenants' push credentials and webhook secrets are "
            'stored unencrypted (docs/postgres.md, "Secrets at rest")'
        )
    try:
        postgres = await PostgresBackend.open(
            _dsn(config),
            min_size=settings.postgres_pool_min,
            max_size=settings.postgres_pool_max,
            statement_timeout_s=settings.postgres_statement_timeout_s,
            secrets=secrets,
        )
    except STARTUP_FAILURES as exc:
        raise ValueError(
            f"cannot reach PostgreSQL at HERALD_POSTGRES_DSN ({type(exc).__name__}); "
            "is it running, and does the DSN name a database this user may use?"
        ) from None
    try:
        client = _redis_client(redis_url)
    except ValueError:
        await postgres.aclose()
        raise ValueError("HERALD_REDIS_URL is not a valid redis:// URL") from None
    try:
        await client.ping()
    except REDIS_FAILURES as exc:
        await client.aclose()
        await postgres.aclose()
        raise ValueError(
            f"cannot reach Redis at HERALD_REDIS_URL ({type(exc).__name__}); is it running?"
        ) from None

    backends: list[Backend] = []

    def breaker(name: str, failures: tuple[type[BaseException], ...]) -> CircuitBreaker:
        def changed(state: BreakerState) -> None:
            on_change(next(b for b in backends if b.name == name), state)

        return CircuitBreaker(
            name,
            clock=clock,
            failures=failures,
            failure_threshold=settings.breaker_failures,
            reset_timeout_s=settings.breaker_reset_s,
            on_change=changed,
        )

    pg = breaker("PostgreSQL", POSTGRES_FAILURES)
    rd = breaker("Redis", REDIS_FAILURES)

    async def probe_postgres() -> object:
        async with asyncio.timeout(settings.breaker_reset_s):
            return await postgres.pool.fetchval("SELECT 1")

    async def probe_redis() -> object:
        async with asyncio.timeout(settings.breaker_reset_s):
            return await client.ping()

    backends.append(
        Backend("PostgreSQL", pg, probe_postgres, ("ingest", "stream", "registry"), postgres.aclose)
    )
    backends.append(Backend("Redis", rd, probe_redis, ("stream", "registry"), client.aclose))
    prefix = settings.redis_prefix
    return Stores(
        logs=guarded(postgres.logs, pg),
        acks=guarded(postgres.acks, pg),
        # Written behind in batches: one statement per few milliseconds for every stream of the
        # node, not one per stream message (status_buffered.py). The breaker guards the writes
        # and reads of the store, not the buffer: adding a change to it never waits, and a flush
        # the open circuit refuses is counted as lost, as a refused write was.
        status=WriteBehindStatusStore(guarded(postgres.status, pg)),
        # Not behind the breaker: the broker never raises (a lost publication is caught up by
        # the head check), and a refused unsubscribe would leave a session half-forgotten.
        broker=RedisBroker(client, prefix),
        idempotency=guarded(postgres.idempotency, pg),
        sessions=guarded(
            RedisSessionDirectory(
                client, prefix, presence_retention_s=config.registry.presence_retention_s
            ),
            rd,
        ),
        templates=guarded(postgres.templates, pg),
        tenant_settings=guarded(postgres.tenant_settings, pg),
        push_targets=guarded(postgres.push_targets, pg),
        push_pending=guarded(postgres.push_pending, pg),
        segments=guarded(postgres.segments, pg),
        scheduled=guarded(postgres.scheduled, pg),
        inbox_states=guarded(postgres.inbox_states, pg),
        preferences=guarded(postgres.preferences, pg),
        webhooks_parked=guarded(postgres.webhooks_parked, pg),
        shared=True,
        # Behind the Redis breaker: an open circuit answers at once (open or closed, as set).
        rate_limiter=RedisRateLimiter(
            client, prefix, clock, on_failure=config.rate_limit.redis_failure, breaker=rd
        ),
        backends=tuple(backends),
    )

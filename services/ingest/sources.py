"""The ingestion sources an ingest node runs beside IngestService, from configuration."""

from __future__ import annotations

from typing import Protocol

from services.config import Config, StartupError
from services.ingest.core import IngestCore
from services.ingest.intake import Intake, parse_tenants
from services.ratelimit.admission import Admission


class Source(Protocol):
    async def start(self) -> None: ...

    async def aclose(self, grace_s: float = 5.0) -> None: ...


async def start_sources(config: Config, core: IngestCore, admission: Admission) -> list[Source]:
    """Starts the sources turned on (HERALD_JETSTREAM_ENABLED, HERALD_OUTBOX_ENABLED).

    Raises:
        StartupError: a source cannot reach its server, or lacks a setting it needs.
    """
    sources: list[Source] = []
    try:
        if config.jetstream.enabled:
            from services.ingest.source_jetstream import JetStreamSource

            js = config.jetstream
            intake = Intake(
                core,
                admission,
                source="jetstream",
                service=js.service,
                tenants=parse_tenants(js.tenants),
                max_batch=config.ingest.max_batch,
                pushback_delay_s=js.retry_delay_s,
            )
            jetstream = JetStreamSource(intake, js)
            await jetstream.start()
            sources.append(jetstream)
        if config.outbox.enabled:
            sources.append(await _start_outbox(config, core, admission))
    except BaseException:
        for source in sources:
            await source.aclose(0)
        raise
    return sources


async def _start_outbox(config: Config, core: IngestCore, admission: Admission) -> Source:
    from services.backends_production import STARTUP_FAILURES, _dsn
    from services.ingest.source_outbox import OutboxSource

    outbox = config.outbox
    if outbox.dsn is not None:
        dsn = outbox.dsn.get_secret_value()
    elif config.backends.postgres_dsn is not None:
        dsn = _dsn(config)
    else:
        raise StartupError(
            "HERALD_OUTBOX_ENABLED needs a database: HERALD_OUTBOX_DSN, or the production "
            "profile's HERALD_POSTGRES_DSN"
        )
    intake = Intake(
        core,
        admission,
        source="outbox",
        service=outbox.service,
        tenants=parse_tenants(outbox.tenants),
        max_batch=config.ingest.max_batch,
        pushback_delay_s=outbox.retry_delay_s,
    )
    source = OutboxSource(intake, outbox, dsn, config.backends.postgres_statement_timeout_s)
    try:
        await source.start()
    except STARTUP_FAILURES as exc:
        await source.aclose(0)
        raise StartupError(
            f"cannot drain the outbox ({type(exc).__name__}); is the database reachable and "
            "does it hold herald_outbox (migration 0006_outbox.sql)?"
        ) from None
    return source

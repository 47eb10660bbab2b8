"""Real NATS JetStream for tests: the server at HERALD_TEST_NATS_URL (default 127.0.0.1:4222),
shared, so each test works on streams, subjects and consumers named after a random prefix of
its own and deletes its streams afterwards. When no NATS answers the test is skipped with the
reason, and under CI=true it fails: CI must run the JetStream tests (see redis_support.py)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from services.config import JetStreamSettings

NATS_URL = os.environ.get("HERALD_TEST_NATS_URL", "nats://127.0.0.1:4222")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must run the JetStream tests")
    pytest.skip(reason)


async def connect() -> Client:
    """A client of the test NATS with JetStream (skips, or fails under CI, without one)."""
    try:
        client = await nats.connect(
            NATS_URL, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0
        )
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        _unavailable(
            f"no NATS answers at {NATS_URL} ({type(exc).__name__}; set HERALD_TEST_NATS_URL)"
        )
        raise
    try:
        await client.jetstream().account_info()
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        await client.close()
        _unavailable(f"NATS at {NATS_URL} has no JetStream ({type(exc).__name__})")
        raise
    return client


@dataclass
class Scratch:
    """A test's own JetStream names, and a client to publish and inspect with."""

    client: Client
    js: JetStreamContext
    settings: JetStreamSettings

    @property
    def dead_stream(self) -> str:
        return f"{self.settings.stream}_DEAD"

    def subject(self, tenant: str) -> str:
        return self.settings.subject.replace("*", tenant)


@asynccontextmanager
async def scratch_jetstream(**overrides: object) -> AsyncIterator[Scratch]:
    """Settings on names of the test's own (fast timings); the streams are deleted after."""
    tag = uuid.uuid4().hex[:12]
    fields: dict[str, object] = {
        "enabled": True,
        "url": NATS_URL,
        "stream": f"HERALD_TEST_{tag}",
        "subject": f"herald-test.{tag}.ingest.*",
        "durable": f"herald-test-{tag}",
        "dead_letter_subject": f"herald-test.{tag}.dead",
        "fetch_timeout_s": 0.2,
        "retry_delay_s": 0.05,
        "retry_delay_max_s": 1.0,
        **overrides,
    }
    settings = JetStreamSettings(**fields)  # type: ignore[arg-type]
    client = await connect()
    try:
        yield Scratch(client, client.jetstream(), settings)
    finally:
        js = client.jetstream()
        for stream in (settings.stream, f"{settings.stream}_DEAD"):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(stream)
        await client.close()

"""Per-tenant webhooks end to end through the real protocol: settings over RegistryService,
sends over IngestService, sessions and acks over StreamService, and signed batches arriving at
a real local receiver that verifies them (tests/webhook_receiver.py). The sender is driven by
hand (`run_once`) on the injected clock: no test sleeps a backoff."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from grpc import aio
from prometheus_client import REGISTRY
from pydantic import SecretStr

from herald.v1 import registry_pb2
from services import auth
from services.clock import ManualClock, SystemClock
from services.config import BackendSettings, WebhooksSettings
from services.domain import State, TenantSettingsRecord, Transition, Webhooks
from services.errors import Unavailable
from services.webhooks import WebhookVerificationError, signing, verify
from services.webhooks import sender as webhook_sender
from services.webhooks.events import WebhookEvents
from services.webhooks.parked import ParkedBatch
from services.webhooks.parked_memory import MemoryParkedWebhookStore
from services.webhooks.sender import WebhookSender
from tests.harness import Herald, make_config, start_herald, to_user
from tests.ingest_support import until
from tests.postgres import scratch_database
from tests.redis_support import REDIS_URL, delete_prefix, new_prefix, redis_client, require_redis
from tests.streams import Stream
from tests.test_cli import Cli, _subscribed, _up
from tests.webhook_receiver import Receiver, webhook_receiver

pytestmark = pytest.mark.asyncio

SECRET = "whsec-test-0123456789abcdef"
# The receiver listens on the loopback interface: an internal address, which the sender refuses
# unless the operator allows private hosts.
SENDER = WebhooksSettings(
    worker=False, max_attempts=3, retry_delay_s=1.0, retry_delay_max_s=4.0, allow_private=True
)
PUBLIC_ONLY = WebhooksSettings(
    worker=False, max_attempts=3, retry_delay_s=1.0, retry_delay_max_s=4.0
)


class Setup:
    def __init__(self, herald: Herald, clock: ManualClock, receiver: Receiver) -> None:
        self.herald, self.clock, self.receiver = herald, clock, receiver
        sender = herald.node("stream").webhooks
        assert sender is not None
        self.sender: WebhookSender = sender
        self.stub, self.metadata = herald.registry_stub(
            herald.tokens.backend("acme", auth.SCOPE_TENANT_ADMIN)
        )

    async def put(self, **fields: object) -> registry_pb2.TenantSettings:
        webhooks = registry_pb2.WebhookSettings(
            **{"enabled": True, "url": self.receiver.url, "secret": SECRET, **fields}  # type: ignore[arg-type]
        )
        admin = self.herald.client(
            "registry", self.herald.tokens.backend("acme", auth.SCOPE_TENANT_ADMIN)
        )
        return await admin.put_tenant_settings(registry_pb2.TenantSettings(webhooks=webhooks))

    async def send(self, user: str = "alice") -> str:
        outcome = await self.herald.backend().send(to_user(user, "Invoice paid"))
        return outcome.notification_id  # type: ignore[no-any-return]

    async def until(self, done: Callable[[], bool], step_s: float = 0.5) -> None:
        """Moves the clock on and runs the sender until `done` (bounded in real time: the
        POSTs and the first settings read of a tenant are real I/O)."""

        async def step() -> bool:
            await self.clock.advance(step_s)
            await self.sender.run_once()
            return done()

        await until(step, within=10)

    async def any_parked(self) -> bool:
        return bool(await self.parked())

    async def none_parked(self) -> bool:
        return not await self.parked()

    async def parked(self) -> list[registry_pb2.ParkedWebhook]:
        answer = await self.stub.ListParkedWebhooks(
            registry_pb2.ListParkedWebhooksRequest(), metadata=self.metadata
        )
        return list(answer.batches)


def batches_counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("herald_webhook_batches_total", {"outcome": outcome}) or 0.0


async def known_without_webhooks(sender: WebhookSender, tenant: str) -> bool:
    return not sender.events.wants(tenant)


async def queued(sender: WebhookSender) -> bool:
    return sender.events.queued > 0


async def start(
    tmp_path: Path,
    topology: str,
    clock: ManualClock,
    *,
    sender: WebhooksSettings = SENDER,
    **backends: object,
) -> Herald:
    config = dataclasses.replace(make_config(tmp_path), webhooks=sender)
    if backends:
        config = dataclasses.replace(config, backends=BackendSettings(**backends))  # type: ignore[arg-type]
    return await start_herald(topology, config, clock=clock)


@pytest_asyncio.fixture(params=["up", "split", "production"])
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Setup]:
    clock = ManualClock()
    async with webhook_receiver(SECRET, clock) as receiver, AsyncExitStack() as stack:
        if request.param == "production":
            await require_redis()
            prefix = new_prefix()
            dsn = await stack.enter_async_context(scratch_database())

            async def forget_prefix() -> None:
                async with redis_client() as client:
                    await delete_prefix(client, prefix)

            stack.push_async_callback(forget_prefix)
            herald = await start(
                tmp_path,
                "up",
                clock,
                postgres_dsn=SecretStr(dsn),
                redis_url=SecretStr(REDIS_URL),
                redis_prefix=prefix,
            )
        else:
            herald = await start(tmp_path, request.param, clock)
        stack.push_async_callback(herald.stop)
        yield Setup(herald, clock, receiver)


async def test_delivered_and_acked_events_arrive_signed(setup: Setup) -> None:
    stored = await setup.put(max_delay_ms=500)
    # Write-only: the secret is not read back, only that it is set.
    assert (stored.webhooks.secret, stored.webhooks.secret_set) == ("", True)
    client = setup.herald.user("alice")
    stream = Stream(client)
    await stream.start()
    notification_id = await setup.send()
    (delivery,) = await stream.deliveries(1)
    assert await client.ack([delivery.notification.id]) == 1
    receiver = setup.receiver
    await setup.until(lambda: len(receiver.events) >= 2)
    assert receiver.rejected == []
    assert [(e["type"], e["notification_id"], e["user_id"]) for e in receiver.events] == [
        ("delivered", notification_id, "alice"),
        ("acked", notification_id, "alice"),
    ]
    for request in receiver.delivered:
        assert request.body["tenant_id"] == "acme"
        assert request.body["batch_id"] == request.batch_id
        assert request.headers["content-type"] == "application/json"
        assert request.headers["herald-webhook-signature"].startswith("v1=")
    stream.cancel()


# Parked batches are listed and replayed by the registry: on the split topology with memory
# stores the registry shares no store with the stream node (docs/webhooks.md).
SHARED_PARKING = pytest.mark.parametrize("setup", ["up", "production"], indirect=True)


@SHARED_PARKING
async def test_a_failing_receiver_gets_retries_then_parking_then_a_replay(setup: Setup) -> None:
    await setup.put(events=[registry_pb2.WEBHOOK_EVENT_KIND_DELIVERED], max_delay_ms=100)
    receiver = setup.receiver
    receiver.answer = 503
    parked_before = batches_counted("parked")
    retried_before = batches_counted("retried")
    client = setup.herald.user("alice")
    stream = Stream(client)
    await stream.start()
    notification_id = await setup.send()
    (delivery,) = await stream.deliveries(1)
    # Acked (not redelivered later); the tenant wants only `delivered` events.
    assert await client.ack([delivery.notification.id]) == 1
    await setup.until(lambda: len(receiver.requests) >= 1)
    # Attempts 2 and 3 come after the backoff (1 s, then 2 s at most, on the clock).
    await setup.until(lambda: len(receiver.requests) >= 3)
    await until(setup.any_parked)
    (parked,) = await setup.parked()
    assert len(receiver.requests) == 3
    assert {r.batch_id for r in receiver.requests} == {parked.batch_id}
    assert (parked.reason, parked.attempts, parked.event_count) == (
        "HTTP 503 after 3 attempts",
        3,
        1,
    )
    assert not parked.replay_pending
    assert batches_counted("parked") - parked_before == 1
    assert batches_counted("retried") - retried_before == 2
    # Parked: nothing more is tried until an operator replays it.
    await setup.clock.advance(60)
    await setup.sender.run_once()
    assert len(receiver.requests) == 3

    receiver.answer = 200
    replayed = await setup.stub.ReplayWebhooks(
        registry_pb2.ReplayWebhooksRequest(all=True), metadata=setup.metadata
    )
    assert replayed.replayed == 1
    await setup.until(lambda: len(receiver.delivered) == 1)
    (delivered,) = receiver.delivered
    assert delivered.batch_id == parked.batch_id
    assert [(e["type"], e["notification_id"]) for e in delivered.body["events"]] == [
        ("delivered", notification_id)
    ]
    await until(setup.none_parked)
    assert receiver.rejected == []
    stream.cancel()


@SHARED_PARKING
async def test_a_refused_batch_is_parked_at_once_and_can_be_deleted(setup: Setup) -> None:
    await setup.put(max_delay_ms=100)
    setup.receiver.answer = 410
    stream = Stream(setup.herald.user("alice"))
    await stream.start()
    await setup.send()
    await stream.deliveries(1)
    await setup.until(lambda: len(setup.receiver.requests) >= 1)
    await until(setup.any_parked)
    (parked,) = await setup.parked()
    assert parked.attempts == 1
    assert parked.reason.startswith("HTTP 410 (not retried")
    deleted = await setup.stub.DeleteParkedWebhooks(
        registry_pb2.DeleteParkedWebhooksRequest(batch_ids=[parked.batch_id]),
        metadata=setup.metadata,
    )
    assert deleted.deleted == 1
    assert await setup.parked() == []
    stream.cancel()


# -- settings ------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def herald_up_clock(tmp_path: Path) -> AsyncIterator[tuple[Herald, ManualClock]]:
    clock = ManualClock()
    herald = await start(tmp_path, "up", clock)
    try:
        yield herald, clock
    finally:
        await herald.stop()


@pytest.mark.parametrize(
    ("webhooks", "says"),
    [
        ({"url": "ftp://hooks.example.com/x"}, "https://"),
        ({"url": "http://hooks.example.com/x"}, "loopback"),
        ({"url": "https://user:pw@hooks.example.com/x"}, "credentials"),
        ({"url": "https://hooks.example.com/x#frag"}, "fragment"),
        ({"url": "https://hooks.example.com:99999/x"}, "not a valid URL"),
        ({"url": "https://"}, "host name"),
        ({"url": ""}, "webhooks.url is required"),
        ({"url": "https://h.example.com/" + "a" * 2100}, "longer than"),
        ({"secret": ""}, "webhooks.secret is required"),
        ({"secret": "short"}, "16 to 256"),
        ({"max_batch_events": 1001}, "max_batch_events"),
        ({"max_delay_ms": 60_001}, "max_delay_ms"),
        (
            {
                "events": [
                    registry_pb2.WEBHOOK_EVENT_KIND_ACKED,
                    registry_pb2.WEBHOOK_EVENT_KIND_ACKED,
                ]
            },
            "twice",
        ),
        ({"events": [registry_pb2.WEBHOOK_EVENT_KIND_UNSPECIFIED]}, "WEBHOOK_EVENT_KIND"),
    ],
)
async def test_bad_webhook_settings_are_invalid_argument(
    herald_up_clock: tuple[Herald, ManualClock], webhooks: dict[str, object], says: str
) -> None:
    herald, _ = herald_up_clock
    admin = herald.client("registry", herald.tokens.backend("acme", auth.SCOPE_TENANT_ADMIN))
    fields = {"enabled": True, "url": "https://hooks.example.com/herald", "secret": SECRET}
    fields.update(webhooks)
    with pytest.raises(aio.AioRpcError) as caught:
        await admin.put_tenant_settings(
            registry_pb2.TenantSettings(webhooks=registry_pb2.WebhookSettings(**fields))  # type: ignore[arg-type]
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in (caught.value.details() or "")
    assert SECRET not in (caught.value.details() or "")


async def test_the_secret_is_write_only_and_kept_when_put_back(
    herald_up_clock: tuple[Herald, ManualClock],
) -> None:
    herald, _ = herald_up_clock
    admin = herald.client("registry", herald.tokens.backend("acme", auth.SCOPE_TENANT_ADMIN))
    await admin.put_tenant_settings(
        registry_pb2.TenantSettings(
            webhooks=registry_pb2.WebhookSettings(
                enabled=True, url="https://hooks.example.com/herald", secret=SECRET
            )
        )
    )
    read = (await admin.tenant_settings()).settings
    assert (read.webhooks.secret, read.webhooks.secret_set) == ("", True)
    read.webhooks.max_batch_events = 10
    # Put back as read (secret empty, secret_set true): the stored secret stays.
    await admin.put_tenant_settings(read)
    core = herald.node("up").registry
    assert core is not None
    stored = await core.get_tenant_settings("acme")
    assert stored.webhooks == Webhooks(
        enabled=True, url="https://hooks.example.com/herald", secret=SECRET, max_batch_events=10
    )
    assert SECRET not in repr(stored)
    # http:// to a loopback host is accepted (a local receiver).
    await admin.put_tenant_settings(
        registry_pb2.TenantSettings(
            webhooks=registry_pb2.WebhookSettings(
                enabled=True, url="http://127.0.0.1:9/hooks", secret=SECRET
            )
        )
    )


async def test_a_tenant_without_webhooks_queues_nothing(
    herald_up_clock: tuple[Herald, ManualClock],
) -> None:
    herald, _ = herald_up_clock
    sender = herald.node("up").webhooks
    assert sender is not None
    client = herald.user("alice")
    stream = Stream(client)
    await stream.start()
    await herald.backend().send(to_user("alice"))
    (delivery,) = await stream.deliveries(1)
    await client.ack([delivery.notification.id])
    await until(lambda: known_without_webhooks(sender, "acme"))
    # Known to have none: the next change costs the set lookup only, and queues nothing.
    assert sender.events.queued == 0
    await herald.backend().send(to_user("alice"))
    await stream.deliveries(1)
    assert sender.events.queued == 0
    assert sender.events.take(1e12, flush=True) == []
    stream.cancel()


# -- the pieces --------------------------------------------------------------------------


async def test_verify_accepts_a_signed_batch_and_rejects_the_rest() -> None:
    body = b'{"batch_id":"whb_1","events":[]}'
    headers = signing.headers(SECRET, "whb_1", 1_700_000_000, body)
    assert verify(SECRET, body, headers, now=1_700_000_100) == "whb_1"
    # Header names in any case; a second signature (a secret being rotated) is fine.
    lowered = {k.lower(): v for k, v in headers.items()}
    lowered["herald-webhook-signature"] = "v1=00ff " + lowered["herald-webhook-signature"]
    assert verify(SECRET, body, lowered, now=1_700_000_000) == "whb_1"
    cases: list[tuple[str, bytes, dict[str, str], float, str]] = [
        ("wrong secret", body, headers, 1_700_000_000, "no signature matches"),
        (SECRET, body + b" ", headers, 1_700_000_000, "no signature matches"),
        (SECRET, body, headers, 1_700_000_301, "replayed or delayed"),
        (SECRET, body, headers, 1_699_999_699, "replayed or delayed"),
        (SECRET, body, {**headers, signing.TIMESTAMP_HEADER: "x"}, 1_700_000_000, "number"),
        (SECRET, body, {signing.ID_HEADER: "whb_1"}, 1_700_000_000, "missing"),
    ]
    for secret, sent, sent_headers, now, says in cases:
        with pytest.raises(WebhookVerificationError, match=says):
            verify(secret, sent, sent_headers, now=now)
    # A fresh timestamp on an old body does not verify: the timestamp is signed.
    replayed = {**headers, signing.TIMESTAMP_HEADER: "1700000500"}
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(SECRET, body, replayed, now=1_700_000_500)


async def test_sender_retries_connection_errors_and_429_with_retry_after() -> None:
    """The seam at the outer edge: httpx's MockTransport answers as a flaky receiver would."""
    clock = ManualClock()
    answers: list[Callable[[httpx.Request], Awaitable[httpx.Response]] | int] = [0, 429, 200]
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers.pop(0)
        if answer == 0:
            raise httpx.ConnectError("refused", request=request)
        headers = {"retry-after": "3"} if answer == 429 else {}
        return httpx.Response(int(answer), headers=headers)  # type: ignore[arg-type]

    webhooks = Webhooks(True, "https://hooks.example.com/h", SECRET, max_delay_ms=1)

    async def settings_for(tenant: str) -> TenantSettingsRecord:
        return TenantSettingsRecord(tenant, webhooks=webhooks)

    events = WebhookEvents(settings_for)
    events.configure("acme", webhooks)
    parked = MemoryParkedWebhookStore()
    sender = WebhookSender(
        events=events,
        parked=parked,
        settings_for=settings_for,
        clock=clock,
        settings=SENDER,
        transport=httpx.MockTransport(handler),
    )
    try:
        events.transitions("acme", [Transition("n1", "alice", State.FAILED, "no ack")], clock.now())
        await clock.advance(0.01)
        assert await sender.run_once() == 1  # connection refused: retried after 0.5-1 s
        assert await sender.run_once() == 0
        await clock.advance(1.0)
        assert await sender.run_once() == 1  # 429, Retry-After: 3 s
        await clock.advance(2.5)
        assert await sender.run_once() == 0
        await clock.advance(0.6)
        assert await sender.run_once() == 1
        assert sender.delivered == 1
        assert await parked.list("acme") == []
        stamps = [int(r.headers[signing.TIMESTAMP_HEADER]) for r in seen]
        # Signed again on each attempt.
        assert stamps == sorted(stamps)
        assert stamps[0] < stamps[-1]
        assert len({r.headers[signing.ID_HEADER] for r in seen}) == 1
        for request in seen:
            verify(SECRET, request.content, dict(request.headers), now=stamps[-1])
    finally:
        await sender.aclose()


async def test_a_clean_stop_parks_what_was_not_delivered(tmp_path: Path) -> None:
    """Queued events are not lost at shutdown: the last attempt fails (nothing listens), so the
    batch is parked durably in PostgreSQL and a node started later lists it."""
    await require_redis()
    clock = ManualClock()
    prefix = new_prefix()
    async with scratch_database() as dsn:
        # Any: `start` takes them as BackendSettings fields.
        backends: dict[str, Any] = {
            "postgres_dsn": SecretStr(dsn),
            "redis_url": SecretStr(REDIS_URL),
            "redis_prefix": prefix,
        }
        try:
            first = await start(tmp_path / "a", "up", clock, **backends)
            try:
                admin = first.client(
                    "registry", first.tokens.backend("acme", auth.SCOPE_TENANT_ADMIN)
                )
                await admin.put_tenant_settings(
                    registry_pb2.TenantSettings(
                        webhooks=registry_pb2.WebhookSettings(
                            enabled=True,
                            url="http://127.0.0.1:9/nobody-listens",
                            secret=SECRET,
                            max_delay_ms=60_000,
                        )
                    )
                )
                stream = Stream(first.user("alice"))
                await stream.start()
                await first.backend().send(to_user("alice"))
                await stream.deliveries(1)
                sender = first.node("up").webhooks
                assert sender is not None
                await until(lambda: queued(sender))
                stream.cancel()
            finally:
                await first.stop()
            second = await start(tmp_path / "b", "up", clock, **backends)
            try:
                stub, metadata = second.registry_stub(
                    second.tokens.backend("acme", auth.SCOPE_TENANT_ADMIN)
                )
                answer = await stub.ListParkedWebhooks(
                    registry_pb2.ListParkedWebhooksRequest(), metadata=metadata
                )
                (parked,) = answer.batches
                assert parked.event_count == 1
                assert "connection failed" in parked.reason
                assert "node stopped" in parked.reason
            finally:
                await second.stop()
        finally:
            async with redis_client() as client:
                await delete_prefix(client, prefix)


# -- internal hosts ---------------------------------------------------------------------------


@pytest_asyncio.fixture
async def public_only(tmp_path: Path) -> AsyncIterator[Setup]:
    """`herald up` whose sender keeps the default: webhooks to public hosts only."""
    clock = ManualClock()
    async with webhook_receiver(SECRET, clock) as receiver:
        herald = await start(tmp_path, "up", clock, sender=PUBLIC_ONLY)
        try:
            yield Setup(herald, clock, receiver)
        finally:
            await herald.stop()


async def parked_after_a_send(setup: Setup, url: str) -> registry_pb2.ParkedWebhook:
    """Sets the tenant's URL, delivers one notification to alice (acked) and runs the sender
    until the batch of its `delivered` event is parked; returns the parked batch."""
    parked_before = batches_counted("parked")
    await setup.put(url=url, events=[registry_pb2.WEBHOOK_EVENT_KIND_DELIVERED], max_delay_ms=100)
    client = setup.herald.user("alice")
    stream = Stream(client)
    await stream.start()
    try:
        await setup.send()
        (delivery,) = await stream.deliveries(1)
        assert await client.ack([delivery.notification.id]) == 1
        await setup.until(lambda: batches_counted("parked") > parked_before)
        (parked,) = await setup.parked()
        return parked
    finally:
        stream.cancel()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_receiver_on_an_internal_host_is_never_posted_to(
    public_only: Setup, host: str
) -> None:
    """A tenant's admin sets the URL; the node POSTs from inside the operator's network. An
    internal address, by literal or by what a name resolves to, is refused and parked."""
    parked = await parked_after_a_send(
        public_only, public_only.receiver.url.replace("127.0.0.1", host)
    )
    assert public_only.receiver.requests == []
    assert parked.attempts == 1  # not retried: it is refused until the URL changes
    assert f"'{host}' is not a public" in parked.reason
    assert "HERALD_WEBHOOKS_ALLOW_PRIVATE=true" in parked.reason


async def test_an_internal_address_met_only_at_the_connection_is_refused_as_at_the_check(
    public_only: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name resolves to a public address for the check before the POST and
    to an internal one for the connection. The connection is refused, and the batch is parked
    with the public-host reason at once, not retried as a network failure."""

    async def public(url: str) -> None:  # what the first DNS answer made of the name
        return None

    monkeypatch.setattr(webhook_sender, "check_url_resolves_public", public)
    parked = await parked_after_a_send(
        public_only, public_only.receiver.url.replace("127.0.0.1", "localhost")
    )
    assert public_only.receiver.requests == []
    assert parked.attempts == 1
    assert "'localhost' resolves to an address that is not public" in parked.reason
    assert "HERALD_WEBHOOKS_ALLOW_PRIVATE=true" in parked.reason


async def test_a_url_whose_host_is_no_valid_name_is_parked_not_lost(public_only: Setup) -> None:
    # Accepted as a URL, but no resolver can take the name (an empty label): the batch is
    # parked with the reason, not dropped by an exception in the sender.
    parked = await parked_after_a_send(public_only, "https://a..example.com/hooks")
    assert parked.attempts == 1
    assert parked.reason.startswith("'a..example.com' is not a valid host name")


async def test_a_receiver_whose_name_does_not_resolve_is_retried(public_only: Setup) -> None:
    retried_before = batches_counted("retried")
    parked = await parked_after_a_send(public_only, "https://receiver.invalid/hooks")
    # Three attempts (SENDER's max_attempts), each a DNS failure, then parked.
    assert batches_counted("retried") - retried_before == 2
    assert parked.attempts == 3
    assert parked.reason.startswith("the host of webhooks.url does not resolve")


# -- the CLI ----------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def cli(tmp_path: Path) -> AsyncIterator[Cli]:
    runner = Cli(tmp_path / "data")
    try:
        yield runner
    finally:
        await runner.stop()


async def test_herald_webhooks_lists_replays_and_deletes(cli: Cli, tmp_path: Path) -> None:
    """`herald up` in a process of its own, on the real clock: one attempt, then parked."""
    async with webhook_receiver(SECRET, SystemClock()) as receiver:
        receiver.answer = 500
        cli.env["HERALD_WEBHOOKS_MAX_ATTEMPTS"] = "1"
        cli.env["HERALD_WEBHOOKS_ALLOW_PRIVATE"] = "true"  # the receiver is on the loopback
        address = await _up(cli)
        env = {"HERALD_ADDRESS": address, "HERALD_TENANT": "acme"}
        settings = tmp_path / "settings.json"
        settings.write_text(
            json.dumps(
                {
                    "webhooks": {
                        "enabled": True,
                        "url": receiver.url,
                        "secret": SECRET,
                        "maxDelayMs": 50,
                        "events": ["WEBHOOK_EVENT_KIND_DELIVERED"],
                    }
                }
            )
        )
        await cli.run("tenant", "put", "--file", str(settings), **env)
        assert "no parked webhook batches" in await cli.run("webhooks", "list", **env)
        tail = await cli.start("tail", "--user", "alice", "--count", "1", **env)
        await _subscribed(tail)
        await cli.run("send", "--user", "alice", "--title", "hi", **env)

        async def parked() -> bool:
            return bool((await cli.json("webhooks", "list", **env))["batches"])

        await until(parked, within=20)
        (batch,) = (await cli.json("webhooks", "list", **env))["batches"]
        assert batch["reason"] == "HTTP 500 after 1 attempts"
        assert batch["eventCount"] == 1
        text = await cli.run("webhooks", "list", **env)
        assert batch["batchId"] in text
        assert "HTTP 500" in text
        error = await cli.fail("webhooks", "replay", **env)
        assert "BATCH_ID" in error
        assert "--all" in error

        receiver.answer = 200
        replay = await cli.json("webhooks", "replay", batch["batchId"], **env)
        assert replay == {"replayed": 1}

        async def delivered() -> bool:
            return len(receiver.delivered) == 1

        await until(delivered, within=20)
        assert receiver.delivered[0].batch_id == batch["batchId"]
        assert receiver.rejected == []
        assert await cli.json("webhooks", "delete", "--all", **env) == {"deleted": 0}


async def test_a_batch_the_store_could_not_park_is_parked_next_round() -> None:
    """PostgreSQL out of reach (its breaker open) when a batch is to be parked: it stays in
    memory and is parked once the store answers again."""
    clock = ManualClock()

    class Outage(MemoryParkedWebhookStore):
        down = True

        async def park(self, batches: Sequence[ParkedBatch]) -> None:
            if self.down:
                raise Unavailable("PostgreSQL is unavailable")
            await super().park(batches)

        async def claim(self, now: float, limit: int, lease_s: float) -> list[ParkedBatch]:
            if self.down:
                raise Unavailable("PostgreSQL is unavailable")
            return await super().claim(now, limit, lease_s)

    async def refused(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400)

    webhooks = Webhooks(True, "https://hooks.example.com/h", SECRET, max_delay_ms=1)

    async def settings_for(tenant: str) -> TenantSettingsRecord:
        return TenantSettingsRecord(tenant, webhooks=webhooks)

    events = WebhookEvents(settings_for)
    events.configure("acme", webhooks)
    store = Outage()
    sender = WebhookSender(
        events=events,
        parked=store,
        settings_for=settings_for,
        clock=clock,
        settings=SENDER,
        transport=httpx.MockTransport(refused),
    )
    try:
        events.transitions("acme", [Transition("n1", "bob", State.EXPIRED, "ttl")], clock.now())
        await clock.advance(0.01)
        assert await sender.run_once() == 1
        assert await store.list("acme") == []
        store.down = False
        await sender.run_once()
        (parked,) = await store.list("acme")
        assert parked.reason.startswith("HTTP 400")
    finally:
        await sender.aclose()


async def test_a_slow_receiver_holds_up_only_its_own_tenant() -> None:
    clock = ManualClock()
    release = asyncio.Event()
    fast_done = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "slow.example.com":
            await release.wait()
        else:
            fast_done.set()
        return httpx.Response(204)

    hooks = {
        tenant: Webhooks(True, f"https://{tenant}.example.com/h", SECRET, max_delay_ms=1)
        for tenant in ("slow", "fast")
    }

    async def settings_for(tenant: str) -> TenantSettingsRecord:
        return TenantSettingsRecord(tenant, webhooks=hooks[tenant])

    events = WebhookEvents(settings_for)
    for tenant, webhooks in hooks.items():
        events.configure(tenant, webhooks)
    sender = WebhookSender(
        events=events,
        parked=MemoryParkedWebhookStore(),
        settings_for=settings_for,
        clock=clock,
        settings=SENDER,
        transport=httpx.MockTransport(handler),
    )
    loop = asyncio.ensure_future(sender.run())
    try:
        failed = [Transition("n1", "alice", State.FAILED, "no ack")]
        events.transitions("slow", failed, clock.now())
        await clock.advance(0.5)  # a round: the slow POST starts and hangs
        events.transitions("fast", failed, clock.now())
        await clock.advance(0.5)
        async with asyncio.timeout(5):
            await fast_done.wait()
        release.set()
    finally:
        loop.cancel()
        await sender.aclose()
    assert sender.delivered == 2

"""Notification preferences through the real protocol, on the embedded profile and the
production profile (PostgreSQL and Redis): Get/PutPreferences over RegistryService, sends over
IngestService, what arrives over StreamService, GetStatus, and the push fallback at local
provider servers (the `setup` fixture of tests/test_push_fallback.py, worker driven by hand)."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from google.protobuf import json_format
from grpc import aio

from herald.v1 import ingest_pb2, notification_pb2, registry_pb2, registry_pb2_grpc
from services import auth
from services.client import HeraldClient
from services.preferences.store import MAX_CATEGORIES
from tests.harness import Herald, to_user
from tests.ingest_support import inbox_titles, until
from tests.streams import Stream
from tests.test_ingest_outbox import INSERT_JSON, Start
from tests.test_ingest_outbox import outbox_db as outbox_db  # the fixtures, reused
from tests.test_ingest_outbox import start as start
from tests.test_push_fallback import Setup, fcm_target
from tests.test_push_fallback import setup as setup

pytestmark = pytest.mark.asyncio

MUTE_IN_APP = registry_pb2.DeliveryPreference(category="marketing", in_app=False)


def registry(client: HeraldClient) -> registry_pb2_grpc.RegistryServiceStub:
    return registry_pb2_grpc.RegistryServiceStub(client._channel)


async def put(
    herald: Herald,
    user: str,
    *categories: registry_pb2.DeliveryPreference,
    tenant: str = "acme",
    defaults: registry_pb2.DeliveryPreference | None = None,
) -> registry_pb2.Preferences:
    """Puts `user`'s preferences with the user's own token."""
    client = herald.client("registry", herald.tokens.user(tenant, user))
    request = registry_pb2.PutPreferencesRequest(
        preferences=registry_pb2.Preferences(categories=categories, defaults=defaults)
    )
    answer = await registry(client).PutPreferences(request, metadata=client.metadata())
    return answer.preferences


def of(category: str, title: str, *users: str, **fields: object) -> notification_pb2.Notification:
    notification = to_user(users[0], title, category=category, **fields)
    if len(users) > 1:
        notification.target.users.user_ids.extend(users)
    return notification


async def refused(call: object) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    return error.value


async def test_muted_marketing_in_app_is_not_delivered_but_billing_is(setup: Setup) -> None:
    herald = setup.herald
    stored = await put(herald, "alice", MUTE_IN_APP)
    assert [(c.category, c.HasField("in_app"), c.in_app) for c in stored.categories] == [
        ("marketing", True, False)
    ]
    assert not stored.categories[0].HasField("push")
    assert stored.HasField("updated_at")
    backend = herald.backend()
    sale = await backend.send(of("marketing", "Sale", "alice"))
    assert sale.recipient_count == 0
    invoice = await backend.send(of("billing", "Invoice", "alice"))
    assert invoice.recipient_count == 1
    alice = herald.user("alice")
    assert await inbox_titles(alice) == ["Invoice"]
    stream = Stream(alice)
    await stream.start()
    (delivery,) = await stream.deliveries(1)
    assert delivery.notification.content.title == "Invoice"
    assert delivery.notification.category == "billing"
    stream.cancel()
    status = await backend.status(sale.notification_id)
    (recipient,) = status.recipients
    assert recipient.user_id == "alice"
    assert recipient.state == ingest_pb2.DELIVERY_STATE_SUPPRESSED
    assert "preferences" in recipient.reason


async def test_a_user_list_send_skips_only_the_users_who_muted(setup: Setup) -> None:
    herald = setup.herald
    await put(herald, "alice", MUTE_IN_APP)
    sent = await herald.backend().send(of("marketing", "Sale", "alice", "bob", "carol"))
    assert sent.recipient_count == 2
    assert await inbox_titles(herald.user("alice")) == []
    assert await inbox_titles(herald.user("bob")) == ["Sale"]
    status = await herald.backend().status(sent.notification_id)
    states = {r.user_id: r.state for r in status.recipients}
    assert states == {
        "alice": ingest_pb2.DELIVERY_STATE_SUPPRESSED,
        "bob": ingest_pb2.DELIVERY_STATE_QUEUED,
        "carol": ingest_pb2.DELIVERY_STATE_QUEUED,
    }


async def test_critical_marketing_still_arrives(setup: Setup) -> None:
    herald = setup.herald
    await put(herald, "alice", defaults=registry_pb2.DeliveryPreference(in_app=False, push=False))
    backend = herald.backend()
    assert (await backend.send(of("marketing", "Sale", "alice"))).recipient_count == 0
    assert (await backend.send(of("", "Uncategorised", "alice"))).recipient_count == 0
    critical = await backend.send(of("marketing", "Account locked", "alice", critical=True))
    assert critical.recipient_count == 1
    assert await inbox_titles(herald.user("alice")) == ["Account locked"]


async def test_a_muted_push_path_gets_no_push(setup: Setup) -> None:
    await setup.register("alice", fcm_target())
    await put(
        setup.herald,
        "alice",
        registry_pb2.DeliveryPreference(category="marketing", push=False),
    )
    backend = setup.herald.backend()
    # Offline alice: a push at once, unless the category's push is off.
    sale = await backend.send(of("marketing", "Sale", "alice"))
    assert sale.recipient_count == 1  # still in-app
    assert await setup.worker.run_once() == 0  # no pending push was even stored
    invoice = await backend.send(of("billing", "Invoice", "alice"))
    assert await setup.worker.run_once() == 1
    (pushed,) = setup.pushes()
    assert pushed["data"] == {"notification_id": invoice.notification_id}
    critical = await backend.send(of("marketing", "Locked", "alice", critical=True))
    assert await setup.worker.run_once() == 1
    assert setup.pushes()[-1]["data"] == {"notification_id": critical.notification_id}


async def test_muted_in_app_with_push_on_is_pushed_at_once(setup: Setup) -> None:
    """Nothing reaches the open session, so there is nothing to wait an ack for."""
    await setup.register("alice", fcm_target())
    await put(setup.herald, "alice", MUTE_IN_APP)
    stream = Stream(setup.herald.user("alice"))
    await stream.start()
    sent = await setup.herald.backend().send(of("marketing", "Sale", "alice"))
    assert await setup.worker.run_once() == 1
    (pushed,) = setup.pushes()
    assert pushed["data"] == {"notification_id": sent.notification_id}
    stream.cancel()


async def test_another_users_preferences_are_permission_denied(setup: Setup) -> None:
    herald = setup.herald
    bob = herald.client("registry", herald.tokens.user("acme", "bob"))
    stub, md = registry(bob), bob.metadata()
    denied = await refused(
        stub.GetPreferences(registry_pb2.GetPreferencesRequest(user_id="alice"), metadata=md)
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    denied = await refused(
        stub.PutPreferences(
            registry_pb2.PutPreferencesRequest(
                user_id="alice", preferences=registry_pb2.Preferences(categories=[MUTE_IN_APP])
            ),
            metadata=md,
        )
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "own user" in (denied.details() or "")
    # A backend of the tenant acts for any of its users, and must name one.
    backend = herald.backend()
    stub, md = registry(backend), backend.metadata()
    await stub.PutPreferences(
        registry_pb2.PutPreferencesRequest(
            user_id="alice", preferences=registry_pb2.Preferences(categories=[MUTE_IN_APP])
        ),
        metadata=md,
    )
    read = await stub.GetPreferences(
        registry_pb2.GetPreferencesRequest(user_id="alice"), metadata=md
    )
    assert [c.category for c in read.preferences.categories] == ["marketing"]
    unnamed = await refused(stub.GetPreferences(registry_pb2.GetPreferencesRequest(), metadata=md))
    assert unnamed.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A token with neither scope.
    admin = herald.client("registry", herald.tokens.backend("acme", auth.SCOPE_TENANT_ADMIN))
    scoped = await refused(
        registry(admin).GetPreferences(
            registry_pb2.GetPreferencesRequest(user_id="alice"), metadata=admin.metadata()
        )
    )
    assert scoped.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_preferences_are_per_tenant(setup: Setup) -> None:
    herald = setup.herald
    await put(herald, "alice", MUTE_IN_APP, tenant="globex")
    sent = await herald.backend("acme").send(of("marketing", "Sale", "alice"))
    assert sent.recipient_count == 1
    client = herald.client("registry", herald.tokens.user("acme", "alice"))
    mine = await registry(client).GetPreferences(
        registry_pb2.GetPreferencesRequest(), metadata=client.metadata()
    )
    assert list(mine.preferences.categories) == []
    assert not mine.preferences.HasField("updated_at")
    other = await herald.backend("globex").send(of("marketing", "Sale", "alice"))
    assert other.recipient_count == 0


async def test_nothing_stored_reads_as_everything_on(herald_up: Herald) -> None:
    client = herald_up.client("registry", herald_up.tokens.user("acme", "alice"))
    read = await registry(client).GetPreferences(
        registry_pb2.GetPreferencesRequest(), metadata=client.metadata()
    )
    assert read.preferences.user_id == "alice"
    assert not read.preferences.defaults.HasField("in_app")
    assert list(read.preferences.categories) == []


@pytest.mark.parametrize(
    ("preferences", "says"),
    [
        (registry_pb2.Preferences(categories=[{"category": "x" * 65}]), "not a category name"),
        (registry_pb2.Preferences(categories=[{"category": "bad name"}]), "not a category name"),
        (registry_pb2.Preferences(categories=[{"category": ""}]), "not a category name"),
        (registry_pb2.Preferences(categories=[MUTE_IN_APP, MUTE_IN_APP]), "listed twice"),
        (
            registry_pb2.Preferences(
                categories=[{"category": f"c{i}"} for i in range(MAX_CATEGORIES + 1)]
            ),
            f"at most {MAX_CATEGORIES}",
        ),
        (registry_pb2.Preferences(defaults={"category": "marketing"}), "defaults.category"),
        (registry_pb2.Preferences(user_id="bob"), "preferences.user_id"),
    ],
)
async def test_bad_preferences_are_invalid_argument(
    herald_up: Herald, preferences: registry_pb2.Preferences, says: str
) -> None:
    client = herald_up.client("registry", herald_up.tokens.user("acme", "alice"))
    error = await refused(
        registry(client).PutPreferences(
            registry_pb2.PutPreferencesRequest(preferences=preferences),
            metadata=client.metadata(),
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in (error.details() or "")


@pytest.mark.parametrize("category", ["x" * 65, "has space", "-leading", "ünicode"])
async def test_a_send_with_a_bad_category_is_invalid_argument(
    herald_up: Herald, category: str
) -> None:
    error = await refused(herald_up.backend().send(of(category, "Hi", "alice")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "category" in (error.details() or "")


async def test_a_send_through_the_outbox_respects_preferences(
    start: Start, outbox_db: tuple[str, str]
) -> None:
    """The ingestion sources go through the same path as Send."""
    herald = await start()
    await put(herald, "alice", MUTE_IN_APP)
    stream = Stream(herald.user("alice"))
    await stream.start()
    backend = await asyncpg.connect(outbox_db[0])
    try:
        async with backend.transaction():
            for category, title in (("marketing", "Sale"), ("billing", "Invoice")):
                payload = json_format.MessageToJson(of(category, title, "alice"), indent=None)
                await backend.execute(INSERT_JSON, "acme", payload)
        (delivery,) = await stream.deliveries(1, within=10)
        assert delivery.notification.content.title == "Invoice"
        await until(lambda: _outbox_empty(backend))
        assert await inbox_titles(herald.user("alice")) == ["Invoice"]
    finally:
        stream.cancel()
        await backend.close()


async def _outbox_empty(connection: asyncpg.Connection) -> bool:
    return await connection.fetchval("SELECT count(*) FROM herald_outbox") == 0

"""The offline fallback end to end through the real protocol: push targets registered over
RegistryService, tenant settings with provider credentials, sends over IngestService, sessions
over StreamService, and the pushes arriving at local provider servers (tests/push_servers.py).
The worker is driven by hand (`run_once`) on the injected clock: no test sleeps the delay."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from grpc import aio

from herald.v1 import registry_pb2
from services import auth
from services.clock import ManualClock
from services.config import PushSettings
from services.push.fallback import PushFallbackWorker
from services.push.webpush import b64url
from tests.conftest import Deploy
from tests.harness import Herald, to_user
from tests.production import production_db, start_production
from tests.push_servers import Answer, ScriptedServer, http1_server, http2_server
from tests.streams import Stream

pytestmark = pytest.mark.asyncio

DELAY_S = 30
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
APNS_KEY = ec.generate_private_key(ec.SECP256R1())
VAPID_KEY = ec.generate_private_key(ec.SECP256R1())
UA_KEY = ec.generate_private_key(ec.SECP256R1())


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def service_account(server: ScriptedServer) -> str:
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "acme-app",
            "private_key_id": "k1",
            "private_key": pem(RSA_KEY),
            "client_email": "herald@acme-app.iam.gserviceaccount.com",
            "token_uri": "https://oauth2.googleapis.com/token",
        }
    )


def fallback(fcm: ScriptedServer, enabled: bool = True) -> registry_pb2.PushFallbackSettings:
    return registry_pb2.PushFallbackSettings(
        enabled=enabled,
        delay_seconds=DELAY_S,
        fcm=registry_pb2.FcmCredentials(
            project_id="acme-app", service_account_json=service_account(fcm)
        ),
        apns=registry_pb2.ApnsCredentials(
            team_id="TEAM123456",
            key_id="KEY1234567",
            private_key_p8=pem(APNS_KEY),
            topic="com.acme.app",
        ),
        web_push=registry_pb2.WebPushCredentials(
            vapid_private_key=pem(VAPID_KEY), subject="mailto:ops@acme.example"
        ),
    )


class Setup:
    def __init__(
        self, herald: Herald, clock: ManualClock, fcm: ScriptedServer, apns: ScriptedServer
    ) -> None:
        self.herald, self.clock, self.fcm, self.apns = herald, clock, fcm, apns
        worker = herald.node("ingest").push
        assert worker is not None
        self.worker: PushFallbackWorker = worker

    def registry(self, token: str) -> tuple[object, tuple[tuple[str, str], ...]]:
        return self.herald.registry_stub(token)

    async def register(
        self, user: str, request: registry_pb2.RegisterPushTargetRequest
    ) -> registry_pb2.PushTarget:
        stub, metadata = self.herald.registry_stub(self.herald.tokens.user("acme", user))
        answer = await stub.RegisterPushTarget(request, metadata=metadata)  # type: ignore[attr-defined]
        return answer.target  # type: ignore[no-any-return]

    async def targets(self, user: str) -> list[registry_pb2.PushTarget]:
        stub, metadata = self.herald.registry_stub(self.herald.tokens.user("acme", user))
        answer = await stub.ListPushTargets(  # type: ignore[attr-defined]
            registry_pb2.ListPushTargetsRequest(), metadata=metadata
        )
        return list(answer.targets)

    async def send(self, user: str, title: str = "Invoice paid") -> str:
        outcome = await self.herald.backend().send(to_user(user, title))
        return outcome.notification_id  # type: ignore[no-any-return]

    def pushes(self) -> list[dict[str, object]]:
        return [json.loads(r.body)["message"] for r in self.fcm.to("/v1/")]


def push_settings(fcm: ScriptedServer, apns: ScriptedServer) -> PushSettings:
    return PushSettings(
        worker=False,
        fcm_base_url=fcm.url,
        fcm_token_url=f"{fcm.url}/token",
        apns_base_url=apns.url,
        apns_cleartext_h2=True,
        webpush_allow_http=True,
        webpush_allow_private=True,
        retry_delay_s=0.01,
        retry_delay_max_s=0.05,
    )


# Embedded (memory stores) and the production profile (PostgreSQL and Redis). The split
# topology on memory stores has no fallback: its ingest node shares no store with the registry
# (docs/push.md).
@pytest_asyncio.fixture(params=["memory", "production"])
async def setup(
    deploy: Deploy, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Setup]:
    async with http1_server() as fcm, http2_server() as apns, AsyncExitStack() as stack:
        fcm.defaults["/token"] = Answer.json(200, {"access_token": "ya29.t", "expires_in": 3599})
        push = push_settings(fcm, apns)
        if request.param == "memory":
            herald, clock = await deploy("up", push=push)
        else:
            dsn, prefix = await stack.enter_async_context(production_db())
            clock = ManualClock()
            herald = await start_production(tmp_path, dsn, prefix, clock, push=push)
            stack.push_async_callback(herald.stop)
        admin = herald.client("registry", herald.tokens.backend("acme", auth.SCOPE_TENANT_ADMIN))
        await admin.put_tenant_settings(registry_pb2.TenantSettings(push_fallback=fallback(fcm)))
        yield Setup(herald, clock, fcm, apns)


async def test_a_pending_push_survives_a_restart_on_postgres(tmp_path: Path) -> None:
    async with http1_server() as fcm, http2_server() as apns, production_db() as (dsn, prefix):
        fcm.defaults["/token"] = Answer.json(200, {"access_token": "ya29.t", "expires_in": 3599})
        push = push_settings(fcm, apns)
        clock = ManualClock()
        first = await start_production(tmp_path / "a", dsn, prefix, clock, push=push)
        try:
            admin = first.client("registry", first.tokens.backend("acme", auth.SCOPE_TENANT_ADMIN))
            await admin.put_tenant_settings(
                registry_pb2.TenantSettings(push_fallback=fallback(fcm))
            )
            setup = Setup(first, clock, fcm, apns)
            await setup.register("alice", fcm_target())
            notification_id = await setup.send("alice")
        finally:
            await first.stop()
        assert fcm.to("/v1/") == []
        second = await start_production(tmp_path / "b", dsn, prefix, clock, push=push)
        try:
            after = Setup(second, clock, fcm, apns)
            assert await after.worker.run_once() == 1
        finally:
            await second.stop()
        (pushed,) = after.pushes()
        assert pushed["token"] == "fcm-token-alice"
        assert pushed["data"] == {"notification_id": notification_id}


FCM_TOKEN = "fcm-token-alice"


def fcm_target(token: str = FCM_TOKEN) -> registry_pb2.RegisterPushTargetRequest:
    return registry_pb2.RegisterPushTargetRequest(kind=registry_pb2.PUSH_KIND_FCM, token=token)


async def test_offline_user_gets_a_push_at_once(setup: Setup) -> None:
    await setup.register("alice", fcm_target())
    apns_token = "ab" * 32
    await setup.register(
        "alice",
        registry_pb2.RegisterPushTargetRequest(kind=registry_pb2.PUSH_KIND_APNS, token=apns_token),
    )
    notification_id = await setup.send("alice")
    assert await setup.worker.run_once() == 1
    assert setup.pushes() == [
        {
            "token": "fcm-token-alice",
            "notification": {"title": "Invoice paid", "body": ""},
            "data": {"notification_id": notification_id},
            "android": {"priority": "normal", "ttl": "86400s"},
        }
    ]
    (apns,) = setup.apns.requests
    assert apns.path == f"/3/device/{apns_token}"
    assert apns.http_version == "HTTP/2"
    assert json.loads(apns.body)["aps"]["alert"]["title"] == "Invoice paid"
    # Handled: nothing is pushed twice.
    await setup.clock.advance(DELAY_S + 1)
    assert await setup.worker.run_once() == 0
    assert len(setup.pushes()) == 1


async def test_online_user_who_acks_in_time_gets_no_push(setup: Setup) -> None:
    await setup.register("alice", fcm_target())
    client = setup.herald.user("alice")
    stream = Stream(client)
    await stream.start()
    notification_id = await setup.send("alice")
    (delivery,) = await stream.deliveries(1)
    assert await setup.worker.run_once() == 1  # online: waits for the deadline
    assert setup.pushes() == []
    assert await client.ack([delivery.notification.id]) == 1
    await setup.clock.advance(DELAY_S + 1)
    assert await setup.worker.run_once() == 1  # at the deadline: acked, so no push
    assert setup.pushes() == []
    assert delivery.notification.id == notification_id
    stream.cancel()


async def test_online_user_who_does_not_ack_gets_a_push_after_the_delay(setup: Setup) -> None:
    await setup.register("alice", fcm_target())
    stream = Stream(setup.herald.user("alice"))
    await stream.start()
    await setup.send("alice", "Unread")
    await stream.deliveries(1)
    assert await setup.worker.run_once() == 1
    await setup.clock.advance(DELAY_S - 1)
    assert await setup.worker.run_once() == 0  # not yet due
    assert setup.pushes() == []
    await setup.clock.advance(2)
    assert await setup.worker.run_once() == 1
    (push,) = setup.pushes()
    assert push["notification"] == {"title": "Unread", "body": ""}
    stream.cancel()


async def test_gone_targets_are_removed(setup: Setup) -> None:
    setup.fcm.scripts["/v1/"] = [
        Answer.json(
            404,
            {
                "error": {
                    "code": 404,
                    "status": "NOT_FOUND",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                            "errorCode": "UNREGISTERED",
                        }
                    ],
                }
            },
        )
    ]
    await setup.register("alice", fcm_target("dead-token"))
    endpoint = f"{setup.fcm.url}/push/gone"
    setup.fcm.scripts["/push/"] = [Answer(410)]
    ua_public = UA_KEY.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    await setup.register(
        "alice",
        registry_pb2.RegisterPushTargetRequest(
            kind=registry_pb2.PUSH_KIND_WEBPUSH,
            web_push=registry_pb2.WebPushSubscription(
                endpoint=endpoint, p256dh=b64url(ua_public), auth=b64url(os.urandom(16))
            ),
        ),
    )
    kept = await setup.register(
        "alice",
        registry_pb2.RegisterPushTargetRequest(kind=registry_pb2.PUSH_KIND_APNS, token="cd" * 32),
    )
    assert len(await setup.targets("alice")) == 3
    await setup.send("alice")
    await setup.worker.run_once()
    assert len(setup.fcm.to("/push/gone")) == 1
    assert [t.target_id for t in await setup.targets("alice")] == [kept.target_id]


async def test_overloaded_provider_is_retried(setup: Setup) -> None:
    setup.fcm.scripts["/v1/"] = [
        Answer.json(503, {"error": {"code": 503, "status": "UNAVAILABLE"}}),
        Answer.json(429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}),
    ]
    await setup.register("alice", fcm_target())
    await setup.send("alice")
    await setup.worker.run_once()
    assert len(setup.fcm.to("/v1/")) == 3  # two refusals, then sent
    assert len(await setup.targets("alice")) == 1


async def test_disabled_tenant_gets_no_pending_pushes(setup: Setup) -> None:
    admin = setup.herald.client(
        "registry", setup.herald.tokens.backend("acme", auth.SCOPE_TENANT_ADMIN)
    )
    await admin.put_tenant_settings(
        registry_pb2.TenantSettings(push_fallback=fallback(setup.fcm, enabled=False))
    )
    await setup.register("alice", fcm_target())
    # The ingest node reads tenant settings through its cache: let the new ones be read.
    await setup.clock.advance(3600)
    await setup.send("alice")
    assert await setup.worker.run_once() == 0
    assert setup.pushes() == []


async def test_secrets_are_write_only(setup: Setup) -> None:
    admin = setup.herald.client(
        "registry", setup.herald.tokens.backend("acme", auth.SCOPE_TENANT_ADMIN)
    )
    got = (await admin.tenant_settings()).settings.push_fallback
    assert got.enabled
    assert got.fcm.service_account_json == ""
    assert got.fcm.service_account_json_set
    assert got.apns.private_key_p8 == ""
    assert got.apns.private_key_p8_set
    assert got.web_push.vapid_private_key == ""
    assert got.web_push.vapid_private_key_set
    assert got.fcm.project_id == "acme-app"
    # Put back as read: the secrets stay, and pushes still go out.
    got.delay_seconds = 5
    await admin.put_tenant_settings(registry_pb2.TenantSettings(push_fallback=got))
    await setup.clock.advance(3600)
    await setup.register("bob", fcm_target("fcm-bob"))
    await setup.send("bob")
    await setup.worker.run_once()
    assert [p["token"] for p in setup.pushes()] == ["fcm-bob"]


async def refused(call: object) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    return error.value


async def test_registration_is_checked_and_isolated(setup: Setup) -> None:
    herald = setup.herald
    stub, metadata = herald.registry_stub(herald.tokens.user("acme", "alice"))
    bad_kind = await refused(
        stub.RegisterPushTarget(  # type: ignore[attr-defined]
            registry_pb2.RegisterPushTargetRequest(token="x"), metadata=metadata
        )
    )
    assert bad_kind.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "PUSH_KIND_FCM" in (bad_kind.details() or "")
    bad_apns = await refused(
        stub.RegisterPushTarget(  # type: ignore[attr-defined]
            registry_pb2.RegisterPushTargetRequest(
                kind=registry_pb2.PUSH_KIND_APNS, token="not-hex"
            ),
            metadata=metadata,
        )
    )
    assert bad_apns.code() is grpc.StatusCode.INVALID_ARGUMENT
    bad_keys = await refused(
        stub.RegisterPushTarget(  # type: ignore[attr-defined]
            registry_pb2.RegisterPushTargetRequest(
                kind=registry_pb2.PUSH_KIND_WEBPUSH,
                web_push=registry_pb2.WebPushSubscription(
                    endpoint="https://push.example/x", p256dh="AAAA", auth="AAAA"
                ),
            ),
            metadata=metadata,
        )
    )
    assert bad_keys.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "p256dh" in (bad_keys.details() or "")
    others = await refused(
        stub.RegisterPushTarget(  # type: ignore[attr-defined]
            registry_pb2.RegisterPushTargetRequest(
                user_id="bob", kind=registry_pb2.PUSH_KIND_FCM, token="t"
            ),
            metadata=metadata,
        )
    )
    assert others.code() is grpc.StatusCode.PERMISSION_DENIED
    # The tenant's backend registers for any of its users; another tenant's sees none of them.
    backend, backend_md = herald.registry_stub(herald.tokens.backend("acme"))
    made = await backend.RegisterPushTarget(  # type: ignore[attr-defined]
        registry_pb2.RegisterPushTargetRequest(
            user_id="alice", kind=registry_pb2.PUSH_KIND_FCM, token="from-backend"
        ),
        metadata=backend_md,
    )
    assert [t.target_id for t in await setup.targets("alice")] == [made.target.target_id]
    other, other_md = herald.registry_stub(herald.tokens.backend("globex"))
    listed = await other.ListPushTargets(  # type: ignore[attr-defined]
        registry_pb2.ListPushTargetsRequest(user_id="alice"), metadata=other_md
    )
    assert list(listed.targets) == []
    gone = await refused(
        other.UnregisterPushTarget(  # type: ignore[attr-defined]
            registry_pb2.UnregisterPushTargetRequest(
                user_id="alice", target_id=made.target.target_id
            ),
            metadata=other_md,
        )
    )
    assert gone.code() is grpc.StatusCode.NOT_FOUND
    await stub.UnregisterPushTarget(  # type: ignore[attr-defined]
        registry_pb2.UnregisterPushTargetRequest(target_id=made.target.target_id),
        metadata=metadata,
    )
    assert await setup.targets("alice") == []


async def test_a_service_account_cannot_choose_where_its_assertion_is_posted(
    setup: Setup,
) -> None:
    # A tenant admin's key file naming another token endpoint (an internal address, a host of
    # theirs) would make the node post signed assertions there: refused, nothing stored.
    admin = setup.herald.client(
        "registry", setup.herald.tokens.backend("acme", auth.SCOPE_TENANT_ADMIN)
    )
    before = (await admin.tenant_settings()).settings
    settings = fallback(setup.fcm)
    account = json.loads(settings.fcm.service_account_json)
    account["token_uri"] = "http://169.254.169.254/computeMetadata/v1/token"
    settings.fcm.service_account_json = json.dumps(account)
    error = await refused(
        admin.put_tenant_settings(registry_pb2.TenantSettings(push_fallback=settings))
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "token_uri must be https://oauth2.googleapis.com/token" in (error.details() or "")
    assert "169.254" not in (error.details() or "")
    assert (await admin.tenant_settings()).settings == before
    # The token exchange went to the node's configured endpoint, never the key file's.
    await setup.register("bob", fcm_target("fcm-bob"))
    await setup.send("bob")
    await setup.worker.run_once()
    assert [p["token"] for p in setup.pushes()] == ["fcm-bob"]
    assert setup.fcm.to("/token")


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://127.0.0.1/push/x",
        "https://10.0.0.5/push/x",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/push/x",
        "https://[::ffff:192.168.1.1]/push/x",
        "https://localhost/push/x",
        "https://metadata.google.internal/computeMetadata/v1/",
        "https://printer.local/x",
        "https://intranet/x",
    ],
)
async def test_a_user_cannot_register_a_web_push_endpoint_inside_the_network(
    deploy: Deploy, endpoint: str
) -> None:
    # A user token registers endpoints and the push worker posts to them from inside the
    # operator's network: only public push services are accepted (services/push/public_hosts.py).
    herald, _ = await deploy("up", push=PushSettings(worker=False))
    stub, metadata = herald.registry_stub(herald.tokens.user("acme", "alice"))
    ua_public = UA_KEY.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )

    def register(url: str) -> object:
        return stub.RegisterPushTarget(  # type: ignore[attr-defined]
            registry_pb2.RegisterPushTargetRequest(
                kind=registry_pb2.PUSH_KIND_WEBPUSH,
                web_push=registry_pb2.WebPushSubscription(
                    endpoint=url, p256dh=b64url(ua_public), auth=b64url(os.urandom(16))
                ),
            ),
            metadata=metadata,
        )

    error = await refused(register(endpoint))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "public internet" in (error.details() or "")
    await register("https://fcm.googleapis.com/fcm/send/abc:def")

"""Tenant settings through real gRPC: the RegistryService RPCs (validation, versions, scopes),
and the rate limits they set in force on ingest and stream nodes within the documented bound."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio

from herald.v1 import notification_pb2, registry_pb2
from services import auth
from services.client import HeraldClient
from services.config import IngestSettings, RateLimitSettings, RegistrySettings, TenantRateLimits
from tests.conftest import Deploy
from tests.harness import Herald, to_user
from tests.streams import Stream

pytestmark = pytest.mark.asyncio

TOPOLOGIES = pytest.mark.parametrize("topology", ["up", "split"])
TTL_S = 5.0
# A node default every test can tell from a stored value.
NODE_LIMITS = RateLimitSettings(
    tenant_send_rate=1000,
    tenant_send_burst=2000,
    key_send_rate=500,
    key_send_burst=1000,
    tenant_subscribe_rate=200,
    tenant_subscribe_burst=400,
    user_subscribe_rate=50,
    user_subscribe_burst=100,
)


def admin(herald: Herald, tenant: str = "acme") -> HeraldClient:
    return herald.client("registry", herald.tokens.backend(tenant, auth.SCOPE_TENANT_ADMIN))


def settings(**limits: float) -> registry_pb2.TenantSettings:
    return registry_pb2.TenantSettings(rate_limits=registry_pb2.TenantRateLimits(**limits))


async def refused(call: object) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    return error.value


@TOPOLOGIES
async def test_a_tenant_without_settings_runs_on_the_node_defaults(
    deploy: Deploy, topology: str
) -> None:
    herald, _ = await deploy(topology, rate_limit=NODE_LIMITS)
    got = await admin(herald).tenant_settings()
    assert got.settings.version == 0
    assert got.settings.tenant_id == "acme"
    assert not got.settings.HasField("stream_policy")
    assert not got.settings.rate_limits.HasField("tenant_send_rate")
    effective = got.effective_rate_limits
    assert (effective.tenant_send_rate, effective.tenant_send_burst) == (1000, 2000)
    assert (effective.user_subscribe_rate, effective.user_subscribe_burst) == (50, 100)


@TOPOLOGIES
async def test_a_put_is_stored_whole_and_read_back(deploy: Deploy, topology: str) -> None:
    herald, clock = await deploy(topology, rate_limit=NODE_LIMITS)
    client = admin(herald)
    put = settings(tenant_send_rate=0.5, key_send_burst=7)
    put.stream_policy.compression.extend(["zstd", "gzip"])
    put.stream_policy.compression_min_bytes = 512
    put.stream_policy.signing_required = True
    put.stream_policy.allowed_formats.append("json")
    stored = await client.put_tenant_settings(put)
    assert stored.version == 1
    assert stored.updated_by == "billing"
    assert stored.updated_at.seconds == int(clock.now())
    got = await client.tenant_settings()
    assert got.settings == stored
    assert list(got.settings.stream_policy.compression) == ["zstd", "gzip"]
    assert got.settings.stream_policy.signing_required
    assert not got.settings.rate_limits.HasField("tenant_send_burst")
    effective = got.effective_rate_limits
    assert (effective.tenant_send_rate, effective.tenant_send_burst) == (0.5, 2000)
    assert (effective.key_send_rate, effective.key_send_burst) == (500, 7)
    # Whole replace: what the next put leaves out goes back to the default.
    again = await client.put_tenant_settings(settings(user_subscribe_rate=1))
    assert again.version == 2
    got = await client.tenant_settings()
    assert not got.settings.HasField("stream_policy")
    assert not got.settings.rate_limits.HasField("tenant_send_rate")
    assert got.effective_rate_limits.tenant_send_rate == 1000
    reset = await client.reset_tenant_settings()
    assert reset.version == 3
    got = await client.tenant_settings()
    assert got.settings.version == 3
    assert got.effective_rate_limits.user_subscribe_rate == 50


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tenant_send_rate", -1.0, "rate_limits.tenant_send_rate must be 0 to 1,000,000"),
        ("key_send_rate", float("nan"), "rate_limits.key_send_rate must be 0 to 1,000,000"),
        ("user_subscribe_rate", float("inf"), "rate_limits.user_subscribe_rate must be 0"),
        ("tenant_subscribe_rate", 1e7, "rate_limits.tenant_subscribe_rate must be 0"),
        ("tenant_send_burst", 0, "rate_limits.tenant_send_burst must be 1 to 10,000,000"),
        ("key_send_burst", 10**7 + 1, "rate_limits.key_send_burst must be 1 to 10,000,000"),
    ],
)
async def test_a_rate_limit_out_of_bounds_is_refused_by_name(
    herald_up: Herald, field: str, value: float, message: str
) -> None:
    error = await refused(admin(herald_up).put_tenant_settings(settings(**{field: value})))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (error.details() or "")
    assert (await admin(herald_up).tenant_settings()).settings.version == 0


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"compression": ["brotli"]}, "stream_policy.compression holds 'brotli'; the known"),
        ({"compression": ["gzip", "gzip"]}, "stream_policy.compression names an entry twice"),
        ({"compression": ["x" * 10_000] * 3}, "stream_policy.compression holds 3 entries"),
        ({"allowed_formats": ["xml"]}, "stream_policy.allowed_formats holds 'xml'"),
        (
            {"compression_min_bytes": 5 * 1024 * 1024},
            "stream_policy.compression_min_bytes must be 0 to 4,194,304",
        ),
    ],
)
async def test_a_stream_policy_out_of_bounds_is_refused_by_name(
    herald_up: Herald, policy: dict[str, object], message: str
) -> None:
    put = registry_pb2.TenantSettings(stream_policy=registry_pb2.StreamPolicy(**policy))  # type: ignore[arg-type]
    error = await refused(admin(herald_up).put_tenant_settings(put))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (error.details() or "")
    assert len(error.details() or "") < 300


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("default_ttl_seconds", 0, "default_ttl_seconds must be 1 to 31,536,000"),
        ("default_ttl_seconds", 31_536_001, "default_ttl_seconds must be 1 to 31,536,000"),
        ("max_users_per_send", 0, "max_users_per_send must be 1 to 100,000"),
        ("max_users_per_send", 100_001, "max_users_per_send must be 1 to 100,000"),
    ],
)
async def test_a_send_setting_out_of_bounds_is_refused_by_name(
    herald_up: Herald, field: str, value: int, message: str
) -> None:
    put = registry_pb2.TenantSettings(**{field: value})  # type: ignore[arg-type]
    error = await refused(admin(herald_up).put_tenant_settings(put))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == message


@TOPOLOGIES
async def test_the_tenants_default_ttl_and_recipient_limit_apply_to_its_sends(
    deploy: Deploy, topology: str
) -> None:
    herald, clock = await deploy(
        topology, ingest=IngestSettings(default_ttl_s=3600, max_ttl_s=7200, max_users_per_send=5)
    )
    await admin(herald).put_tenant_settings(
        registry_pb2.TenantSettings(default_ttl_seconds=60, max_users_per_send=2)
    )
    await clock.advance(TTL_S)  # past the TTL of what ingest may have read before (split)
    backend = herald.backend()
    sent = await backend.send(to_user("alice"))
    status = await backend.status(sent.notification_id)
    assert status.expires_at.seconds - status.created_at.seconds == 60
    three = notification_pb2.Notification()
    three.target.users.user_ids.extend(["a", "b", "c"])
    three.content.title = "hi"
    error = await refused(backend.send(three))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "lists 3 users; the limit is 2" in (error.details() or "")
    # Another tenant keeps the node's; a TTL the send sets itself is its own.
    other = await herald.backend("globex").send(to_user("alice"))
    status = await herald.backend("globex").status(other.notification_id)
    assert status.expires_at.seconds - status.created_at.seconds == 3600
    own = await backend.send(to_user("alice", ttl_seconds=600))
    status = await backend.status(own.notification_id)
    assert status.expires_at.seconds - status.created_at.seconds == 600
    # Capped at the node's maximum: the tenant's settings never go beyond the node.
    await admin(herald).put_tenant_settings(
        registry_pb2.TenantSettings(default_ttl_seconds=86_400, max_users_per_send=1000)
    )
    await clock.advance(TTL_S)
    capped = await backend.send(to_user("alice"))
    status = await backend.status(capped.notification_id)
    assert status.expires_at.seconds - status.created_at.seconds == 7200
    six = notification_pb2.Notification()
    six.target.users.user_ids.extend([f"u{i}" for i in range(6)])
    six.content.title = "hi"
    error = await refused(backend.send(six))
    assert "lists 6 users; the limit is 5" in (error.details() or "")


async def test_settings_naming_another_tenant_are_refused(herald_up: Herald) -> None:
    put = settings(tenant_send_rate=1)
    put.tenant_id = "globex"
    error = await refused(admin(herald_up).put_tenant_settings(put))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "settings.tenant_id" in (error.details() or "")


@TOPOLOGIES
async def test_a_stale_version_is_aborted_and_stores_nothing(deploy: Deploy, topology: str) -> None:
    herald, _ = await deploy(topology)
    client = admin(herald)
    first = await client.put_tenant_settings(settings(tenant_send_rate=1), expected_version=0)
    assert first.version == 1
    error = await refused(client.put_tenant_settings(settings(), expected_version=0))
    assert error.code() == grpc.StatusCode.ABORTED
    assert error.details() == (
        "the settings of tenant 'acme' are at version 1, not 0: read them again "
        "(GetTenantSettings) and reapply the change"
    )
    second = await client.put_tenant_settings(settings(tenant_send_rate=2), expected_version=1)
    assert second.version == 2
    error = await refused(client.put_tenant_settings(settings(), expected_version=1))
    assert error.code() == grpc.StatusCode.ABORTED
    error = await refused(client.reset_tenant_settings(expected_version=1))
    assert error.code() == grpc.StatusCode.ABORTED
    got = await client.tenant_settings()
    assert (got.settings.version, got.settings.rate_limits.tenant_send_rate) == (2, 2)
    assert (await client.reset_tenant_settings(expected_version=2)).version == 3


async def test_who_may_read_and_change_settings(herald_up: Herald) -> None:
    await admin(herald_up).put_tenant_settings(settings(tenant_send_rate=3))
    # A backend (scope send) reads its own tenant's settings, and may not change them.
    backend = herald_up.client("registry", herald_up.tokens.backend("acme", auth.SCOPE_SEND))
    assert (await backend.tenant_settings()).settings.rate_limits.tenant_send_rate == 3
    error = await refused(backend.put_tenant_settings(settings()))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "tenant:admin" in (error.details() or "")
    error = await refused(backend.reset_tenant_settings())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    # A subscriber may not even read them.
    user = herald_up.client("registry", herald_up.tokens.user("acme", "alice"))
    assert (await refused(user.tenant_settings())).code() == grpc.StatusCode.PERMISSION_DENIED
    # An admin of another tenant touches only its own.
    other = admin(herald_up, "globex")
    for call in (
        other.tenant_settings(tenant_id="acme"),
        other.put_tenant_settings(settings(), tenant_id="acme"),
        other.reset_tenant_settings(tenant_id="acme"),
    ):
        assert (await refused(call)).code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await other.tenant_settings()).settings.version == 0
    # Tenant tokens cannot list every tenant's settings; node tokens read any tenant's.
    assert (
        await refused(admin(herald_up).list_tenant_settings())
    ).code() == grpc.StatusCode.PERMISSION_DENIED
    node = herald_up.client("registry", herald_up.tokens.minter.node_token("ops"))
    got = await node.tenant_settings(tenant_id="acme")
    assert got.settings.rate_limits.tenant_send_rate == 3
    error = await refused(node.tenant_settings())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_node_tokens_list_every_tenant_a_page_at_a_time(herald_up: Herald) -> None:
    for tenant in ("globex", "acme", "initech"):
        await admin(herald_up, tenant).put_tenant_settings(settings(tenant_send_rate=1))
    node = herald_up.client("registry", herald_up.tokens.minter.node_token("ops"))
    page = await node.list_tenant_settings(page_size=2)
    assert [s.tenant_id for s in page.settings] == ["acme", "globex"]
    assert page.next_page_token == "globex"
    rest = await node.list_tenant_settings(page_size=2, page_token=page.next_page_token)
    assert [s.tenant_id for s in rest.settings] == ["initech"]
    assert rest.next_page_token == ""
    error = await refused(node.list_tenant_settings(page_size=5000))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- the limits in force ------------------------------------------------------------------------


async def test_a_low_send_limit_is_in_force_on_the_node_that_stored_it_at_once(
    deploy: Deploy,
) -> None:
    herald, clock = await deploy("up", rate_limit=NODE_LIMITS)
    backend = herald.backend()
    await backend.send(to_user("alice", "before"))
    await admin(herald).put_tenant_settings(settings(tenant_send_rate=0.001, tenant_send_burst=2))
    await backend.send_batch([to_user("alice", "1"), to_user("alice", "2")])
    error = await refused(backend.send(to_user("alice", "over")))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "tenant 'acme' may make 0.001 notifications per second (bursts of 2)" in (
        error.details() or ""
    )
    # Another tenant keeps the node's limits.
    await herald.backend("globex").send_batch([to_user("alice", str(i)) for i in range(5)])
    # A reset gives the tenant the node's limits back, at once here too: the emptied bucket
    # refills at the node's rate (1000/s), not at the tenant's 0.001/s.
    await admin(herald).reset_tenant_settings()
    await clock.advance(0.01)
    await backend.send_batch([to_user("alice", str(i)) for i in range(5)])


async def test_a_change_reaches_ingest_and_stream_nodes_within_the_ttl(deploy: Deploy) -> None:
    """Split topology: ingest and stream read the registry over gRPC and keep what they read
    for HERALD_REGISTRY_TENANT_SETTINGS_TTL_S; the clock is the nodes' manual clock."""
    herald, clock = await deploy(
        "split",
        rate_limit=NODE_LIMITS,
        registry=RegistrySettings(tenant_settings_ttl_s=TTL_S),
    )
    backend = herald.backend()
    await backend.send(to_user("alice", "read the settings once"))
    first = Stream(herald.user("alice"))
    await first.start()
    first.cancel()
    await admin(herald).put_tenant_settings(
        settings(
            tenant_send_rate=0.001,
            tenant_send_burst=1,
            user_subscribe_rate=0.001,
            user_subscribe_burst=1,
        )
    )
    # Within the TTL the nodes may still run on what they read before.
    await clock.advance(TTL_S - 1)
    await backend.send_batch([to_user("alice", str(i)) for i in range(3)])
    # Past it, both enforce the new limits.
    await clock.advance(1.01)
    await backend.send(to_user("alice", "the one token"))
    error = await refused(backend.send(to_user("alice", "over")))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "bursts of 1" in (error.details() or "")
    await Stream(herald.user("bob")).start()  # bob's own bucket: one connect
    again = Stream(herald.user("bob"))
    with pytest.raises(aio.AioRpcError) as subscribe:
        await again.start()
    assert subscribe.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "user 'bob' may make 0.001 Subscribe calls per second" in (
        subscribe.value.details() or ""
    )


async def test_the_registry_overrides_the_environment_field_by_field(deploy: Deploy) -> None:
    env = NODE_LIMITS.model_copy(
        update={"tenants": {"acme": TenantRateLimits(tenant_send_rate=7, tenant_send_burst=70)}}
    )
    herald, _ = await deploy("up", rate_limit=env)
    client = admin(herald)
    got = await client.tenant_settings()
    assert (
        got.effective_rate_limits.tenant_send_rate,
        got.effective_rate_limits.tenant_send_burst,
    ) == (7, 70)
    await client.put_tenant_settings(settings(tenant_send_burst=3))
    got = await client.tenant_settings()
    # The stored burst, the environment's per-tenant rate, the node default for the rest.
    effective = got.effective_rate_limits
    assert (effective.tenant_send_rate, effective.tenant_send_burst) == (7, 3)
    assert effective.key_send_rate == 500
    backend = herald.backend()
    await backend.send_batch([to_user("alice", str(i)) for i in range(3)])
    error = await refused(backend.send(to_user("alice", "over")))
    assert "tenant 'acme' may make 7 notifications per second (bursts of 3)" in (
        error.details() or ""
    )


async def test_limits_turned_off_on_the_node_stay_off(deploy: Deploy) -> None:
    herald, _ = await deploy("up", rate_limit=RateLimitSettings(enabled=False))
    await admin(herald).put_tenant_settings(settings(tenant_send_rate=0.001, tenant_send_burst=1))
    await herald.backend().send_batch([to_user("alice", str(i)) for i in range(5)])

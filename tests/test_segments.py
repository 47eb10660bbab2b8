"""Segments through real gRPC: the RegistryService RPCs (CRUD, paging, bounds, scopes, tenant
isolation) on the embedded profile."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio

from herald.v1 import registry_pb2, registry_pb2_grpc
from services import auth
from services.client import HeraldClient
from tests.harness import Herald

pytestmark = pytest.mark.asyncio


def admin(herald: Herald, tenant: str = "acme") -> HeraldClient:
    return herald.client("registry", herald.tokens.backend(tenant, auth.SCOPE_TENANT_ADMIN))


def stub(client: HeraldClient) -> registry_pb2_grpc.RegistryServiceStub:
    return registry_pb2_grpc.RegistryServiceStub(client._channel)


async def refused(call: object) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    return error.value


async def test_a_segment_is_created_filled_paged_and_deleted(herald_up: Herald) -> None:
    client = admin(herald_up)
    registry, md = stub(client), client.metadata()
    created = await registry.CreateSegment(
        registry_pb2.CreateSegmentRequest(name="beta"), metadata=md
    )
    assert (created.segment.name, created.segment.member_count) == ("beta", 0)
    again = await refused(
        registry.CreateSegment(registry_pb2.CreateSegmentRequest(name="beta"), metadata=md)
    )
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS
    added = await registry.AddSegmentMembers(
        registry_pb2.AddSegmentMembersRequest(name="beta", user_ids=["c", "a", "b", "a"]),
        metadata=md,
    )
    assert (added.added, added.member_count) == (3, 3)
    removed = await registry.RemoveSegmentMembers(
        registry_pb2.RemoveSegmentMembersRequest(name="beta", user_ids=["b", "zz"]), metadata=md
    )
    assert removed.removed == 1
    first = await registry.ListSegmentMembers(
        registry_pb2.ListSegmentMembersRequest(name="beta", page_size=1), metadata=md
    )
    assert (list(first.user_ids), first.next_page_token) == (["a"], "a")
    rest = await registry.ListSegmentMembers(
        registry_pb2.ListSegmentMembersRequest(name="beta", page_size=1, page_token="a"),
        metadata=md,
    )
    assert list(rest.user_ids) == ["c"]
    listed = await registry.ListSegments(registry_pb2.ListSegmentsRequest(), metadata=md)
    assert [(s.name, s.member_count) for s in listed.segments] == [("beta", 2)]
    await registry.DeleteSegment(registry_pb2.DeleteSegmentRequest(name="beta"), metadata=md)
    gone = await refused(
        registry.ListSegmentMembers(
            registry_pb2.ListSegmentMembersRequest(name="beta"), metadata=md
        )
    )
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    assert "CreateSegment" in (gone.details() or "")


async def test_another_tenant_sees_none_of_a_tenant_s_segments(herald_up: Herald) -> None:
    acme = admin(herald_up, "acme")
    await stub(acme).CreateSegment(
        registry_pb2.CreateSegmentRequest(name="beta"), metadata=acme.metadata()
    )
    other = admin(herald_up, "globex")
    registry, md = stub(other), other.metadata()
    listed = await registry.ListSegments(registry_pb2.ListSegmentsRequest(), metadata=md)
    assert list(listed.segments) == []
    add = await refused(
        registry.AddSegmentMembers(
            registry_pb2.AddSegmentMembersRequest(name="beta", user_ids=["u"]), metadata=md
        )
    )
    assert add.code() == grpc.StatusCode.NOT_FOUND
    # Naming the other tenant is refused, not answered.
    named = await refused(
        registry.ListSegments(registry_pb2.ListSegmentsRequest(tenant_id="acme"), metadata=md)
    )
    assert named.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_segments_need_the_tenant_admin_scope(herald_up: Herald) -> None:
    sender = herald_up.client("registry", herald_up.tokens.backend("acme", auth.SCOPE_SEND))
    error = await refused(
        stub(sender).ListSegments(registry_pb2.ListSegmentsRequest(), metadata=sender.metadata())
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_bad_batches_are_invalid_with_the_limit_named(herald_up: Herald) -> None:
    client = admin(herald_up)
    registry, md = stub(client), client.metadata()
    await registry.CreateSegment(registry_pb2.CreateSegmentRequest(name="s"), metadata=md)
    for users, message in (
        ([], "at least one user id"),
        ([f"u{n}" for n in range(10_001)], "the limit is 10000 per call"),
        (["ok", ""], "must not be empty"),
    ):
        error = await refused(
            registry.AddSegmentMembers(
                registry_pb2.AddSegmentMembersRequest(name="s", user_ids=users), metadata=md
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (error.details() or "")

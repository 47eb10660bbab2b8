"""Sends to a segment through real gRPC: its members at send time get it in their own logs,
with status rows GetStatus lists; on the embedded and the production profile, and a clear
refusal on the split topology on memory stores (docs/segments.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import grpc
import pytest
import pytest_asyncio
from grpc import aio

from herald.v1 import ingest_pb2, notification_pb2, registry_pb2, registry_pb2_grpc
from services import auth
from services.clock import ManualClock
from services.config import IngestSettings
from services.registry import segments
from tests.conftest import Deploy
from tests.harness import Herald, to_user
from tests.production import production_db, start_production
from tests.streams import Stream
from tests.test_cli import Cli, _subscribed, _up
from tests.test_preferences import MUTE_IN_APP, put

pytestmark = pytest.mark.asyncio


def to_segment(
    name: str, title: str = "Beta news", **fields: object
) -> notification_pb2.Notification:
    notification = to_user("x", title, **fields)
    notification.target.segment = name
    return notification


class Segments:
    """A tenant admin's RegistryService calls for segments."""

    def __init__(self, herald: Herald, tenant: str = "acme") -> None:
        client = herald.client("registry", herald.tokens.backend(tenant, auth.SCOPE_TENANT_ADMIN))
        self.stub = registry_pb2_grpc.RegistryServiceStub(client._channel)
        self.metadata = client.metadata()

    async def create(self, name: str, members: list[str]) -> None:
        await self.stub.CreateSegment(
            registry_pb2.CreateSegmentRequest(name=name), metadata=self.metadata
        )
        if members:
            await self.add(name, members)

    async def add(self, name: str, members: list[str]) -> None:
        await self.stub.AddSegmentMembers(
            registry_pb2.AddSegmentMembersRequest(name=name, user_ids=members),
            metadata=self.metadata,
        )

    async def remove(self, name: str, members: list[str]) -> None:
        await self.stub.RemoveSegmentMembers(
            registry_pb2.RemoveSegmentMembersRequest(name=name, user_ids=members),
            metadata=self.metadata,
        )


async def refused(call: object) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    return error.value


# Embedded (memory stores) and the production profile (PostgreSQL and Redis).
@pytest_asyncio.fixture(params=["memory", "production"])
async def herald(
    deploy: Deploy, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Herald]:
    async with AsyncExitStack() as stack:
        if request.param == "memory":
            deployment, _ = await deploy("up")
        else:
            dsn, prefix = await stack.enter_async_context(production_db())
            deployment = await start_production(tmp_path, dsn, prefix, ManualClock())
            stack.push_async_callback(deployment.stop)
        yield deployment


async def test_a_segment_send_reaches_every_member_s_session_and_status(herald: Herald) -> None:
    await Segments(herald).create("beta", ["alice", "bob", "carol"])
    streams = {user: Stream(herald.user(user)) for user in ("alice", "bob", "carol", "dave")}
    for stream in streams.values():
        await stream.start()
    backend = herald.backend()
    sent = await backend.send(to_segment("beta"))
    assert sent.recipient_count == 3
    for user in ("alice", "bob", "carol"):
        [got] = await streams[user].deliveries(1)
        assert got.notification.id == sent.notification_id
        assert got.log == "user"
        # Recipients see the segment's name, not its member list.
        assert got.notification.target.WhichOneof("kind") == "segment"
        assert got.notification.target.segment == "beta"
    direct = await backend.send(to_user("dave", "direct"))
    [first] = await streams["dave"].deliveries(1)
    assert first.notification.id == direct.notification_id  # dave is not a member
    status = await backend.status(sent.notification_id)
    assert sorted(r.user_id for r in status.recipients) == ["alice", "bob", "carol"]
    assert status.target.segment == "beta"
    for stream in streams.values():
        stream.cancel()


async def test_members_added_later_get_nothing_removed_later_keep_it(herald: Herald) -> None:
    segments = Segments(herald)
    await segments.create("beta", ["alice", "bob"])
    backend = herald.backend()
    sent = await backend.send(to_segment("beta", "before"))
    await segments.add("beta", ["erin"])
    await segments.remove("beta", ["bob"])
    erin, bob = Stream(herald.user("erin")), Stream(herald.user("bob"))
    await erin.start()
    await bob.start()
    [kept] = await bob.deliveries(1)
    assert kept.notification.id == sent.notification_id
    later = await backend.send(to_segment("beta", "after"))
    assert later.recipient_count == 2  # alice and erin
    [got] = await erin.deliveries(1)
    assert got.notification.id == later.notification_id  # not the one sent before she joined
    status = await backend.status(sent.notification_id)
    assert sorted(r.user_id for r in status.recipients) == ["alice", "bob"]
    erin.cancel()
    bob.cancel()


async def test_a_segment_send_skips_the_members_who_muted_its_category(herald: Herald) -> None:
    await Segments(herald).create("beta", ["alice", "bob"])
    await put(herald, "alice", MUTE_IN_APP)
    sent = await herald.backend().send(to_segment("beta", category="marketing"))
    assert sent.recipient_count == 1
    status = await herald.backend().status(sent.notification_id)
    assert {r.user_id: r.state for r in status.recipients} == {
        "alice": ingest_pb2.DELIVERY_STATE_SUPPRESSED,
        "bob": ingest_pb2.DELIVERY_STATE_QUEUED,
    }
    critical = await herald.backend().send(to_segment("beta", category="marketing", critical=True))
    assert critical.recipient_count == 2


async def test_an_unknown_or_another_tenant_s_segment_is_not_found(herald: Herald) -> None:
    await Segments(herald, "globex").create("beta", ["alice"])
    error = await refused(herald.backend().send(to_segment("beta")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    details = error.details() or ""
    assert "'beta'" in details
    assert "CreateSegment" in details


async def test_an_empty_segment_is_accepted_with_no_recipients(herald: Herald) -> None:
    await Segments(herald).create("nobody", [])
    sent = await herald.backend().send(to_segment("nobody"))
    assert sent.recipient_count == 0
    status = await herald.backend().status(sent.notification_id)
    assert list(status.recipients) == []


async def test_a_segment_send_is_not_bounded_by_max_users_per_send(deploy: Deploy) -> None:
    herald, _ = await deploy("up", ingest=IngestSettings(max_users_per_send=2))
    await Segments(herald).create("beta", ["u1", "u2", "u3", "u4", "u5"])
    sent = await herald.backend().send(to_segment("beta"))
    assert sent.recipient_count == 5


async def test_bad_segment_names_are_invalid(herald_up: Herald) -> None:
    backend = herald_up.backend()
    for name, hint in (("", "target.segment must not be empty"), ("s" * 129, "target.segment")):
        notification = to_segment("x")
        notification.target.segment = name
        error = await refused(backend.send(notification))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert hint in (error.details() or "")


async def test_the_split_topology_on_memory_stores_refuses_segment_sends(deploy: Deploy) -> None:
    herald, _ = await deploy("split")
    await Segments(herald).create("beta", ["alice"])
    error = await refused(herald.backend().send(to_segment("beta")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "herald up" in (error.details() or "")


@pytest.mark.timeout(240)
async def test_a_100000_member_segment_send_reaches_every_member_s_log_on_postgres(
    tmp_path: Path,
) -> None:
    members = [f"user-{i:06d}" for i in range(segments.MAX_MEMBERS)]
    async with production_db() as (dsn, prefix):
        herald = await start_production(tmp_path, dsn, prefix, ManualClock())
        try:
            admin = Segments(herald)
            await admin.create("everyone", [])
            for start in range(0, len(members), segments.MAX_BATCH):
                await admin.add("everyone", members[start : start + segments.MAX_BATCH])
            last = Stream(herald.user(members[-1]))
            await last.start()
            sent = await herald.backend().send(to_segment("everyone"), timeout=120)
            assert sent.recipient_count == segments.MAX_MEMBERS
            [got] = await last.deliveries(1, within=60)
            assert got.notification.id == sent.notification_id
            last.cancel()
            connection = await asyncpg.connect(dsn)
            try:
                logs = await connection.fetch(
                    "SELECT log FROM herald_log_entries"
                    " WHERE tenant_id = 'acme' AND notification_id = $1",
                    sent.notification_id,
                )
                # A users send's status row names its recipients (0004_status_marks.sql).
                recipients = await connection.fetchval(
                    "SELECT user_ids FROM herald_status"
                    " WHERE tenant_id = 'acme' AND notification_id = $1",
                    sent.notification_id,
                )
            finally:
                await connection.close()
            assert sorted(row[0] for row in logs) == sorted(f"user:{m}" for m in members)
            assert list(recipients) == members
            status = await herald.backend().status(sent.notification_id)
            assert len(status.recipients) == segments.MAX_MEMBERS
        finally:
            await herald.stop()


# -- the CLI ----------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def cli(tmp_path: Path) -> AsyncIterator[Cli]:
    runner = Cli(tmp_path / "data")
    try:
        yield runner
    finally:
        await runner.stop()


async def test_herald_segments_manages_segments_and_send_targets_one(
    cli: Cli, tmp_path: Path
) -> None:
    address = await _up(cli)
    env = {"HERALD_ADDRESS": address, "HERALD_TENANT": "acme"}
    assert "created segment beta" in await cli.run("segments", "create", "beta", **env)
    users = tmp_path / "users.txt"
    users.write_text("carol\n\ndave\nalice\n")
    added = await cli.json("segments", "add", "beta", "alice", "bob", "--file", str(users), **env)
    assert added == {"added": 4, "memberCount": 4}
    assert await cli.json("segments", "remove", "beta", "dave", "nobody", **env) == {"removed": 1}
    [listed] = (await cli.json("segments", "list", **env))["segments"]
    assert (listed["name"], listed["memberCount"]) == ("beta", 3)
    assert "beta" in await cli.run("segments", "list", **env)
    first = await cli.json("segments", "members", "beta", "--page-size", "2", **env)
    assert first == {"userIds": ["alice", "bob"], "nextPageToken": "bob"}
    every = await cli.json("segments", "members", "beta", "--page-size", "2", "--all", **env)
    assert every["userIds"] == ["alice", "bob", "carol"]

    tail = await cli.start("tail", "--user", "carol", "--count", "1", **env)
    await _subscribed(tail)
    sent = json.loads(await cli.run("send", "--segment", "beta", "--title", "beta news", **env))
    assert sent["recipientCount"] == 3
    assert tail.stdout is not None
    async with asyncio.timeout(20):
        line = await tail.stdout.readline()
    got = json.loads(line)["notification"]
    assert got["id"] == sent["notificationId"]
    assert got["target"] == {"segment": "beta"}

    assert "give USER... or --file" in await cli.fail("segments", "add", "beta", **env)
    assert "deleted segment beta" in await cli.run("segments", "delete", "beta", **env)
    gone = await cli.fail("segments", "members", "beta", **env)
    assert gone.startswith("error: NOT_FOUND: ")

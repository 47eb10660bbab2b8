"""SessionDirectory contract: sessions per tenant and user, leases, presence."""

from __future__ import annotations

import dataclasses

import pytest

from services.domain import SessionInfo, UserPresenceRecord
from services.registry.sessions import SessionDirectory

pytestmark = pytest.mark.asyncio

T1, T2 = "tenant-1", "tenant-2"
MAX = 3


def session(
    session_id: str,
    user_id: str = "alice",
    tenant: str = T1,
    connected_at: float = 100.0,
    node_id: str = "node-1",
) -> SessionInfo:
    return SessionInfo(
        session_id,
        tenant,
        user_id,
        node_id,
        f"127.0.0.1:{7000 + int(node_id[-1])}",
        device="phone",
        channels=("news",),
        connected_at=connected_at,
        last_seen_at=connected_at,
    )


def ids(sessions: list[SessionInfo]) -> list[str]:
    return sorted(s.session_id for s in sessions)


async def presence_of(
    directory: SessionDirectory, user_id: str, tenant: str = T1
) -> UserPresenceRecord:
    [record] = await directory.presence(tenant, [user_id])
    return record


async def test_an_empty_directory(session_directory: SessionDirectory) -> None:
    assert await session_directory.list(T1) == []
    assert await session_directory.list(T1, "alice") == []
    assert await session_directory.presence(T1, ["alice"]) == [UserPresenceRecord("alice", 0)]
    assert await session_directory.remove(T1, "s1", 100.0) is None
    assert await session_directory.expire(1e12, 100.0) == []


async def test_added_sessions_are_listed_as_they_were_added(
    session_directory: SessionDirectory,
) -> None:
    assert await session_directory.add(session("s1"), MAX)
    assert await session_directory.list(T1) == [session("s1")]
    assert await session_directory.list(T1, "alice") == [session("s1")]


async def test_list_by_tenant_and_by_user(session_directory: SessionDirectory) -> None:
    for s in (
        session("s1", "alice"),
        session("s2", "alice", node_id="node-2"),
        session("s3", "bob"),
        session("s4", "alice", T2),
    ):
        assert await session_directory.add(s, MAX)
    assert ids(await session_directory.list(T1)) == ["s1", "s2", "s3"]
    assert ids(await session_directory.list(T1, "alice")) == ["s1", "s2"]
    assert ids(await session_directory.list(T1, "bob")) == ["s3"]
    assert ids(await session_directory.list(T1, "carol")) == []
    assert ids(await session_directory.list(T2)) == ["s4"]
    assert ids(await session_directory.list(T2, "bob")) == []


async def test_add_respects_max_per_user(session_directory: SessionDirectory) -> None:
    assert await session_directory.add(session("s1"), 2)
    assert await session_directory.add(session("s2"), 2)
    assert not await session_directory.add(session("s3"), 2)
    assert ids(await session_directory.list(T1, "alice")) == ["s1", "s2"]
    assert (await presence_of(session_directory, "alice")).sessions == 2
    # Other users, and the same user in another tenant, have their own allowance.
    assert await session_directory.add(session("s4", "bob"), 2)
    assert await session_directory.add(session("s5", "alice", T2), 2)
    # Closing a session frees its slot.
    await session_directory.remove(T1, "s1", 200.0)
    assert await session_directory.add(session("s3"), 2)
    assert ids(await session_directory.list(T1, "alice")) == ["s2", "s3"]


async def test_re_adding_a_session_is_not_a_new_one(session_directory: SessionDirectory) -> None:
    assert await session_directory.add(session("s1"), 2)
    assert await session_directory.add(session("s2"), 2)
    # At the limit, the same session id registers again (a retried RegisterSession).
    again = dataclasses.replace(session("s1"), device="laptop", last_seen_at=150.0)
    assert await session_directory.add(again, 2)
    assert ids(await session_directory.list(T1, "alice")) == ["s1", "s2"]
    assert (await presence_of(session_directory, "alice")).sessions == 2
    listed = {s.session_id: s for s in await session_directory.list(T1)}
    assert listed["s1"] == again


async def test_touch_refreshes_and_returns_unknown_ids(session_directory: SessionDirectory) -> None:
    await session_directory.add(session("s1"), MAX)
    await session_directory.add(session("s2", "bob"), MAX)
    await session_directory.add(session("s3", "carol", T2), MAX)
    unknown = await session_directory.touch(T1, ["s1", "gone", "s2", "s3"], 500.0)
    # s3 lives in another tenant: unknown here.
    assert sorted(unknown) == ["gone", "s3"]
    assert {s.session_id: s.last_seen_at for s in await session_directory.list(T1)} == {
        "s1": 500.0,
        "s2": 500.0,
    }
    assert [s.last_seen_at for s in await session_directory.list(T2)] == [100.0]
    assert await session_directory.touch(T1, [], 600.0) == []


async def test_remove_returns_the_session(session_directory: SessionDirectory) -> None:
    await session_directory.add(session("s1"), MAX)
    await session_directory.add(session("s2"), MAX)
    assert await session_directory.remove(T2, "s1", 200.0) is None  # another tenant
    assert await session_directory.remove(T1, "s1", 200.0) == session("s1")
    assert await session_directory.remove(T1, "s1", 200.0) is None
    assert ids(await session_directory.list(T1)) == ["s2"]
    assert await session_directory.touch(T1, ["s1"], 300.0) == ["s1"]


async def test_presence_counts_sessions_and_tracks_online_and_left(
    session_directory: SessionDirectory,
) -> None:
    assert await presence_of(session_directory, "alice") == UserPresenceRecord("alice", 0, 0.0, 0.0)
    await session_directory.add(session("s1", connected_at=100.0), MAX)
    await session_directory.add(session("s2", connected_at=110.0), MAX)
    assert await presence_of(session_directory, "alice") == UserPresenceRecord(
        "alice", 2, 0.0, 100.0
    )
    # Online since the first session, while any session is open.
    await session_directory.remove(T1, "s1", 120.0)
    assert await presence_of(session_directory, "alice") == UserPresenceRecord(
        "alice", 1, 0.0, 100.0
    )
    await session_directory.remove(T1, "s2", 130.0)
    assert await presence_of(session_directory, "alice") == UserPresenceRecord(
        "alice", 0, 130.0, 0.0
    )
    # Back online: no longer "left", online since the new session.
    await session_directory.add(session("s3", connected_at=140.0), MAX)
    assert await presence_of(session_directory, "alice") == UserPresenceRecord(
        "alice", 1, 0.0, 140.0
    )


async def test_presence_answers_in_the_order_asked(session_directory: SessionDirectory) -> None:
    await session_directory.add(session("s1", "bob"), MAX)
    await session_directory.add(session("s2", "bob"), MAX)
    await session_directory.add(session("s3", "alice"), MAX)
    records = await session_directory.presence(T1, ["carol", "bob", "alice"])
    assert [(r.user_id, r.sessions) for r in records] == [("carol", 0), ("bob", 2), ("alice", 1)]


async def test_presence_is_per_tenant(session_directory: SessionDirectory) -> None:
    await session_directory.add(session("s1", "alice", T1), MAX)
    await session_directory.add(session("s2", "alice", T2), MAX)
    await session_directory.remove(T2, "s2", 150.0)
    assert await presence_of(session_directory, "alice", T1) == UserPresenceRecord(
        "alice", 1, 0.0, 100.0
    )
    assert await presence_of(session_directory, "alice", T2) == UserPresenceRecord(
        "alice", 0, 150.0, 0.0
    )
    assert await presence_of(session_directory, "alice", "tenant-3") == UserPresenceRecord(
        "alice", 0
    )


async def test_expire_removes_sessions_not_seen_since_the_cutoff(
    session_directory: SessionDirectory,
) -> None:
    await session_directory.add(session("s1", "alice", connected_at=100.0), MAX)
    await session_directory.add(session("s2", "alice", connected_at=100.0), MAX)
    await session_directory.add(session("s3", "bob", connected_at=100.0), MAX)
    await session_directory.add(session("s4", "carol", T2, connected_at=100.0), MAX)
    await session_directory.touch(T1, ["s2"], 200.0)
    await session_directory.touch(T1, ["s3"], 150.0)  # exactly at the cutoff: kept
    expired = await session_directory.expire(150.0, 300.0)
    assert sorted((s.tenant, s.session_id) for s in expired) == [(T1, "s1"), (T2, "s4")]
    assert ids(await session_directory.list(T1)) == ["s2", "s3"]
    assert await session_directory.list(T2) == []
    # Alice still has s2; carol's only session went, at the time of the sweep.
    assert await presence_of(session_directory, "alice") == UserPresenceRecord(
        "alice", 1, 0.0, 100.0
    )
    assert await presence_of(session_directory, "carol", T2) == UserPresenceRecord(
        "carol", 0, 300.0, 0.0
    )
    assert await session_directory.touch(T1, ["s1"], 400.0) == ["s1"]
    assert await session_directory.expire(150.0, 300.0) == []


async def test_session_ids_are_per_tenant(session_directory: SessionDirectory) -> None:
    assert await session_directory.add(session("s1", "alice", T1), MAX)
    assert await session_directory.add(session("s1", "zoe", T2), MAX)
    assert [s.user_id for s in await session_directory.list(T1)] == ["alice"]
    assert [s.user_id for s in await session_directory.list(T2)] == ["zoe"]
    assert await session_directory.remove(T1, "s1", 200.0) == session("s1", "alice", T1)
    assert [s.user_id for s in await session_directory.list(T2)] == ["zoe"]


async def test_listed_sessions_are_snapshots(session_directory: SessionDirectory) -> None:
    # A directory shared across nodes hands out values; changing one must go through the
    # directory, never through an object it returned.
    await session_directory.add(session("s1"), MAX)
    [listed] = await session_directory.list(T1)
    listed.channels = ("changed",)
    listed.last_seen_at = 999.0
    assert await session_directory.list(T1) == [session("s1")]


async def test_presence_agrees_with_list_when_a_session_id_changes_user(
    session_directory: SessionDirectory,
) -> None:
    # Whether the directory moves the session to bob or refuses it, its answers must agree.
    await session_directory.add(session("s1", "alice"), MAX)
    await session_directory.add(session("s1", "bob"), MAX)
    for user_id in ("alice", "bob"):
        listed = await session_directory.list(T1, user_id)
        assert (await presence_of(session_directory, user_id)).sessions == len(listed)
    await session_directory.remove(T1, "s1", 200.0)
    assert await session_directory.list(T1) == []
    for user_id in ("alice", "bob"):
        assert (await presence_of(session_directory, user_id)).sessions == 0


async def test_set_channels_is_what_list_shows(session_directory: SessionDirectory) -> None:
    assert await session_directory.add(session("s1"), MAX)
    assert await session_directory.set_channels(T1, "s1", ("ops", "news"))
    [listed] = await session_directory.list(T1, "alice")
    assert listed.channels == ("ops", "news")
    assert not await session_directory.set_channels(T1, "nope", ("ops",))
    assert not await session_directory.set_channels(T2, "s1", ("ops",))
    [unchanged] = await session_directory.list(T1)
    assert unchanged.channels == ("ops", "news")

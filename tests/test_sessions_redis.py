"""What the Redis session directory adds to the contract: atomic limits, tenant hash tags."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from services.domain import SessionInfo
from services.errors import Unavailable
from services.redis_keys import tenant_base
from services.registry.sessions_redis import RedisSessionDirectory
from tests.redis_support import free_port, note_aclose, redis_client, scratch_keyspace

pytestmark = pytest.mark.asyncio


def session(session_id: str, tenant: str = "t1", user_id: str = "alice") -> SessionInfo:
    return SessionInfo(session_id, tenant, user_id, "node-1", "127.0.0.1:7001", connected_at=1.0)


async def test_concurrent_adds_never_pass_the_per_user_limit() -> None:
    async with scratch_keyspace() as (client, prefix):
        directory = RedisSessionDirectory(client, prefix)
        # Each add runs on a connection of its own, all at once.
        added = await asyncio.gather(*(directory.add(session(f"s{i}"), 3) for i in range(20)))
        assert sum(added) == 3
        assert len(await directory.list("t1", "alice")) == 3
        [presence] = await directory.presence("t1", ["alice"])
        assert presence.sessions == 3


async def test_tenant_ids_with_braces_colons_and_percents_stay_apart_in_one_slot_each() -> None:
    tenants = ["a", "a}", "{a}", "a:b", "a%7D", "%", "", "a:user:x"]
    async with scratch_keyspace() as (client, prefix):
        directory = RedisSessionDirectory(client, prefix)
        for tenant in tenants:
            assert await directory.add(session("s1", tenant), 3)
            await directory.remove(tenant, "s1", 2.0)
            assert await directory.add(session("s2", tenant, user_id=f"user:{tenant}"), 3)
        bases = {tenant: tenant_base(prefix, tenant) for tenant in tenants}
        assert len(set(bases.values())) == len(tenants)
        keys = [key.decode() async for key in client.scan_iter(match=prefix + "*")]
        for tenant in tenants:
            assert [s.session_id for s in await directory.list(tenant)] == ["s2"]
            mine = [key for key in keys if key.startswith(bases[tenant] + ":")]
            # The session hash, the index, the user's set and both users' presence.
            assert len(mine) == 5, mine
            assert len({key_slot(key.encode()) for key in mine}) == 1
        assert sorted(s.tenant for s in await directory.expire(10.0, 3.0)) == sorted(tenants)


async def test_a_prefix_with_braces_or_a_decoding_client_is_refused() -> None:
    async with redis_client() as client:
        with pytest.raises(ValueError, match="braces"):
            RedisSessionDirectory(client, "herald:{x}:")
    async with redis_client(decode_responses=True) as decoding:
        with pytest.raises(ValueError, match="decode_responses"):
            RedisSessionDirectory(decoding, "herald:")


async def test_aclose_closes_only_an_owned_client(monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[str] = []
    async with redis_client() as shared, redis_client() as owned:
        note_aclose(monkeypatch, shared, "shared", closed)
        note_aclose(monkeypatch, owned, "owned", closed)
        await RedisSessionDirectory(shared, "herald-test:").aclose()
        await RedisSessionDirectory(owned, "herald-test:", owns_client=True).aclose()
        assert closed == ["owned"]


async def test_redis_out_of_reach_is_unavailable_not_internal() -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1.0)
    directory = RedisSessionDirectory(client, "herald-test:", owns_client=True)
    try:
        with pytest.raises(Unavailable):
            await directory.add(session("s1"), 3)
        with pytest.raises(Unavailable):
            await directory.touch("t1", ["s1"], 2.0)
        with pytest.raises(Unavailable):
            await directory.expire(10.0, 3.0)
    finally:
        await directory.aclose()

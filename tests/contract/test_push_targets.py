"""PushTargetStore contract: targets per tenant and user, idempotent by id, removable when gone."""

from __future__ import annotations

import pytest

from services.push.targets import PushKind, PushTargetRecord, PushTargetStore, target_id

pytestmark = pytest.mark.asyncio

T1, T2 = "tenant-1", "tenant-2"


def fcm(user: str, token: str, at: float = 100.0) -> PushTargetRecord:
    return PushTargetRecord(target_id(PushKind.FCM, token), user, PushKind.FCM, token, "", "", at)


def webpush(user: str, endpoint: str, at: float = 100.0) -> PushTargetRecord:
    return PushTargetRecord(
        target_id(PushKind.WEBPUSH, endpoint), user, PushKind.WEBPUSH, endpoint, "pk", "au", at
    )


async def test_register_and_list_oldest_first(push_target_store: PushTargetStore) -> None:
    second = await push_target_store.register(T1, fcm("alice", "tok-b", 200.0))
    first = await push_target_store.register(T1, webpush("alice", "https://push/1", 100.0))
    await push_target_store.register(T1, fcm("bob", "tok-c"))
    assert await push_target_store.list(T1, "alice") == [first, second]
    assert first.p256dh == "pk"
    assert first.auth == "au"
    assert first.kind is PushKind.WEBPUSH


async def test_same_token_again_is_one_target(push_target_store: PushTargetStore) -> None:
    await push_target_store.register(T1, fcm("alice", "tok", 100.0))
    again = await push_target_store.register(T1, fcm("alice", "tok", 300.0))
    assert again.registered_at == 100.0
    assert len(await push_target_store.list(T1, "alice")) == 1


async def test_a_token_moves_to_its_new_user(push_target_store: PushTargetStore) -> None:
    await push_target_store.register(T1, fcm("alice", "tok", 100.0))
    moved = await push_target_store.register(T1, fcm("bob", "tok", 300.0))
    assert await push_target_store.list(T1, "alice") == []
    assert await push_target_store.list(T1, "bob") == [moved]
    assert moved.registered_at == 300.0


async def test_tenants_are_isolated(push_target_store: PushTargetStore) -> None:
    mine = await push_target_store.register(T1, fcm("alice", "tok"))
    await push_target_store.register(T2, fcm("alice", "other"))
    assert await push_target_store.list(T1, "alice") == [mine]
    assert not await push_target_store.unregister(T2, "alice", mine.target_id)
    assert await push_target_store.remove(T2, [mine.target_id]) == 0
    assert await push_target_store.list(T1, "alice") == [mine]


async def test_unregister_only_the_users_own(push_target_store: PushTargetStore) -> None:
    target = await push_target_store.register(T1, fcm("alice", "tok"))
    assert not await push_target_store.unregister(T1, "bob", target.target_id)
    assert await push_target_store.unregister(T1, "alice", target.target_id)
    assert not await push_target_store.unregister(T1, "alice", target.target_id)
    assert await push_target_store.list(T1, "alice") == []


async def test_remove_gone_targets(push_target_store: PushTargetStore) -> None:
    a = await push_target_store.register(T1, fcm("alice", "a"))
    b = await push_target_store.register(T1, fcm("bob", "b"))
    keep = await push_target_store.register(T1, fcm("bob", "c", 200.0))
    assert await push_target_store.remove(T1, [a.target_id, b.target_id, "nope"]) == 2
    assert await push_target_store.remove(T1, []) == 0
    assert await push_target_store.list(T1, "alice") == []
    assert await push_target_store.list(T1, "bob") == [keep]

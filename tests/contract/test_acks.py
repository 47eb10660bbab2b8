"""AckStore contract: a watermark plus the acked cursors above it, per tenant, user and log."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.domain import BROADCAST, LogKey, channel_log, user_log
from services.stream.acks import AckState, AckStore
from tests.contract.conftest import ACK_STORES

pytestmark = pytest.mark.asyncio


async def get(store: AckStore, tenant: str, user_id: str, key: LogKey) -> AckState:
    [state] = await store.get(tenant, user_id, [key])
    return state


T1, T2 = "tenant-1", "tenant-2"
INBOX, NEWS = user_log("alice"), channel_log("news")


async def test_get_answers_many_logs_in_one_call(ack_store: AckStore) -> None:
    await ack_store.ack(T1, "alice", NEWS, [1, 3])
    await ack_store.ack_up_to(T1, "alice", INBOX, 4)
    assert await ack_store.get(T1, "alice", [NEWS, INBOX, user_log("bob"), NEWS]) == [
        AckState(1, {3}),
        AckState(4, set()),
        AckState(0, set()),
        AckState(1, {3}),
    ]
    assert await ack_store.get(T1, "alice", []) == []


async def test_nothing_is_acked_at_first(ack_store: AckStore) -> None:
    assert await get(ack_store, T1, "alice", INBOX) == AckState(0, set())


async def test_ack_returns_the_cursors_that_were_not_acked_before(ack_store: AckStore) -> None:
    assert await ack_store.ack(T1, "alice", INBOX, [2, 5]) == [2, 5]
    assert await ack_store.ack(T1, "alice", INBOX, [5, 1, 2]) == [1]
    assert await ack_store.ack(T1, "alice", INBOX, [7, 7]) == [7]
    assert await ack_store.ack(T1, "alice", INBOX, []) == []
    assert await get(ack_store, T1, "alice", INBOX) == AckState(2, {5, 7})


async def test_ack_takes_any_iterable(ack_store: AckStore) -> None:
    assert await ack_store.ack(T1, "alice", INBOX, (c for c in (3, 1))) == [3, 1]
    assert await get(ack_store, T1, "alice", INBOX) == AckState(1, {3})


async def test_contiguous_acks_raise_the_watermark(ack_store: AckStore) -> None:
    await ack_store.ack(T1, "alice", INBOX, [3])
    await ack_store.ack(T1, "alice", INBOX, [2])
    assert await get(ack_store, T1, "alice", INBOX) == AckState(0, {2, 3})
    await ack_store.ack(T1, "alice", INBOX, [1])
    assert await get(ack_store, T1, "alice", INBOX) == AckState(3, set())


async def test_ack_up_to_returns_the_state_from_before(ack_store: AckStore) -> None:
    await ack_store.ack(T1, "alice", INBOX, [1, 4, 6, 9])
    before = await ack_store.ack_up_to(T1, "alice", INBOX, 5)
    assert before == AckState(1, {4, 6, 9})
    # Everything at or below 5 is acked; 6 joins the watermark, 9 stays above it.
    assert await get(ack_store, T1, "alice", INBOX) == AckState(6, {9})
    assert await ack_store.ack(T1, "alice", INBOX, [2, 6, 7]) == [7]
    assert await get(ack_store, T1, "alice", INBOX) == AckState(7, {9})


async def test_ack_up_to_below_the_watermark_changes_nothing(ack_store: AckStore) -> None:
    await ack_store.ack_up_to(T1, "alice", INBOX, 10)
    await ack_store.ack(T1, "alice", INBOX, [12])
    assert await ack_store.ack_up_to(T1, "alice", INBOX, 4) == AckState(10, {12})
    assert await get(ack_store, T1, "alice", INBOX) == AckState(10, {12})


async def test_ack_up_to_on_a_fresh_log(ack_store: AckStore) -> None:
    assert await ack_store.ack_up_to(T1, "alice", INBOX, 3) == AckState(0, set())
    assert await get(ack_store, T1, "alice", INBOX) == AckState(3, set())


async def test_states_are_copies(ack_store: AckStore) -> None:
    await ack_store.ack(T1, "alice", INBOX, [1, 3])
    state = await get(ack_store, T1, "alice", INBOX)
    state.above.add(9)
    state.up_to = 8
    before = await ack_store.ack_up_to(T1, "alice", INBOX, 1)
    before.above.clear()
    assert await get(ack_store, T1, "alice", INBOX) == AckState(1, {3})


async def test_tenants_users_and_logs_are_separate(ack_store: AckStore) -> None:
    await ack_store.ack(T1, "alice", INBOX, [1, 2, 5])
    await ack_store.ack_up_to(T1, "alice", NEWS, 9)
    assert await get(ack_store, T2, "alice", INBOX) == AckState()
    assert await get(ack_store, T1, "bob", INBOX) == AckState()
    assert await get(ack_store, T1, "bob", NEWS) == AckState()
    assert await get(ack_store, T1, "alice", BROADCAST) == AckState()
    # The same cursors are new elsewhere.
    assert await ack_store.ack(T2, "alice", INBOX, [1, 2, 5]) == [1, 2, 5]
    assert await ack_store.ack(T1, "bob", NEWS, [1]) == [1]
    assert await get(ack_store, T1, "alice", INBOX) == AckState(2, {5})
    assert await get(ack_store, T1, "alice", NEWS) == AckState(9, set())


@pytest.mark.parametrize("backend", sorted(ACK_STORES))
@settings(max_examples=100, deadline=None, database=None)
@given(
    ops=st.lists(
        st.one_of(
            st.lists(st.integers(min_value=1, max_value=30), max_size=6),
            st.integers(min_value=0, max_value=30),
        ),
        max_size=20,
    )
)
async def test_acks_behave_like_a_set_of_cursors(backend: str, ops: list[list[int] | int]) -> None:
    acked: set[int] = set()
    async with ACK_STORES[backend]() as store:
        for op in ops:
            if isinstance(op, list):
                fresh = list(dict.fromkeys(c for c in op if c not in acked))
                assert await store.ack(T1, "alice", INBOX, op) == fresh
                acked.update(op)
            else:
                before = await store.ack_up_to(T1, "alice", INBOX, op)
                assert {c for c in range(1, 32) if before.is_acked(c)} == acked
                acked.update(range(1, op + 1))
            state = await get(store, T1, "alice", INBOX)
            # Canonical form: the watermark is as high as it can be, `above` holds only gaps' far
            # sides.
            assert state.up_to + 1 not in acked
            assert all(c > state.up_to + 1 for c in state.above)
            assert {c for c in range(1, 32) if state.is_acked(c)} == acked

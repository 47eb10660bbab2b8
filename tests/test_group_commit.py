"""Group commit: dispatches that arrive together are appended in one store call per tenant,
and each caller hears only of its own notifications, once they are stored."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from services.clock import ManualClock
from services.config import DeliverySettings
from services.domain import Accepted, NewRecord, TargetKind
from services.errors import Unavailable
from services.stream.broker import Publication
from services.stream.broker_memory import MemoryBroker
from services.stream.dispatch import _GROUP_ENOUGH, _GROUPS_IN_FLIGHT, Dispatcher
from services.stream.log import AppendResult, LogAppend
from services.stream.log_memory import MemoryLogStore
from services.stream.status_memory import MemoryStatusStore

pytestmark = pytest.mark.asyncio


class CountingLogs(MemoryLogStore):
    def __init__(self, status: MemoryStatusStore) -> None:
        super().__init__(status)
        self.calls: list[tuple[str, int]] = []
        self.broken_tenants: set[str] = set()

    async def append(
        self, tenant: str, appends: Sequence[LogAppend], records: Sequence[NewRecord] = ()
    ) -> list[AppendResult]:
        self.calls.append((tenant, len(records)))
        if tenant in self.broken_tenants:
            raise ConnectionResetError("the database went away")
        return await super().append(tenant, appends, records)


def accepted(tenant: str, number: int, users: tuple[str, ...]) -> Accepted:
    return Accepted(
        f"{tenant}-{number}", tenant, TargetKind.USERS, users, "", 2, 1.0, 100.0, b"\x0a\x00", b""
    )


def dispatcher(logs: CountingLogs, status: MemoryStatusStore, window_s: float) -> Dispatcher:
    return Dispatcher(
        logs=logs,
        status=status,
        broker=MemoryBroker(),
        settings=DeliverySettings(),
        clock=ManualClock(),
        group_window_s=window_s,
    )


async def test_concurrent_dispatches_share_one_append_per_tenant() -> None:
    status = MemoryStatusStore()
    logs = CountingLogs(status)
    group = dispatcher(logs, status, window_s=0.005)
    results = await asyncio.gather(
        group.dispatch([accepted("a", 1, ("u1",)), accepted("a", 2, ("u1", "u2"))]),
        group.dispatch([accepted("b", 3, ("u1", "u2", "u3"))]),
        group.dispatch([accepted("a", 4, ("u3",))]),
    )
    assert results == [[1, 2], [3], [1]]
    assert sorted(logs.calls) == [("a", 3), ("b", 1)]
    # Stored before anyone was answered: every record is there.
    for tenant, number in (("a", 1), ("a", 2), ("b", 3), ("a", 4)):
        assert await status.get(tenant, f"{tenant}-{number}") is not None


async def test_a_failed_append_fails_only_its_tenants_callers() -> None:
    status = MemoryStatusStore()
    logs = CountingLogs(status)
    logs.broken_tenants.add("b")
    group = dispatcher(logs, status, window_s=0.005)
    ok, failed = await asyncio.gather(
        group.dispatch([accepted("a", 1, ("u1",))]),
        group.dispatch([accepted("b", 2, ("u1",))]),
        return_exceptions=True,
    )
    assert ok == [1]
    assert isinstance(failed, ConnectionResetError)
    assert await status.get("b", "b-2") is None


async def test_a_dispatch_of_several_tenants_stores_each_under_its_own() -> None:
    # A node's Dispatch call carries the tenant in every notification.
    status = MemoryStatusStore()
    logs = CountingLogs(status)
    group = dispatcher(logs, status, window_s=0.005)
    assert await group.dispatch([accepted("a", 1, ("u1",)), accepted("b", 2, ("u1", "u2"))]) == [
        1,
        2,
    ]
    assert sorted(logs.calls) == [("a", 1), ("b", 1)]
    assert await status.get("a", "a-1") is not None
    assert await status.get("b", "b-2") is not None
    assert await status.get("a", "b-2") is None


async def test_without_a_window_each_dispatch_is_its_own_append() -> None:
    status = MemoryStatusStore()
    logs = CountingLogs(status)
    direct = dispatcher(logs, status, window_s=0.0)
    await asyncio.gather(
        direct.dispatch([accepted("a", 1, ("u1",))]), direct.dispatch([accepted("a", 2, ("u1",))])
    )
    assert logs.calls == [("a", 1), ("a", 1)]


async def test_an_idle_node_commits_a_lone_send_at_once_and_a_busy_one_waits_the_window() -> None:
    status = MemoryStatusStore()
    logs = CountingLogs(status)
    group = dispatcher(logs, status, window_s=0.4)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await group.dispatch([accepted("a", 1, ("u1",))]) == [1]
    assert loop.time() - started < 0.3  # not the window: nothing else was being committed
    # Right after a group: the next send waits the window, and what comes meanwhile shares it.
    started = loop.time()
    first = asyncio.ensure_future(group.dispatch([accepted("a", 2, ("u1",))]))
    await asyncio.sleep(0.05)
    second = group.dispatch([accepted("a", 3, ("u2",))])
    assert await asyncio.gather(first, second) == [[1], [1]]
    assert loop.time() - started >= 0.35
    assert logs.calls == [("a", 1), ("a", 2)]


async def test_a_busy_node_commits_a_group_of_enough_notifications_at_once() -> None:
    # A SendBatch of a few hundred amortizes its commit by itself: it does not wait the
    # window, and it takes what waited for the window along.
    status = MemoryStatusStore()
    logs = CountingLogs(status)
    group = dispatcher(logs, status, window_s=0.4)
    loop = asyncio.get_running_loop()
    assert await group.dispatch([accepted("a", 0, ("u1",))]) == [1]  # the node is busy now
    started = loop.time()
    lone = asyncio.ensure_future(group.dispatch([accepted("a", 1, ("u1",))]))
    await asyncio.sleep(0.01)
    enough = _GROUP_ENOUGH - 1
    batch = [accepted("a", 2 + i, (f"u{i}",)) for i in range(enough)]
    assert await asyncio.gather(lone, group.dispatch(batch)) == [[1], [1] * enough]
    assert loop.time() - started < 0.3
    assert logs.calls == [("a", 1), ("a", 1 + enough)]
    # One notification to as many users is as much to commit: it does not wait either.
    started = loop.time()
    users = tuple(f"v{i}" for i in range(_GROUP_ENOUGH))
    assert await group.dispatch([accepted("a", 9999, users)]) == [_GROUP_ENOUGH]
    assert loop.time() - started < 0.3
    # One short of it waits the window.
    started = loop.time()
    assert await group.dispatch([accepted("a", 10_000, users[1:])]) == [_GROUP_ENOUGH - 1]
    assert loop.time() - started >= 0.35


class GatedLogs(CountingLogs):
    """Appends that wait for `gate` (counted when they start)."""

    def __init__(self, status: MemoryStatusStore) -> None:
        super().__init__(status)
        self.gate = asyncio.Event()

    async def append(
        self, tenant: str, appends: Sequence[LogAppend], records: Sequence[NewRecord] = ()
    ) -> list[AppendResult]:
        self.calls.append((tenant, len(records)))
        await self.gate.wait()
        return await MemoryLogStore.append(self, tenant, appends, records)


# A notification to as many users as make a group enough by themselves.
ENOUGH_USERS = tuple(f"u{i}" for i in range(_GROUP_ENOUGH))


def gated(window_s: float) -> tuple[GatedLogs, Dispatcher]:
    status = MemoryStatusStore()
    logs = GatedLogs(status)
    return logs, dispatcher(logs, status, window_s)


async def test_groups_in_flight_are_bounded_and_what_comes_meanwhile_goes_together() -> None:
    # Under load the groups grow instead of multiplying: the pool keeps connections for acks,
    # status and reads.
    logs, group = gated(window_s=0.4)

    def batch(number: int) -> list[Accepted]:
        return [accepted("a", number * 1000 + i, (f"u{i}",)) for i in range(_GROUP_ENOUGH)]

    calls = [asyncio.ensure_future(group.dispatch(batch(n))) for n in range(_GROUPS_IN_FLIGHT)]
    await asyncio.sleep(0.01)
    assert len(logs.calls) == _GROUPS_IN_FLIGHT  # each enough to go at once
    later = [asyncio.ensure_future(group.dispatch(batch(n))) for n in (10, 11)]
    lone = asyncio.ensure_future(group.dispatch([accepted("a", 99, ("u1",))]))
    await asyncio.sleep(0.5)  # past the window, too
    assert len(logs.calls) == _GROUPS_IN_FLIGHT  # nothing more started: all slots taken
    logs.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*calls, *later, lone), timeout=5)
    assert results == [[1] * _GROUP_ENOUGH] * (_GROUPS_IN_FLIGHT + 2) + [[1]]
    # The three that waited went as one group, once the first slot came free.
    assert logs.calls[_GROUPS_IN_FLIGHT:] == [("a", 2 * _GROUP_ENOUGH + 1)]
    await group.aclose()


async def test_a_lone_send_whose_window_ran_out_while_every_slot_was_taken_goes_next() -> None:
    logs, group = gated(window_s=0.05)
    calls = [
        asyncio.ensure_future(group.dispatch([accepted("a", n, ENOUGH_USERS)]))
        for n in range(_GROUPS_IN_FLIGHT)
    ]
    await asyncio.sleep(0.01)
    lone = asyncio.ensure_future(group.dispatch([accepted("a", 99, ("u1",))]))
    await asyncio.sleep(0.2)  # its window ran out with every slot taken
    assert len(logs.calls) == _GROUPS_IN_FLIGHT
    logs.gate.set()
    assert await asyncio.wait_for(lone, 5) == [1]
    assert logs.calls[_GROUPS_IN_FLIGHT:] == [("a", 1)]
    await asyncio.gather(*calls)
    await group.aclose()


async def test_a_group_cancelled_before_it_started_frees_its_slot() -> None:
    # E.g. a shutdown that cancels what is in flight: the node's later groups still start.
    status = MemoryStatusStore()
    logs = CountingLogs(status)
    group = dispatcher(logs, status, window_s=0.4)
    users = ENOUGH_USERS
    for n in range(_GROUPS_IN_FLIGHT):
        call = asyncio.ensure_future(group.dispatch([accepted("a", n, users)]))
        await asyncio.sleep(0)  # the group's task exists, and has not run yet
        for task in list(group._groups):
            task.cancel()
        with pytest.raises(Unavailable, match="retry it"):
            await asyncio.wait_for(call, 5)
    assert logs.calls == []
    assert await asyncio.wait_for(group.dispatch([accepted("a", 9, users)]), 5) == [len(users)]
    assert logs.calls == [("a", 1)]


class HeldBroker(MemoryBroker):
    """A broker whose publications wait until `release` is set, or fail with `error`."""

    def __init__(self, error: Exception | None = None) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.error = error
        self.published: list[Publication] = []

    async def publish(self, publications: Sequence[Publication]) -> None:
        await self.release.wait()
        if self.error is not None:
            raise self.error
        self.published.extend(publications)
        await super().publish(publications)


def held_dispatcher(
    logs: CountingLogs, status: MemoryStatusStore, broker: HeldBroker
) -> Dispatcher:
    return Dispatcher(
        logs=logs,
        status=status,
        broker=broker,
        settings=DeliverySettings(),
        clock=ManualClock(),
        group_window_s=0.005,
    )


async def test_a_group_is_answered_once_durable_before_its_publication() -> None:
    # The answers run ahead of the stream writers the publication wakes: a group's senders
    # never wait for the fan-out of what they sent.
    status = MemoryStatusStore()
    logs = CountingLogs(status)
    broker = HeldBroker()
    group = held_dispatcher(logs, status, broker)
    answers = await asyncio.wait_for(
        asyncio.gather(
            group.dispatch([accepted("a", 1, ("u1",))]),
            group.dispatch([accepted("a", 2, ("u1", "u2"))]),
        ),
        timeout=5,
    )
    assert answers == [[1], [2]]
    assert broker.published == []  # not announced yet: the publication is still held
    broker.release.set()
    await group.aclose()  # waits for the group in flight, its publication included
    assert sorted(p.key.name for p in broker.published) == ["u1", "u2"]
    assert {p.head for p in broker.published if p.key.name == "u1"} == {2}


async def test_a_failed_announcement_leaves_a_durable_group_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    status = MemoryStatusStore()
    logs = CountingLogs(status)
    broker = HeldBroker(error=RuntimeError("the broker broke"))
    broker.release.set()
    group = held_dispatcher(logs, status, broker)
    assert await group.dispatch([accepted("a", 1, ("u1",))]) == [1]
    await group.aclose()
    assert await status.get("a", "a-1") is not None
    assert "announcing appended notifications failed" in caplog.text


@pytest.mark.parametrize("window_s", [0.0, 0.005])
async def test_what_was_stored_is_announced_when_a_later_tenant_fails(window_s: float) -> None:
    status = MemoryStatusStore()
    logs = CountingLogs(status)
    logs.broken_tenants.add("b")
    broker = HeldBroker()
    broker.release.set()
    group = Dispatcher(
        logs=logs,
        status=status,
        broker=broker,
        settings=DeliverySettings(),
        clock=ManualClock(),
        group_window_s=window_s,
    )
    with pytest.raises(ConnectionResetError):
        await group.dispatch([accepted("a", 1, ("u1",)), accepted("b", 2, ("u1",))])
    await group.aclose()
    # a-1 is stored: its readers are woken although the call as a whole failed.
    assert [(p.tenant, p.key.name) for p in broker.published] == [("a", "u1")]

"""The circuit breaker: closed, open, half-open, on an injected clock."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from services.backends import Backend, memory_stores
from services.breaker import BreakerState, CircuitBreaker, guarded
from services.clock import ManualClock, SystemClock
from services.config import Config
from services.errors import InvalidArgument, Unavailable

pytestmark = pytest.mark.asyncio


class Flaky:
    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    async def read(self, value: int) -> int:
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("connection refused")
        return value * 2

    async def reject(self) -> None:
        raise InvalidArgument("bad input")


def breaker(clock: ManualClock, changes: list[BreakerState]) -> CircuitBreaker:
    return CircuitBreaker(
        "postgres",
        clock=clock,
        failures=(OSError,),
        failure_threshold=2,
        reset_timeout_s=5.0,
        on_change=changes.append,
    )


async def test_failures_open_the_circuit_and_calls_fail_fast() -> None:
    clock, changes = ManualClock(), []
    backend = Flaky()
    store = guarded(backend, breaker(clock, changes))
    assert await store.read(2) == 4
    backend.down = True
    for _ in range(2):
        with pytest.raises(Unavailable, match="postgres is unreachable"):
            await store.read(1)
    assert changes == [BreakerState.OPEN]
    calls = backend.calls
    with pytest.raises(Unavailable, match=r"Retry in 5\.0 s"):
        await store.read(1)
    assert backend.calls == calls  # refused without touching the backend


async def test_after_the_timeout_one_trial_closes_or_reopens_it() -> None:
    clock, changes = ManualClock(), []
    backend = Flaky()
    cb = breaker(clock, changes)
    store = guarded(backend, cb)
    backend.down = True
    for _ in range(2):
        with pytest.raises(Unavailable):
            await store.read(1)
    await clock.advance(5.0)
    with pytest.raises(Unavailable):
        await store.read(1)  # the trial fails: open again, for another 5 s
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.OPEN]
    await clock.advance(4.0)
    with pytest.raises(Unavailable, match=r"Retry in 1\.0 s"):
        await store.read(1)
    await clock.advance(1.0)
    backend.down = False
    assert await store.read(3) == 6
    assert cb.state is BreakerState.CLOSED
    assert changes[-2:] == [BreakerState.HALF_OPEN, BreakerState.CLOSED]


async def test_one_failure_shared_by_a_batch_of_callers_counts_once() -> None:
    """A store that batches its callers (acks_postgres.py) hands one statement's failure to each:
    that is one failure of the backend, not one per caller."""
    clock, changes = ManualClock(), []
    one_statement = ConnectionResetError("connection reset")

    class Batched:
        async def ack(self, failure: BaseException) -> None:
            raise failure

    store = guarded(Batched(), breaker(clock, changes))  # threshold 2
    for _ in range(3):
        with pytest.raises(Unavailable):
            await store.ack(one_statement)
    assert changes == []
    with pytest.raises(Unavailable):
        await store.ack(ConnectionResetError("connection reset"))  # the next statement fails too
    assert changes == [BreakerState.OPEN]


async def test_the_callers_errors_pass_through_and_do_not_count() -> None:
    clock, changes = ManualClock(), []
    store = guarded(Flaky(), breaker(clock, changes))
    for _ in range(5):
        with pytest.raises(InvalidArgument):
            await store.reject()
    assert changes == []


async def test_the_backend_monitor_ends_when_cancelled_even_if_a_probe_swallows_it() -> None:
    # A client library may turn the cancellation of a call in flight into an error of its own
    # (a lost connection): the breaker reports it as Unavailable, which the monitor shrugs off.
    # Before, the monitor then slept and probed for ever, and the node's shutdown waited on it.
    probing = asyncio.Event()

    async def probe() -> object:
        probing.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ConnectionResetError("connection lost") from None
        return None

    breaker = CircuitBreaker("Flaky", clock=SystemClock(), failures=(OSError,))
    stores = memory_stores(Config())
    stores = dataclasses.replace(stores, backends=[Backend("Flaky", breaker, probe, ("ingest",))])
    monitor = asyncio.ensure_future(stores.monitor(0.01))
    await probing.wait()
    monitor.cancel()
    async with asyncio.timeout(5):
        with pytest.raises(asyncio.CancelledError):
            await monitor

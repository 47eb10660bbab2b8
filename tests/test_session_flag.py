"""Session.wakeup and .closed are `Flag`s: asyncio.Event's semantics, checked side by side."""

from __future__ import annotations

import asyncio

import pytest

from services.stream.session import Flag

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("make", [asyncio.Event, Flag], ids=["asyncio.Event", "Flag"])
async def test_set_wakes_every_waiter_and_clear_does_not_unwake_them(make: type) -> None:
    flag = make()
    assert not flag.is_set()
    waiters = [asyncio.ensure_future(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    flag.clear()  # cleared before the waiters ran: they were woken all the same
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert not flag.is_set()
    flag.set()
    assert flag.is_set()
    assert await asyncio.wait_for(flag.wait(), 1) is True  # set: returns at once


@pytest.mark.parametrize("make", [asyncio.Event, Flag], ids=["asyncio.Event", "Flag"])
async def test_a_cancelled_waiter_is_forgotten_and_others_still_wake(make: type) -> None:
    flag = make()
    cancelled = asyncio.ensure_future(flag.wait())
    kept = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    if isinstance(flag, Flag):
        # Dropped at the next wait (a session's writer waits again after every wakeup).
        again = flag.wait()
        assert flag._waiters == [kept, again]
    flag.set()
    assert await asyncio.wait_for(kept, 1) is True
    if isinstance(flag, Flag):
        assert flag._waiters is None  # nothing is held once set

"""A node's stop is bounded even when a part of it hangs: each closer gets its own time, a
closer that overruns it is named in the log and left behind, and the closers after it still
close (the stores, which flush what must persist, come last)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest

from services.server import _Cancel
from services.stream import delivery as delivery_module
from tests.harness import make_config, start_herald

pytestmark = pytest.mark.asyncio


class _Hangs:
    def __init__(self) -> None:
        self.cancelled = False

    async def aclose(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


class _Closes:
    def __init__(self) -> None:
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


async def test_a_closer_that_hangs_is_left_behind_and_the_rest_still_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    herald = await start_herald("up", make_config(tmp_path))
    node = herald.nodes["up"]
    hangs, closes = _Hangs(), _Closes()
    node.closers[:0] = [hangs, closes]
    node.close_step_s = 0.2
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.WARNING, logger="services.server"):
        async with asyncio.timeout(5.0):
            await herald.stop()
    # The grace period (1 s in the harness) and the closer's 0.2 s, not the hang.
    assert loop.time() - started < 3.0
    assert hangs.cancelled
    assert closes.closed
    (warning,) = [r for r in caplog.records if "did not close in time" in r.getMessage()]
    assert getattr(warning, "part", None) == "_Hangs"


async def test_a_cancelled_stop_is_not_swallowed_by_a_task_it_cancels(tmp_path: Path) -> None:
    """The stop cancels a background task whose clean-up takes a while; a cancel of the stop
    itself meanwhile ends the stop (it is not taken for the task's own cancel)."""
    herald = await start_herald("up", make_config(tmp_path))
    node = herald.nodes["up"]
    cleaning, release = asyncio.Event(), asyncio.Event()

    async def background() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaning.set()
            await release.wait()
            raise

    task = asyncio.ensure_future(background())
    await asyncio.sleep(0)
    after = _Closes()
    node.closers[:0] = [_Cancel(task), after]
    stopping = asyncio.ensure_future(herald.stop())
    async with asyncio.timeout(5.0):
        await cleaning.wait()
    stopping.cancel()
    await asyncio.sleep(0)
    release.set()
    async with asyncio.timeout(5.0):
        with pytest.raises(asyncio.CancelledError):
            await stopping
    assert not after.closed
    # The rest of the node closes as a stop would have closed it (its metrics collector is
    # process-wide: left registered, it would show in the next test's scrape).
    del node.closers[:2]
    node._stopped = False
    await herald.stop()


async def test_a_background_task_that_ignores_its_cancel_is_left_behind_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery_module, "TASKS_STOP_S", 0.2)
    herald = await start_herald("up", make_config(tmp_path))
    core = herald.nodes["up"].delivery
    assert core is not None
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    core._spawn(stubborn())
    await asyncio.sleep(0)  # it runs up to its wait (a task cancelled before it ran just ends)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with caplog.at_level(logging.WARNING, logger="services.stream.delivery"):
            async with asyncio.timeout(5.0):
                await herald.stop()
        assert loop.time() - started < 3.0  # the 1 s grace and the 0.2 s bound
        (warning,) = [r for r in caplog.records if "did not end when cancelled" in r.getMessage()]
        assert any("stubborn" in name for name in getattr(warning, "tasks", []))
    finally:
        release.set()

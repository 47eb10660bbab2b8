"""The server samples how late its event loop runs timers: a blocked loop delays every stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import REGISTRY

from services import metrics
from tests.metrics_support import until

pytestmark = pytest.mark.asyncio


def _observed() -> tuple[float, float]:
    count = REGISTRY.get_sample_value("herald_event_loop_lag_seconds_count") or 0.0
    total = REGISTRY.get_sample_value("herald_event_loop_lag_seconds_sum") or 0.0
    return count, total


def _more_than(count: float) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return _observed()[0] > count

    return check


async def test_a_blocked_loop_is_observed_as_lag() -> None:
    watcher = asyncio.ensure_future(metrics.watch_loop_lag(0.02))
    try:
        start, _ = _observed()
        await until(_more_than(start + 1))  # a few samples of an idle loop
        count, total = _observed()
        time.sleep(0.2)  # noqa: ASYNC251 - blocks the loop on purpose
        await until(_more_than(count))
        later_count, later_total = _observed()
        # The sample due during the block woke about 0.18 s late (at least the block less one
        # interval), and nothing else observed a negative lag.
        assert later_total - total >= 0.15
        slow = REGISTRY.get_sample_value("herald_event_loop_lag_seconds_bucket", {"le": "0.1"})
        assert slow is not None
        assert slow < later_count
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher

"""The task on each ingest node that releases scheduled sends when they are due.

It sleeps on the node's clock until the earliest time a held send becomes claimable, woken
sooner when this node holds an earlier one, and never longer than `poll_interval_s`: another
node may hold earlier sends, or die holding a lease. A pass that claimed a full batch is
followed by another at once. Cancelled sends are purged after the status retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import math

from services.clock import Clock
from services.ingest.intake import BoundedLog
from services.ingest.scheduling import Scheduling

# The pause after a pass that found a send due but could not claim it (clock seconds): another
# node's claim of it was in flight; its lease follows.
_RACE_PAUSE_S = 0.01
_PURGE_INTERVAL_S = 3600.0


class Scheduler:
    """Runs `Scheduling.release_due` at the right times; `start` it, `aclose` it."""

    def __init__(
        self,
        scheduling: Scheduling,
        clock: Clock,
        *,
        batch: int,
        lease_s: float,
        poll_interval_s: float,
        retry_delay_s: float,
        retention_s: float,
    ) -> None:
        self._scheduling = scheduling
        self._clock = clock
        self._batch = batch
        self._lease_s = lease_s
        self._poll_interval_s = poll_interval_s
        self._retry_delay_s = retry_delay_s
        self._retention_s = retention_s
        self._wake = asyncio.Event()
        # While a pass runs: inf, so that a send held meanwhile is looked at by the next pass.
        self._sleeping_until = math.inf
        self._purged_at = -math.inf
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._unwatch = scheduling.watch(self._held)
        # A store out of reach fails every pass: said once per interval, with a count.
        self._log = BoundedLog()
        # Passes that released something, for tests and operators.
        self.passes = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="herald-scheduler")

    def _held(self, deliver_at: float) -> None:
        if deliver_at < self._sleeping_until:
            self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            self._sleeping_until = math.inf
            self._wake.clear()
            try:
                pause = await self._pass()
            except Exception as exc:
                # The store is out of reach (its breaker open), or a bug: the next pass retries.
                self._log.warning("scheduler pass failed", error=type(exc).__name__)
                pause = self._retry_delay_s
            if pause > 0 and not self._stopping:
                await self._sleep(pause)

    async def _pass(self) -> float:
        """One pass; returns how long to sleep before the next (0: none)."""
        now = self._clock.now()
        claimed = await self._scheduling.release_due(self._batch, self._lease_s, now)
        if claimed:
            self.passes += 1
        if claimed >= self._batch:
            return 0.0
        if now - self._purged_at >= _PURGE_INTERVAL_S:
            self._purged_at = now
            await self._scheduling.store.purge(now - self._retention_s)
        next_due = await self._scheduling.next_due()
        if next_due is None:
            return self._poll_interval_s
        if next_due <= now:
            # Due when this pass claimed, yet not claimed: another node's claim was in flight.
            return _RACE_PAUSE_S
        # The clock may have moved on during the pass: then at once.
        return max(0.0, min(self._poll_interval_s, next_due - self._clock.now()))

    async def _sleep(self, seconds: float) -> None:
        """`seconds` of the clock's time, or until woken by an earlier held send."""
        self._sleeping_until = self._clock.now() + seconds
        if self._wake.is_set():
            return
        sleep = asyncio.ensure_future(self._clock.sleep(seconds))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((sleep, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleep, woken):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def aclose(self, grace_s: float = 5.0) -> None:
        """Stops after the pass in hand, cut after `grace_s` (a claim it could not finish
        comes back to a scheduler after the lease)."""
        self._stopping = True
        self._unwatch()
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, grace_s)

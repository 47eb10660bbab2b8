"""A circuit breaker around a backend: stop waiting out timeouts on a server that is down.

States (the usual three):

- CLOSED: calls go through; `failure_threshold` failures in a row open the circuit.
- OPEN: calls fail at once with UNAVAILABLE (retryable, with when to retry) for
  `reset_timeout_s`; then the next call is let through as a trial (HALF_OPEN).
- HALF_OPEN: one trial call at a time; its success closes the circuit, its failure opens it
  again. Other calls meanwhile fail at once, as when OPEN.

Only the failures that say the backend is unreachable count (connection errors, timeouts, as
the caller names them); an error in the request (a constraint violated, bad input) is the
caller's, passes through unchanged and leaves the state alone.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any, TypeVar, cast

from services import metrics
from services.clock import Clock
from services.errors import Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        clock: Clock,
        failures: tuple[type[BaseException], ...],
        failure_threshold: int = 3,
        reset_timeout_s: float = 2.0,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self.name = name
        self._clock = clock
        self._failures = failures
        self._threshold = failure_threshold
        self._reset_timeout_s = reset_timeout_s
        self._on_change = on_change
        self.state = BreakerState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._trial_running = False
        # The failure counted last, until a call succeeds: a store that batches its callers
        # (acks_postgres.py) hands one statement's failure to each of them, and one statement
        # that failed is one failure, however many callers it carried.
        self._last_failure: BaseException | None = None

    def _set(self, state: BreakerState) -> None:
        if state is self.state:
            return
        self.state = state
        metrics.BREAKER_TRANSITIONS.labels(self.name, state.value).inc()
        log.warning("circuit %s", state.value, extra={"backend": self.name})
        if self._on_change is not None:
            self._on_change(state)

    def _refuse(self) -> Unavailable:
        wait = max(0.0, self._opened_at + self._reset_timeout_s - self._clock.now())
        return Unavailable(
            f"{self.name} is unreachable; nothing was stored. Retry in {max(wait, 0.1):.1f} s"
        )

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Runs `operation` unless the circuit is open.

        Raises:
            Unavailable: the circuit is open, or the operation failed to reach the backend.
        """
        trial = False
        if self.state is not BreakerState.CLOSED:
            if self._trial_running or (
                self.state is BreakerState.OPEN
                and self._clock.now() < self._opened_at + self._reset_timeout_s
            ):
                raise self._refuse()
            self._set(BreakerState.HALF_OPEN)
            self._trial_running = trial = True
        try:
            result = await operation()
        except self._failures as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # A client library turned the cancellation of a call in flight into an error of
                # its own (a lost connection): the caller was cancelled, the backend is fine.
                raise asyncio.CancelledError from exc
            if exc is not self._last_failure:
                self._last_failure = exc
                self._failed()
            raise Unavailable(
                f"{self.name} is unreachable ({type(exc).__name__}); retry shortly"
            ) from None
        finally:
            if trial:
                self._trial_running = False
        self._consecutive = 0
        self._last_failure = None
        self._set(BreakerState.CLOSED)
        return result

    def _failed(self) -> None:
        self._consecutive += 1
        if self.state is BreakerState.HALF_OPEN or self._consecutive >= self._threshold:
            self._opened_at = self._clock.now()
            self._set(BreakerState.OPEN)


def guarded(store: T, breaker: CircuitBreaker) -> T:
    """`store` with every coroutine method called through `breaker` (same interface)."""
    return cast(T, _Guarded(store, breaker))


class _Guarded:
    def __init__(self, store: Any, breaker: CircuitBreaker) -> None:
        self._store = store
        self._breaker = breaker

    def __getattr__(self, name: str) -> Any:
        # Called once per name: the result is kept on the instance, so later lookups find it
        # without coming here (a store call on the hot path pays for no closure).
        attribute = getattr(self._store, name)
        if name == "aclose" or not inspect.iscoroutinefunction(attribute):
            return attribute
        breaker = self._breaker

        def call(*args: Any, **kwargs: Any) -> Awaitable[Any]:
            return breaker.call(lambda: attribute(*args, **kwargs))

        setattr(self, name, call)
        return call

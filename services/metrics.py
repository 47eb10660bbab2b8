"""Prometheus metrics, defined once and labelled by tenant only where the cardinality is bounded."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class Tally:
    """A counter of the per-delivery hot path: a plain int, exported by `_Tallies`.

    A prometheus `Counter.inc` takes a lock and checks its argument (about 1 µs here); two of
    them per stream message were 2 % of a busy node's time. Only the event loop's thread adds to
    a tally, and the scrape thread reads a whole int, so no lock is needed.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class _Tallies(Collector):
    """Exports the tallies as counter families (name, help, {label values: tally})."""

    def __init__(self) -> None:
        self.families: list[tuple[str, str, list[str], dict[tuple[str, ...], Tally]]] = []

    def add(self, name: str, documentation: str) -> Tally:
        """An unlabelled counter."""
        return self.labelled(name, documentation, [], ())

    def labelled(
        self, name: str, documentation: str, labels: list[str], values: tuple[str, ...]
    ) -> Tally:
        for family_name, _, _, tallies in self.families:
            if family_name == name:
                return tallies.setdefault(values, Tally())
        tally = Tally()
        self.families.append((name, documentation, labels, {values: tally}))
        return tally

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, documentation, labels, tallies in self.families:
            family = CounterMetricFamily(name, documentation, labels=labels)
            for values, tally in tallies.items():
                family.add_metric(list(values), tally.value)
            yield family


_TALLIES = _Tallies()
REGISTRY.register(_TALLIES)

ACCEPTED = _TALLIES.add("herald_notifications_accepted", "Notifications accepted by ingest")
REJECTED = Counter(
    "herald_notifications_rejected_total", "Notifications refused by ingest", ["reason"]
)
DUPLICATES = Counter(
    "herald_idempotent_duplicates_total", "Sends answered from the idempotency store"
)
_DELIVERED = ("herald_deliveries", "Deliveries written to streams", ["attempt"])
DELIVERED_FIRST = _TALLIES.labelled(*_DELIVERED, ("first",))
DELIVERED_RETRY = _TALLIES.labelled(*_DELIVERED, ("retry",))
ACKED = _TALLIES.add("herald_acks", "Entries acknowledged")
EXPIRED = Counter("herald_expired_total", "Entries that expired before being acknowledged")
FAILED = Counter("herald_delivery_failed_total", "Entries that exhausted their delivery attempts")
DROPPED = Counter(
    "herald_log_overflow_dropped_total", "Entries dropped because a log reached its bound", ["log"]
)
STATUS_EVICTED = Counter(
    "herald_status_records_evicted_total",
    "Status records the memory store dropped (oldest first) to stay within its bound",
)
CATCHUPS = Counter(
    "herald_broker_catchups_total",
    "Session logs found behind their log's head with no publication seen (lost broker messages)",
)
BROKER_RESETS = Counter(
    "herald_broker_resets_total",
    "Broker subscriptions restored after an interruption: every open log was read again",
)
BROKER_PUBLISH_FAILED = Counter(
    "herald_broker_publish_failed_total",
    "Publications the broker could not send (the catch-up check delivers their entries)",
)
STATUS_LOST = Counter(
    "herald_status_updates_lost_total",
    "Status changes not recorded because the status store was unreachable (deliveries went on)",
)
RATE_LIMITED = Counter(
    "herald_rate_limited_total",
    "Calls refused by a rate limit: what (send, subscribe) and the bucket that was empty "
    "(tenant, key, user; burst: a batch larger than a bucket can ever hold)",
    ["what", "bucket"],
)
RATE_LIMIT_STORE_FAILURES = Counter(
    "herald_rate_limit_store_failures_total",
    "Rate-limit checks that could not reach Redis, by what the call got "
    "(allowed: HERALD_RATE_LIMIT_REDIS_FAILURE=open; refused: closed)",
    ["outcome"],
)
SESSIONS = Gauge("herald_sessions_open", "Open subscription streams on this node")
ACK_STREAMS = Gauge("herald_ack_streams_open", "Open AckStream calls on this node")
SLOW_CONSUMERS = Counter("herald_slow_consumers_total", "Sessions closed for not reading")
# deliveries_total / stream_messages_total is the average coalescing (a histogram observation
# per stream message would cost more than the message's own bookkeeping).
STREAM_MESSAGES = _TALLIES.add(
    "herald_stream_messages", "Stream messages carrying deliveries (coalesced batches)"
)

# A collection stops the event loop: every stream on the node waits for it.
GC_PAUSE = Histogram(
    "herald_gc_pause_seconds",
    "Garbage-collector pauses of the server process, by generation",
    ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
_GC_PAUSES = tuple(GC_PAUSE.labels(str(generation)) for generation in range(3))


class _GcTimer:
    def __init__(self) -> None:
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            _GC_PAUSES[info["generation"]].observe(time.perf_counter() - self._started)
            self._started = 0.0


def observe_gc_pauses() -> None:
    """Times every collection into `herald_gc_pause_seconds` (once per process)."""
    if not any(isinstance(callback, _GcTimer) for callback in gc.callbacks):
        gc.callbacks.append(_GcTimer())

"""Prometheus metrics, defined once and labelled by tenant only where the cardinality is bounded."""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

ACCEPTED = Counter("herald_notifications_accepted_total", "Notifications accepted by ingest")
REJECTED = Counter(
    "herald_notifications_rejected_total", "Notifications refused by ingest", ["reason"]
)
DUPLICATES = Counter(
    "herald_idempotent_duplicates_total", "Sends answered from the idempotency store"
)
DELIVERED = Counter("herald_deliveries_total", "Deliveries written to streams", ["attempt"])
DELIVERED_FIRST = DELIVERED.labels("first")
DELIVERED_RETRY = DELIVERED.labels("retry")
ACKED = Counter("herald_acks_total", "Entries acknowledged")
EXPIRED = Counter("herald_expired_total", "Entries that expired before being acknowledged")
FAILED = Counter("herald_delivery_failed_total", "Entries that exhausted their delivery attempts")
DROPPED = Counter(
    "herald_log_overflow_dropped_total", "Entries dropped because a log reached its bound", ["log"]
)
STATUS_EVICTED = Counter(
    "herald_status_records_evicted_total",
    "Status records the memory store dropped (oldest first) to stay within its bound",
)
SESSIONS = Gauge("herald_sessions_open", "Open subscription streams on this node")
ACK_STREAMS = Gauge("herald_ack_streams_open", "Open AckStream calls on this node")
SLOW_CONSUMERS = Counter("herald_slow_consumers_total", "Sessions closed for not reading")
# deliveries_total / stream_messages_total is the average coalescing (a histogram observation
# per stream message would cost more than the message's own bookkeeping).
STREAM_MESSAGES = Counter(
    "herald_stream_messages_total", "Stream messages carrying deliveries (coalesced batches)"
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

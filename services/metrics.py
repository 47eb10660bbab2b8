"""Prometheus metrics, defined once and labelled by tenant only where the cardinality is bounded."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

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
SLOW_CONSUMERS = Counter("herald_slow_consumers_total", "Sessions closed for not reading")
# deliveries_total / stream_messages_total is the average coalescing (a histogram observation
# per stream message would cost more than the message's own bookkeeping).
STREAM_MESSAGES = Counter(
    "herald_stream_messages_total", "Stream messages carrying deliveries (coalesced batches)"
)

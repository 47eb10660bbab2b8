"""Prometheus metrics, defined once and labelled by tenant only where the cardinality is bounded."""

from __future__ import annotations

import asyncio
import gc
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
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


class TallyHistogram(Collector):
    """A histogram of the hot path: bucket counts in a plain list, like `Tally`.

    A prometheus `Histogram.observe` takes a lock (about 1.5 µs here): once per delivery it
    would be several percent of a delivery's cost. `observe_many` takes a batch's values in one
    call; only the event loop's thread observes, so no lock is needed (a scrape may see a batch
    half counted, never a count it did not add).
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = buckets
        # The `le` labels, as prometheus_client writes them ("0.005", "1.0", "+Inf").
        self._les = [*(repr(float(bound)) for bound in buckets), "+Inf"]
        # counts[i]: values in (bounds[i-1], bounds[i]]; the last one is over every bound.
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1
        self.total += value

    def observe_many(self, values: Iterable[float]) -> None:
        counts, bounds = self.counts, self._bounds
        total = 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1
            total += value
        self.total += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for le, count in zip(self._les, list(self.counts), strict=True):
            cumulative += count
            buckets.append((le, cumulative))
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=buckets, sum_value=self.total
        )


# (family name, label values, value): what a live source reports at scrape time.
LiveSample = tuple[str, tuple[str, ...], float]


class _Live(Collector):
    """Gauges read from the running nodes when Prometheus scrapes, not kept up to date on the
    hot path: queue depths, breaker states. Samples with the same labels from several nodes of
    one process (tests, `herald up`) are added up."""

    def __init__(self, families: dict[str, tuple[str, list[str]]]) -> None:
        self._families = families
        self._sources: dict[int, Callable[[], Iterable[LiveSample]]] = {}

    def watch(self, source: Callable[[], Iterable[LiveSample]]) -> Callable[[], None]:
        """Reads `source` on every scrape until the returned function is called."""
        key = id(source)
        self._sources[key] = source

        def forget() -> None:
            self._sources.pop(key, None)

        return forget

    def collect(self) -> Iterator[GaugeMetricFamily]:
        values: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in self._families}
        for source in list(self._sources.values()):
            for name, labels, value in source():
                by_labels = values[name]
                by_labels[labels] = by_labels.get(labels, 0.0) + value
        for name, (documentation, label_names) in self._families.items():
            family = GaugeMetricFamily(name, documentation, labels=label_names)
            for label_values, value in values[name].items():
                family.add_metric(list(label_values), value)
            yield family


class TenantLabels:
    """The `tenant` label of a tenant: its id if HERALD_METRICS_TENANT_LABELS lists it, else
    "other", so that the number of series stays bounded whatever the number of tenants."""

    OTHER = "other"

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self._allowed = frozenset(allowed)

    def __call__(self, tenant: str) -> str:
        return tenant if tenant in self._allowed else self.OTHER


_TALLIES = _Tallies()
REGISTRY.register(_TALLIES)


class TallyFamily:
    """A labelled counter of the hot path: one `Tally` per label values, made on first use."""

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = labels

    def labelled_tally(self, *values: str) -> Tally:
        return _TALLIES.labelled(self._name, self._documentation, self._labels, values)


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
SECRETS_UNDECRYPTABLE = Counter(
    "herald_secrets_undecryptable_total",
    "Reads of stored tenant secrets (push credentials, webhook secrets) that did not decrypt "
    "with HERALD_SECRETS_KEYS (they stay sealed and unusable)",
)
BROKER_UNHEARD = Counter(
    "herald_broker_unheard_total",
    "Publications the broker did not send, because no other node subscribed to their log",
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
CHAIN_TRANSFORMS = TallyFamily(
    "herald_chain_transforms",
    "Notifications the transformer chain built a variant of (cache misses), by variant",
    ["variant"],
)
CHAIN_CACHE = TallyFamily(
    "herald_chain_cache",
    "Lookups of the transformer chain's variant cache, by result (hit, miss)",
    ["result"],
)
CHAIN_SESSIONS = Counter(
    "herald_chain_sessions_total",
    "Subscribe streams opened with a transformed variant, by variant",
    ["variant"],
)
CLIENT_REJECTED = Counter(
    "herald_client_rejected_deliveries_total",
    "Deliveries the Python client refused (bad or missing signature, undecodable), by reason",
    ["reason"],
)
SOURCE_MESSAGES = Counter(
    "herald_ingest_source_messages_total",
    "Messages of the ingestion sources (JetStream, outbox) by outcome: consumed, redelivered, "
    "accepted, retry (failed, tried again), pushback (Herald refused the load), dead_lettered",
    ["source", "outcome"],
)
WEBHOOK_BATCHES = Counter(
    "herald_webhook_batches_total",
    "Webhook batch attempts by outcome: delivered, retried, parked, dropped (the tenant turned "
    "webhooks off)",
    ["outcome"],
)
WEBHOOK_EVENTS_DROPPED = Counter(
    "herald_webhook_events_dropped_total",
    "Webhook events dropped because too many were waiting on the node",
)
WEBHOOK_EVENTS_UNWANTED = Counter(
    "herald_webhook_events_unwanted_total",
    "Webhook events not sent because their user's preferences turn the notification's "
    "category off for webhooks",
)
SESSIONS = Gauge("herald_sessions_open", "Open subscription streams on this node")
ACK_STREAMS = Gauge("herald_ack_streams_open", "Open AckStream calls on this node")
SLOW_CONSUMERS = Counter("herald_slow_consumers_total", "Sessions closed for not reading")
# deliveries_total / stream_messages_total is the average coalescing (a histogram observation
# per stream message would cost more than the message's own bookkeeping).
STREAM_MESSAGES = _TALLIES.add(
    "herald_stream_messages", "Stream messages carrying deliveries (coalesced batches)"
)

STREAMS = Gauge(
    "herald_streams_open",
    "Open streams on this node by kind (subscribe, ack) and tenant (HERALD_METRICS_TENANT_LABELS; "
    "other tenants as other)",
    ["stream", "tenant"],
)
REDELIVERIES = _TALLIES.add(
    "herald_redeliveries", "Entries queued again for delivery after their ack timeout ran out"
)
# End to end: from the notification's acceptance (created_at) to its write on a stream.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DELIVERY_LATENCY = TallyHistogram(
    "herald_delivery_latency_seconds",
    "From a notification's acceptance to its first write on a subscriber's stream (replays "
    "after a reconnect included, redeliveries not)",
    (*_LATENCY_BUCKETS, 10.0, 30.0, 60.0, 300.0),
)
REGISTRY.register(DELIVERY_LATENCY)
INGEST_LATENCY = Histogram(
    "herald_ingest_latency_seconds",
    "Send and SendBatch calls in the ingest core: validation to durable append (without the "
    "network, authentication and decoding)",
    buckets=_LATENCY_BUCKETS,
)
RPCS = Counter(
    "herald_rpc_handled_total",
    "Calls that ended, by service, method and status code",
    ["service", "method", "code"],
)
RPC_DURATION = Histogram(
    "herald_rpc_duration_seconds",
    "Unary calls' durations on the server, by service, method and status code",
    ["service", "method", "code"],
    buckets=_LATENCY_BUCKETS,
)
BREAKER_TRANSITIONS = Counter(
    "herald_breaker_transitions_total",
    "Circuit-breaker changes of a backend, by the state it entered",
    ["backend", "state"],
)
NODE = Gauge("herald_node_info", "1 for each node this process runs", ["node_id", "roles"])
LIVE = _Live(
    {
        "herald_queue_depth": (
            "Entries waiting on this node: session_buffer (to be written to streams), unacked "
            "(written, waiting for an ack), group_commit (notifications waiting for their "
            "append), status_buffer (status changes waiting to be written)",
            ["queue"],
        ),
        "herald_buffered_bytes": (
            "Bytes this node's sessions hold (used): notifications waiting to be written, with "
            "a fixed overhead per entry, and each batch whose write is in flight, counted twice "
            "(its encoding and the transport's copy); against HERALD_DELIVERY_NODE_BUFFER_BYTES "
            "(limit)",
            ["kind"],
        ),
        "herald_breaker_state": (
            "1 for the state each backend's circuit breaker is in (closed, open, half_open)",
            ["backend", "state"],
        ),
    }
)
REGISTRY.register(LIVE)

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


# A callback the event loop runs late delays every stream of the node and every call it
# serves: what a busy node's senders wait for besides their own work (docs/performance.md,
# fifteenth session: a SendBatch's round trip was mostly this).
LOOP_LAG = Histogram(
    "herald_event_loop_lag_seconds",
    "How late the server's event loop woke a timer, sampled four times a second",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
# Sampling period of LOOP_LAG: four wake-ups a second cost nothing measurable.
LOOP_LAG_INTERVAL_S: Final = 0.25


async def watch_loop_lag(interval_s: float = LOOP_LAG_INTERVAL_S) -> None:
    """Observes into `herald_event_loop_lag_seconds`, every `interval_s`, how much later than
    due the loop woke a sleeper; runs until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        LOOP_LAG.observe(max(0.0, loop.time() - due))


def observe_gc_pauses() -> None:
    """Times every collection into `herald_gc_pause_seconds` (once per process)."""
    if not any(isinstance(callback, _GcTimer) for callback in gc.callbacks):
        gc.callbacks.append(_GcTimer())

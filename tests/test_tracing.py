"""OpenTelemetry: a notification followed from its Send to each delivery and to the ack, through
real gRPC, with the spans caught by an in-memory exporter (docs/tracing.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind

from herald.v1 import stream_pb2
from services.clock import ManualClock
from services.config import DeliverySettings, TracingSettings
from services.domain import user_log
from services.tracing import (
    ACK,
    DELIVER,
    UNARY_METHODS,
    Tracing,
    from_settings,
    parse_traceparent,
    shutdown,
    traceparent,
)
from tests.harness import Herald, make_config, start_herald, to_user
from tests.streams import Stream

pytestmark = pytest.mark.asyncio

SEND = "/herald.v1.IngestService/Send"
DISPATCH = "/herald.node.v1.NodeService/Dispatch"
ACK_RPC = "/herald.v1.StreamService/Ack"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    yield spans
    spans.shutdown()


def _provider(exporter: InMemorySpanExporter, **options: object) -> TracerProvider:
    provider = TracerProvider(**options)  # type: ignore[arg-type]
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest_asyncio.fixture(params=["up", "split"])
async def traced(
    request: pytest.FixtureRequest, tmp_path: Path, exporter: InMemorySpanExporter
) -> AsyncIterator[Herald]:
    deployment = await start_herald(
        request.param, make_config(tmp_path), traces=Tracing(_provider(exporter))
    )
    try:
        yield deployment
    finally:
        await deployment.stop()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


async def ended(
    exporter: InMemorySpanExporter, name: str, within: float = 5.0
) -> list[ReadableSpan]:
    """The spans named so, once there is one: a server span ends when its handler returns,
    which may be just after the client has the answer."""
    async with asyncio.timeout(within):
        for _ in range(int(within / 0.01) + 1):
            spans = named(exporter, name)
            if spans:
                return spans
            await asyncio.sleep(0.01)
    return named(exporter, name)


def context_of(span: ReadableSpan) -> trace.SpanContext:
    context = span.context
    assert context is not None
    return context


async def test_a_send_is_followed_to_its_delivery_and_its_ack(
    traced: Herald, exporter: InMemorySpanExporter
) -> None:
    alice = traced.user("alice")
    stream = Stream(alice)
    await stream.start()
    sent = await traced.backend().send(to_user("alice"))
    [delivery] = await stream.deliveries(1)
    assert delivery.notification.id == sent.notification_id

    [send] = named(exporter, SEND)
    assert send.kind is SpanKind.SERVER
    assert send.attributes is not None
    assert send.attributes["rpc.method"] == "Send"
    assert send.status.is_ok
    # The span the stored traceparent names: the Send's itself in `herald up`; in the split
    # topology the stream node's Dispatch span, which continues the Send's trace.
    if traced.topology == "up":
        stored_by = send
    else:
        # The ingest node's CLIENT span carries the trace to the stream node's SERVER span.
        spans = named(exporter, DISPATCH)
        [caller] = [s for s in spans if s.kind is SpanKind.CLIENT]
        [stored_by] = [s for s in spans if s.kind is SpanKind.SERVER]
        assert caller.parent is not None
        assert caller.parent.span_id == context_of(send).span_id
        assert stored_by.parent is not None
        assert stored_by.parent.span_id == context_of(caller).span_id
        assert context_of(stored_by).trace_id == context_of(send).trace_id
    [deliver] = named(exporter, DELIVER)
    assert deliver.kind is SpanKind.CONSUMER
    [link] = deliver.links
    assert link.context.trace_id == context_of(send).trace_id
    assert link.context.span_id == context_of(stored_by).span_id
    assert deliver.parent is not None
    assert deliver.parent.span_id == context_of(stored_by).span_id
    assert deliver.attributes is not None
    assert deliver.attributes["herald.notification_id"] == sent.notification_id
    assert deliver.attributes["herald.attempt"] == 1
    assert deliver.attributes["herald.log"] == "user"

    # The unary Ack (HeraldClient.ack prefers the AckStream, which is not instrumented).
    acked = await alice._stream.Ack(
        stream_pb2.AckRequest(notification_ids=[sent.notification_id]), metadata=alice.metadata()
    )
    assert acked.acked == 1
    [ack_rpc] = named(exporter, ACK_RPC)
    assert ack_rpc.kind is SpanKind.SERVER
    [ack] = named(exporter, ACK)
    assert ack.parent is not None
    assert ack.parent.span_id == context_of(ack_rpc).span_id
    assert [link.context.span_id for link in ack.links] == [context_of(deliver).span_id]
    assert ack.attributes is not None
    assert ack.attributes["herald.acked"] == 1
    # Streams are not instrumented (Subscribe writes with context.write), nor health checks.
    names = {s.name for s in exporter.get_finished_spans()}
    assert not {n for n in names if n.endswith(("/Subscribe", "/AckStream", "/Check"))}
    stream.cancel()


async def test_an_ack_by_cursor_links_to_every_delivery_it_covers(
    traced: Herald, exporter: InMemorySpanExporter
) -> None:
    alice = traced.user("alice")
    stream = Stream(alice)
    started = await stream.start()
    backend = traced.backend()
    for title in ("one", "two"):
        await backend.send(to_user("alice", title))
    deliveries = await stream.deliveries(2)
    epochs = {p.log: p.epoch for p in started.logs}
    assert await alice.ack(up_to={"user": deliveries[-1].cursor}, epochs=epochs) == 2
    delivered = {context_of(s).span_id for s in named(exporter, DELIVER)}
    assert len(delivered) == 2
    [ack] = named(exporter, ACK)
    assert {link.context.span_id for link in ack.links} == delivered
    assert ack.parent is None  # acked over the AckStream: no RPC span to be a child of
    stream.cancel()


async def test_each_redelivery_is_a_delivery_span_of_the_same_send(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    clock = ManualClock()
    herald = await start_herald(
        "up",
        make_config(tmp_path, delivery=DeliverySettings(ack_timeout_s=10)),
        clock=clock,
        traces=Tracing(_provider(exporter)),
    )
    try:
        alice = herald.user("alice")
        stream = Stream(alice)
        await stream.start()
        sent = await herald.backend().send(to_user("alice"))
        [first] = await stream.deliveries(1)
        await clock.advance(12.5)  # past the ack timeout (10 s +-20 %)
        [second] = await stream.deliveries(1)
        assert (first.attempt, second.attempt) == (1, 2)
        [send] = named(exporter, SEND)
        delivers = named(exporter, DELIVER)
        assert [s.attributes and s.attributes["herald.attempt"] for s in delivers] == [1, 2]
        for deliver in delivers:
            assert context_of(deliver).trace_id == context_of(send).trace_id
            assert [link.context.span_id for link in deliver.links] == [context_of(send).span_id]
        assert await alice.ack([sent.notification_id]) == 1
        [ack] = named(exporter, ACK)
        # The ack settles the latest write: it links to the redelivery's span.
        assert [link.context.span_id for link in ack.links] == [context_of(delivers[1]).span_id]
        stream.cancel()
    finally:
        await herald.stop()


async def test_a_send_that_is_not_sampled_stores_no_trace_and_delivers_untraced(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    herald = await start_herald(
        "up",
        make_config(tmp_path),
        traces=Tracing(_provider(exporter, sampler=ALWAYS_OFF)),
    )
    try:
        stream = Stream(herald.user("alice"))
        await stream.start()
        sent = await herald.backend().send(to_user("alice"))
        [delivery] = await stream.deliveries(1)
        assert delivery.notification.id == sent.notification_id
        stores = herald.node("up").stores
        assert stores is not None
        [entry] = await stores.logs.read("acme", user_log("alice"), 0, 10)
        assert entry.trace_context == ""
        assert exporter.get_finished_spans() == ()
        stream.cancel()
    finally:
        await herald.stop()


# Spans made through the global provider would land here: with tracing off there must be none.
_GLOBAL = InMemorySpanExporter()


@pytest.fixture
def global_exporter() -> Iterator[InMemorySpanExporter]:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(_provider(_GLOBAL))
    _GLOBAL.clear()
    yield _GLOBAL
    _GLOBAL.clear()


async def test_with_tracing_off_nothing_is_traced_or_stored(
    tmp_path: Path, global_exporter: InMemorySpanExporter
) -> None:
    config = make_config(tmp_path)
    assert not config.tracing.enabled  # the default
    herald = await start_herald("up", config)
    try:
        alice = herald.user("alice")
        stream = Stream(alice)
        await stream.start()
        sent = await herald.backend().send(to_user("alice"))
        [delivery] = await stream.deliveries(1)
        assert await alice.ack([sent.notification_id]) == 1
        assert delivery.notification.id == sent.notification_id
        stores = herald.node("up").stores
        assert stores is not None
        [entry] = await stores.logs.read("acme", user_log("alice"), 0, 10)
        assert entry.trace_context == ""
        assert global_exporter.get_finished_spans() == ()
        stream.cancel()
    finally:
        await herald.stop()


async def test_a_refused_call_is_a_span_with_its_status(
    traced: Herald, exporter: InMemorySpanExporter
) -> None:
    """The instrumentor comes before the AuthInterceptor: a call it refuses is traced too."""
    client = traced.client("ingest", "not-a-token")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.send(to_user("alice"))
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    [send] = await ended(exporter, SEND)
    assert send.attributes is not None
    # The code is the span's attribute; by the semantic conventions a server span's status is
    # an error only for codes that are the server's fault (INTERNAL, UNAVAILABLE, ...).
    assert send.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    # Refused before any handler ran: no delivery, nothing dispatched.
    assert named(exporter, DELIVER) == []
    assert named(exporter, DISPATCH) == []


async def test_traceparents_round_trip_and_bad_ones_are_ignored() -> None:
    value = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    context = parse_traceparent(value)
    assert context is not None
    assert context.is_remote
    assert context.trace_flags.sampled
    assert traceparent(context) == value
    for bad in ("", "00-xyz", value[:-1], value.replace("-", "_"), "00-" + "0" * 32 + value[35:]):
        assert parse_traceparent(bad) is None


async def test_only_unary_methods_are_instrumented() -> None:
    assert {SEND, DISPATCH, ACK_RPC} <= UNARY_METHODS
    assert "/herald.v1.StreamService/Subscribe" not in UNARY_METHODS
    assert "/herald.v1.StreamService/AckStream" not in UNARY_METHODS


async def test_settings_make_an_otlp_provider_only_when_enabled() -> None:
    assert from_settings(TracingSettings()) is None
    tracing = from_settings(
        TracingSettings(
            enabled=True, endpoint="http://127.0.0.1:1", service_name="herald-x", sample_ratio=0.25
        )
    )
    assert tracing is not None
    provider = tracing.provider
    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.name"] == "herald-x"
    assert "0.25" in provider.sampler.get_description()
    await shutdown(tracing)

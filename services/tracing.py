"""OpenTelemetry traces: a server span per unary RPC, and a notification followed from its Send to
each delivery and to its ack (docs/tracing.md).

When tracing is off there is no `Tracing` object at all: the cores hold None, test it once per
batch, and create, parse and store nothing; only the OpenTelemetry API is imported (the
instrumentation, the SDK and the exporter are imported when a node turns tracing on).

When it is on:

- unary RPCs get a SERVER span from opentelemetry-instrumentation-grpc, placed before the
  AuthInterceptor (its span covers authentication, decoding and the handler). Streaming RPCs are
  left out: the instrumentor iterates a streaming handler's result, and Subscribe writes with
  `context.write` instead of yielding;
- the Send's span context is stored with the notification as a W3C `traceparent` string, only
  when that span is sampled (an unsampled Send stores the empty string, as tracing off does);
- each write of an entry to a session is a CONSUMER span `herald.deliver`, a child of the Send
  span and linked to it, so it sits in the Send's trace and names it explicitly;
- an ack is an INTERNAL span `herald.ack` (a child of the Ack RPC's span, if any), linked to the
  delivery spans of the entries it acks that this node wrote.

The provider is an argument (defaulting to the global one), so tests pass one with an in-memory
exporter and nothing global is changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

from grpc import aio
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, TraceFlags

from herald.node.v1 import node_pb2
from herald.v1 import ingest_pb2, registry_pb2, stream_pb2
from services.config import TracingSettings

DELIVER: Final = "herald.deliver"
ACK: Final = "herald.ack"
_VERSION: Final = "00"
_TRACEPARENT_LENGTH: Final = 55  # 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>


def _unary_methods() -> frozenset[str]:
    """The full names of herald's unary-unary methods, from the generated descriptors."""
    names: set[str] = set()
    for module in (ingest_pb2, stream_pb2, registry_pb2, node_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if not method.client_streaming and not method.server_streaming:
                    names.add(f"/{service.full_name}/{method.name}")
    return frozenset(names)


UNARY_METHODS: Final = _unary_methods()


def _is_unary(details: Any) -> bool:
    method = getattr(details, "method", None)
    if isinstance(method, bytes):  # grpc.aio client call details carry bytes (grpc#31092)
        method = method.decode()
    return method in UNARY_METHODS


def traceparent(context: SpanContext) -> str:
    """The W3C traceparent of a span context."""
    return f"{_VERSION}-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def parse_traceparent(value: str) -> SpanContext | None:
    """The (remote) span context a traceparent names; None for "" or anything malformed."""
    if len(value) != _TRACEPARENT_LENGTH or value[2] != "-" or value[35] != "-":
        return None
    try:
        trace_id = int(value[3:35], 16)
        span_id = int(value[36:52], 16)
        flags = int(value[53:55], 16)
    except ValueError:
        return None
    context = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))
    return context if context.is_valid else None


class Tracing:
    """The tracer herald's own spans come from, and the gRPC interceptors, on one provider."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self.provider = provider or trace.get_tracer_provider()
        self._tracer = self.provider.get_tracer("herald")

    def server_interceptor(self) -> aio.ServerInterceptor:  # type: ignore[type-arg]
        """SERVER spans for herald's unary RPCs (streams, health and reflection left out)."""
        # Imported on use, as in from_settings: a node with tracing off never loads it.
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        # The instrumentation is untyped; it returns a grpc.aio.ServerInterceptor.
        interceptor: aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[type-arg,no-untyped-call]
            tracer_provider=self.provider, filter_=_is_unary
        )
        return interceptor

    def client_interceptors(self) -> list[aio.ClientInterceptor]:
        """CLIENT spans for node-to-node unary calls, which carry the trace to the callee."""
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        interceptors: list[aio.ClientInterceptor] = aio_client_interceptors(  # type: ignore[no-untyped-call]
            tracer_provider=self.provider, filter_=_is_unary
        )
        return interceptors

    def current_traceparent(self) -> str:
        """The traceparent of the current span if it is sampled, else ""."""
        context = trace.get_current_span().get_span_context()
        if not context.is_valid or not context.trace_flags.sampled:
            return ""
        return traceparent(context)

    def start_deliveries(self, items: Sequence[tuple[str, dict[str, Any]]]) -> list[Span | None]:
        """Starts one `herald.deliver` span per (traceparent, attributes), in order; None where
        the traceparent is malformed. The caller ends them once the write has completed."""
        spans: list[Span | None] = []
        for parent, attributes in items:
            sent = parse_traceparent(parent)
            if sent is None:
                spans.append(None)
                continue
            spans.append(
                self._tracer.start_span(
                    DELIVER,
                    context=trace.set_span_in_context(trace.NonRecordingSpan(sent), Context()),
                    kind=SpanKind.CONSUMER,
                    links=[Link(sent)],
                    attributes=attributes,
                )
            )
        return spans

    @contextmanager
    def ack_span(self, attributes: dict[str, Any]) -> Iterator[Span]:
        """A current `herald.ack` span around an ack; link it to the deliveries it acks."""
        with self._tracer.start_as_current_span(
            ACK, kind=SpanKind.INTERNAL, attributes=attributes
        ) as span:
            yield span


def end_spans(spans: Sequence[Span | None], error: BaseException | None = None) -> None:
    for span in spans:
        if span is None:
            continue
        if error is not None:
            span.record_exception(error)
            span.set_status(trace.StatusCode.ERROR, type(error).__name__)
        span.end()


def from_settings(settings: TracingSettings) -> Tracing | None:
    """A provider exporting over OTLP/gRPC as configured; None when tracing is off."""
    if not settings.enabled:
        return None
    # Imported here: a node with tracing off never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter,
    )
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    exporter = OTLPSpanExporter(endpoint=settings.endpoint) if settings.endpoint else None
    provider.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter()))
    return Tracing(provider)


async def shutdown(tracing: Tracing | None) -> None:
    """Flushes and stops the provider (its export thread) if it has a `shutdown`: in a thread,
    as the exporter's last export blocks for up to its timeout."""
    close = getattr(tracing.provider, "shutdown", None) if tracing is not None else None
    if close is not None:
        await asyncio.to_thread(close)

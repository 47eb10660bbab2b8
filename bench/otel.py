"""What tracing costs: `Send` with HERALD_OTEL_ENABLED off and on, alternated in one sitting.

    .venv/bin/python bench/otel.py [--callers 16] [--seconds 8] [--repeat 3] [--ratios 1.0]
                                   [--deliveries 20000]

Each round starts `herald up` (bench/send.py's run: `--callers` concurrent unary `Send` calls
to 1,000 offline users, the server's CPU from /proc) once with tracing off and once per
`--ratios` sample ratio with tracing on, exporting over OTLP/gRPC to a sink this process serves
(it accepts every export and counts the spans), so the server pays the whole export path:
span creation, the batch processor's thread, protobuf encoding and the gRPC call. It prints the
server's CPU per call and the latency of each run, and the medians with the difference.

`--deliveries N` also times, in this process, what a traced delivery adds to a write: N
`herald.deliver` spans started and ended as the session writer does (parse the stored
traceparent, one span with a link), on a provider with a batch processor and an exporter that
drops the spans.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import send  # bench/ is the script's folder, so its modules import as send.py's do
from delivery import HERALD, free_port, start_server, stop_server
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from services import auth
from services.config import AuthSettings
from services.tracing import Tracing, traceparent


class _Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        count = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        with self._lock:
            self.spans += count
        return trace_service_pb2.ExportTraceServiceResponse()


def start_sink() -> tuple[grpc.Server, _Sink, int]:
    """An OTLP/gRPC trace collector that accepts everything, in threads of this process."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    sink = _Sink()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, sink, port


def run_send(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="herald-otel-") as tmp:
        workdir = Path(tmp)
        data_dir = workdir / "herald"
        data_dir.mkdir(parents=True)
        settings = AuthSettings()
        keys = auth.load_keys(settings, data_dir)
        token = auth.TokenMinter(keys, settings).mint("bench", "bench", [auth.SCOPE_SEND])
        port = free_port()
        server = start_server(
            HERALD, port, data_dir, workdir / "herald.log", acks=True, extra_env=env
        )
        try:
            return asyncio.run(send.measure(f"127.0.0.1:{port}", token, server.pid, args, None))
        finally:
            stop_server(server)


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def time_deliveries(count: int) -> float:
    """µs per `herald.deliver` span, started and ended as the writer does."""
    provider = TracerProvider()
    # A queue that holds every span: the SDK drops what overflows, which would cost less.
    provider.add_span_processor(BatchSpanProcessor(_Drop(), max_queue_size=count + 64))
    tracing = Tracing(provider)
    parent = tracing.provider.get_tracer("bench").start_span("send")
    stored = traceparent(parent.get_span_context())
    items = [
        (stored, {"herald.notification_id": f"n{i}", "herald.cursor": i, "herald.attempt": 1})
        for i in range(64)
    ]
    started = time.process_time()
    done = 0
    while done < count:
        for span in tracing.start_deliveries(items):
            assert span is not None
            span.get_span_context()
            span.end()
        done += len(items)
    elapsed = time.process_time() - started
    provider.shutdown()
    return 1e6 * elapsed / done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--payload", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="rounds (0: only --deliveries)")
    parser.add_argument("--ratios", default="1.0", help="sample ratios to run with tracing on")
    parser.add_argument("--deliveries", type=int, default=20_000)
    args = parser.parse_args()
    args.batch = 0
    ratios = [float(r) for r in args.ratios.split(",") if r.strip()]
    sink_server, sink, sink_port = start_sink()
    variants: list[tuple[str, dict[str, str]]] = [("off", {})]
    variants.extend(
        (
            f"on, ratio {ratio:g}",
            {
                "HERALD_OTEL_ENABLED": "true",
                "HERALD_OTEL_ENDPOINT": f"http://127.0.0.1:{sink_port}",
                "HERALD_OTEL_SAMPLE_RATIO": str(ratio),
            },
        )
        for ratio in ratios
    )
    print(f"Send, {args.callers} concurrent callers, {args.seconds:g} s per run", flush=True)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    for round_ in range(1, args.repeat + 1):
        for name, env in variants:
            before = sink.spans
            result = run_send(args, env)
            result["spans"] = sink.spans - before
            rows[name].append(result)
            print(
                f"round {round_} {name}: {result['calls_per_s']:,.0f} calls/s, "
                f"{result['server_us_per_call']:.1f} µs server CPU per call, "
                f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                f"{result['spans']:,} spans exported",
                flush=True,
            )
    off = statistics.median(r["server_us_per_call"] for r in rows["off"]) if args.repeat else 0
    for name, results in rows.items() if args.repeat else ():
        us = statistics.median(r["server_us_per_call"] for r in results)
        p50 = statistics.median(r["p50_ms"] for r in results)
        calls = statistics.median(r["calls_per_s"] for r in results)
        print(
            f"median {name}: {calls:,.0f} calls/s, {us:.1f} µs per call ({us - off:+.1f} µs), "
            f"p50 {p50:.2f} ms"
        )
    sink_server.stop(0)
    if args.deliveries:
        print(f"herald.deliver span: {time_deliveries(args.deliveries):.1f} µs of CPU each")


if __name__ == "__main__":
    main()

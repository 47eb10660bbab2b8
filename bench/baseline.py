"""A raw grpc.aio fan-out server: the floor that Herald's delivery is measured against.

No Herald logic: no auth, no logs, no cursors kept, no acks. One asyncio.Queue per subscriber, and
the stream handler writes each queued message as it arrives (one `write` per message), which is the
"one queue per subscriber" set-up of DESIGN.md. `Publish` takes a `herald.v1.SendBatchRequest`
(what the load generator sends to Herald's `SendBatch`) and puts each notification, wrapped as a
one-delivery `herald.v1.SubscribeResponse`, on its user's queue, so subscribers read the baseline
with the same generated classes they use for Herald.

    python bench/baseline.py --port 50600
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

import grpc
from grpc import aio

from herald.v1 import ingest_pb2, stream_pb2

SERVICE = "bench.baseline.v1.FanOut"
SUBSCRIBE = f"/{SERVICE}/Subscribe"
PUBLISH = f"/{SERVICE}/Publish"
# Subscribers name themselves with this metadata key (Herald reads the user from the JWT).
USER_KEY = "x-bench-user"

_STARTED = stream_pb2.SubscribeResponse(
    session_started=stream_pb2.SessionStarted(session_id="baseline")
).SerializeToString()


class FanOut:
    """Per-subscriber queues, filled by Publish and drained by Subscribe."""

    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[bytes]] = {}
        self._cursor = 0

    async def subscribe(self, request: bytes, context: aio.ServicerContext[Any, Any]) -> None:
        user = ""
        for key, value in context.invocation_metadata() or ():
            if key == USER_KEY:
                user = value if isinstance(value, str) else value.decode()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._queues[user] = queue
        try:
            await context.write(_STARTED)
            while True:
                await context.write(await queue.get())
        finally:
            if self._queues.get(user) is queue:
                del self._queues[user]

    async def publish(self, request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        batch = ingest_pb2.SendBatchRequest.FromString(request)
        for notification in batch.notifications:
            queue = self._queues.get(notification.target.user_id)
            if queue is None:
                continue
            self._cursor += 1
            queue.put_nowait(
                stream_pb2.SubscribeResponse(
                    deliveries=stream_pb2.DeliveryBatch(
                        deliveries=[
                            stream_pb2.Delivery(
                                notification=notification, log="user", cursor=self._cursor
                            )
                        ]
                    )
                ).SerializeToString()
            )
        return b""


async def serve(host: str, port: int) -> None:
    fan_out = FanOut()
    server = aio.server(options=[("grpc.max_receive_message_length", 4 * 1024 * 1024)])
    handlers = {
        # No serializers: both methods take and return bytes, like Herald's Subscribe does.
        "Subscribe": grpc.unary_stream_rpc_method_handler(fan_out.subscribe),
        "Publish": grpc.unary_unary_rpc_method_handler(fan_out.publish),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"baseline serving on {host}:{port}", flush=True)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop  # the same event loop `herald up` runs on

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is not available on Windows
        loop_factory = None
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=loop_factory) as run:
        run.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()

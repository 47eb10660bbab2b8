"""A webhook receiver for tests: a real HTTP server (uvicorn, on a free loopback port) that
checks every request as docs/webhooks.md tells receivers to, with `services.webhooks.verify`,
on the test's clock. A request that does not verify gets 401; one that does is recorded, then
answered `answer` (200, or what the test makes it fail with)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from services.clock import Clock
from services.webhooks import WebhookVerificationError, verify

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class Received:
    batch_id: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Receiver:
    secret: str
    clock: Clock
    url: str = ""
    # The status verified requests get.
    answer: int = 200
    # Every verified request (retries and replays too), in order.
    requests: list[Received] = field(default_factory=list)
    # Why requests were refused (401).
    rejected: list[str] = field(default_factory=list)

    @property
    def delivered(self) -> list[Received]:
        """The verified requests answered 2xx, each batch once."""
        seen: dict[str, Received] = {}
        for request in self.requests:
            if request.headers.get("x-answered") == "2xx":
                seen.setdefault(request.batch_id, request)
        return list(seen.values())

    @property
    def events(self) -> list[dict[str, Any]]:
        return [event for r in self.delivered for event in r.body["events"]]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            batch_id = verify(self.secret, body, headers, now=self.clock.now())
        except WebhookVerificationError as exc:
            self.rejected.append(str(exc))
            status = 401
        else:
            status = self.answer
            headers["x-answered"] = "2xx" if 200 <= status < 300 else str(status)
            self.requests.append(Received(batch_id, headers, json.loads(body)))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@asynccontextmanager
async def webhook_receiver(secret: str, clock: Clock) -> AsyncIterator[Receiver]:
    receiver = Receiver(secret, clock)
    config = uvicorn.Config(
        receiver, host="127.0.0.1", port=0, lifespan="off", log_level="warning", access_log=False
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    # startup/shutdown rather than serve(): serve() takes over the process's signal handlers.
    await server.startup()
    port = server.servers[0].sockets[0].getsockname()[1]
    receiver.url = f"http://127.0.0.1:{port}/hooks/herald"
    try:
        yield receiver
    finally:
        server.should_exit = True
        await server.shutdown()

"""Local stand-ins for FCM, APNs and Web Push endpoints: real HTTP servers on loopback that
record each request and answer from a script (the provider's documented answers).

FCM and Web Push speak HTTP/1.1 (asyncio streams, one request per connection is enough for
httpx); APNs speaks HTTP/2 only (h2, prior knowledge over cleartext: Apple's servers negotiate h2
by ALPN over TLS, which the provider's production client does, and a client that fell back to
HTTP/1.1 would fail here just as it fails there).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    http_version: str


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, document: object, **headers: str) -> Answer:
        return cls(
            status, json.dumps(document).encode(), {"content-type": "application/json", **headers}
        )


@dataclass
class ScriptedServer:
    """Records requests; answers each path prefix from its queue, else `default`."""

    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    scripts: dict[str, list[Answer]] = field(default_factory=dict)
    defaults: dict[str, Answer] = field(default_factory=dict)

    def answer(self, path: str) -> Answer:
        for prefix, queue in self.scripts.items():
            if path.startswith(prefix) and queue:
                return queue.pop(0)
        for prefix, answer in self.defaults.items():
            if path.startswith(prefix):
                return answer
        return Answer(200)

    def to(self, prefix: str) -> list[Recorded]:
        return [r for r in self.requests if r.path.startswith(prefix)]


@asynccontextmanager
async def http1_server() -> AsyncIterator[ScriptedServer]:
    state = ScriptedServer()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            state.requests.append(Recorded(method, path, headers, body, version))
            answer = state.answer(path)
            extra = "".join(f"{k}: {v}\r\n" for k, v in answer.headers.items())
            writer.write(
                f"HTTP/1.1 {answer.status} X\r\ncontent-length: {len(answer.body)}\r\n"
                f"connection: close\r\n{extra}\r\n".encode()
                + answer.body
            )
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def http2_server() -> AsyncIterator[ScriptedServer]:
    state = ScriptedServer()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        streams[event.stream_id] = (
                            {
                                k.decode() if isinstance(k, bytes) else k: v.decode()
                                if isinstance(v, bytes)
                                else v
                                for k, v in event.headers
                            },
                            bytearray(),
                        )
                    elif isinstance(event, h2.events.DataReceived):
                        streams[event.stream_id][1].extend(event.data)
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded):
                        headers, body = streams.pop(event.stream_id)
                        path = headers.pop(":path")
                        method = headers.pop(":method")
                        state.requests.append(
                            Recorded(method, path, headers, bytes(body), "HTTP/2")
                        )
                        answer = state.answer(path)
                        conn.send_headers(
                            event.stream_id,
                            [(":status", str(answer.status)), *answer.headers.items()],
                            end_stream=not answer.body,
                        )
                        if answer.body:
                            conn.send_data(event.stream_id, answer.body, end_stream=True)
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()

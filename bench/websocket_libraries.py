"""Which WebSocket server library for Herald: frames/s and server CPU per frame, measured.

    .venv/bin/python bench/websocket_libraries.py [--connections 1000] [--seconds 5]

For each candidate it starts a server process (uvloop) on a free loopback port, opens
`--connections` WebSocket connections from a client process (the websockets client, uvloop), and
then every connection's server task writes binary frames of `--payload` bytes (a pre-encoded
SubscribeResponse, as Herald's session writer hands them out) as fast as the connection takes
them, for `--seconds`. It reports frames received per second and the server's CPU per frame
(utime + stime from /proc over the window). Candidates:

- `websockets`: websockets' asyncio server (`ServerConnection.send`), compression off, the
  library Herald uses (services/stream/websocket.py);
- `wsproto`: a raw asyncio protocol framing with wsproto (sans-I/O, pure Python), one
  `transport.write` per frame and the transport's own flow control;
- `floor`: the same raw protocol writing a frame built once: asyncio's (uvloop's) own cost of a
  write and a task switch, what no library goes below;
- `picows`: picows (Cython framing and its own transport glue, `WSTransport.send` per frame,
  pausing on the transport's high watermark), the fastest maintained asyncio WebSocket server on
  PyPI; not a Herald dependency: `.venv/bin/pip install picows` to measure it (skipped without);
- `aiohttp` is not measured here: it would be a third HTTP stack in the project (grpc's and
  websockets' are already there), for a server whose frame writer is the same kind of Python.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("websockets", "wsproto", "floor", "picows")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the servers ---------------------------------------------------------------------------------


async def serve_websockets(port: int, payload: bytes, go: asyncio.Event) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    async def handler(connection: ServerConnection) -> None:
        await go.wait()
        with contextlib.suppress(ConnectionClosed):
            while True:
                await connection.send(payload)

    async with serve(handler, "127.0.0.1", port, compression=None, max_size=2**16):
        await asyncio.Future()


async def serve_wsproto(
    port: int, payload: bytes, go: asyncio.Event, *, preframed: bool = False
) -> None:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request

    class Protocol(asyncio.Protocol):
        def __init__(self) -> None:
            self.ws = WSConnection(ConnectionType.SERVER)
            self.transport: Any = None
            self.resumed = asyncio.Event()
            self.resumed.set()
            self.task: asyncio.Task[None] | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # uvloop's TCPTransport

        def data_received(self, data: bytes) -> None:
            assert self.transport is not None
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, Request):
                    self.transport.write(self.ws.send(AcceptConnection()))
                    self.task = asyncio.ensure_future(self.push())
                elif isinstance(event, CloseConnection):
                    self.transport.close()

        def pause_writing(self) -> None:
            self.resumed.clear()

        def resume_writing(self) -> None:
            self.resumed.set()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.task is not None:
                self.task.cancel()

        async def push(self) -> None:
            await go.wait()
            transport = self.transport
            assert transport is not None
            send = self.ws.send
            # The floor: the frame's bytes built once (a server frame is not masked), only
            # `transport.write` per frame.
            frame = send(BytesMessage(payload)) if preframed else b""
            while not transport.is_closing():
                transport.write(frame or send(BytesMessage(payload)))
                if not self.resumed.is_set():
                    await self.resumed.wait()

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Protocol, "127.0.0.1", port)
    async with server:
        await asyncio.Future()


async def serve_picows(port: int, payload: bytes, go: asyncio.Event) -> None:
    from picows import WSListener, WSMsgType, WSTransport, ws_create_server

    class Listener(WSListener):  # type: ignore[misc]
        def __init__(self) -> None:
            self.resumed = asyncio.Event()
            self.resumed.set()
            self.task: asyncio.Task[None] | None = None

        def on_ws_connected(self, transport: WSTransport) -> None:
            self.task = asyncio.ensure_future(self.push(transport))

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            if self.task is not None:
                self.task.cancel()

        def pause_writing(self) -> None:
            self.resumed.clear()

        def resume_writing(self) -> None:
            self.resumed.set()

        async def push(self, transport: WSTransport) -> None:
            await go.wait()
            send, binary = transport.send, WSMsgType.BINARY
            while True:
                send(binary, payload)
                if not self.resumed.is_set():
                    await self.resumed.wait()
                elif transport.underlying_transport.is_closing():
                    return

    server = await ws_create_server(lambda _request: Listener(), "127.0.0.1", port)
    async with server:
        await asyncio.Future()


def server_main(candidate: str, port: int, payload_size: int) -> None:
    """Serves until killed; starts pushing when SIGUSR1 arrives."""
    import signal

    import uvloop

    payload = b"\x0a" + bytes([payload_size - 2]) + b"x" * (payload_size - 2)

    async def main() -> None:
        go = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, go.set)
        if candidate == "websockets":
            await serve_websockets(port, payload, go)
        elif candidate == "picows":
            await serve_picows(port, payload, go)
        else:
            await serve_wsproto(port, payload, go, preframed=candidate == "floor")

    uvloop.run(main())


# -- the clients ---------------------------------------------------------------------------------


async def clients(port: int, count: int, seconds: float, server_pid: int) -> dict[str, Any]:
    import signal

    from websockets.asyncio.client import connect

    received = 0
    connections = []
    for i in range(count):
        connections.append(
            await connect(f"ws://127.0.0.1:{port}/", compression=None, max_size=None)
        )
        if i % 100 == 99:
            await asyncio.sleep(0.01)

    async def read(connection: Any) -> None:
        nonlocal received
        with contextlib.suppress(Exception):
            async for _ in connection:
                received += 1

    readers = [asyncio.ensure_future(read(c)) for c in connections]
    os.kill(server_pid, signal.SIGUSR1)
    await asyncio.sleep(1.0)  # warm-up
    start_received, start_cpu, start = received, cpu_seconds(server_pid), time.monotonic()
    client_cpu = time.process_time()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - start
    frames = received - start_received
    server_cpu = cpu_seconds(server_pid) - start_cpu
    client_cpu = time.process_time() - client_cpu
    for reader in readers:
        reader.cancel()
    for connection in connections:
        connection.transport.abort()
    return {
        "frames_per_s": frames / elapsed,
        "server_cpu_pct": 100 * server_cpu / elapsed,
        "server_us_per_frame": 1e6 * server_cpu / max(frames, 1),
        "client_cpu_pct": 100 * client_cpu / elapsed,
    }


def measure(candidate: str, args: argparse.Namespace) -> dict[str, Any]:
    import uvloop

    port = free_port()
    command = [sys.executable, __file__, "--serve", candidate, "--port", str(port)]
    command += ["--payload", str(args.payload)]
    server = subprocess.Popen(command)  # noqa: S603 - this very script
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{candidate} did not listen")
            time.sleep(0.05)
        result = uvloop.run(clients(port, args.connections, args.seconds, server.pid))
        result["candidate"] = candidate
        return result
    finally:
        server.kill()
        server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--payload", type=int, default=220)
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--serve", choices=CANDIDATES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        server_main(args.serve, args.port, args.payload)
        return 0
    print("| library | frames/s | server CPU | server CPU per frame | client CPU |")
    print("|---|---:|---:|---:|---:|")
    results = []
    for candidate in args.candidates.split(","):
        if candidate == "picows" and importlib.util.find_spec("picows") is None:
            print(f"| {candidate} | not installed (`.venv/bin/pip install picows`) | | | |")
            continue
        r = measure(candidate, args)
        results.append(r)
        print(
            f"| {candidate} | {r['frames_per_s']:,.0f} | {r['server_cpu_pct']:.0f}% "
            f"| {r['server_us_per_frame']:.1f} µs | {r['client_cpu_pct']:.0f}% |",
            flush=True,
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

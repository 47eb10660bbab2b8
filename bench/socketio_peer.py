"""The python-socketio peer of bench/delivery.py: what a Python team would run instead of Herald.

    .venv/bin/python bench/socketio_peer.py --port 9000

python-socketio's ASGI server on uvicorn with uvloop (one process), one room per user: a
subscriber connects over a WebSocket (Engine.IO 4, `transport=websocket`) with
`auth={"user": ...}` and joins its room; a sender emits `send` with a list of
`[user, notification]` pairs and gets an ack with their count once each was emitted to its
user's room (`emit("n", notification, room=user)`). The same unicast load as Herald's targets:
no durability, no acks of deliveries, no resume, which Herald does and this does not.

Only the benchmark uses it; python-socketio and uvicorn are in the `bench` extra.
"""

from __future__ import annotations

import argparse
from typing import Any

import socketio
import uvicorn

sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins=[], logger=False)


@sio.event
async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any] | None) -> bool:
    user = (auth or {}).get("user")
    if not user:
        return False
    await sio.enter_room(sid, user)
    return True


@sio.on("send")
async def send(sid: str, batch: list[list[Any]]) -> int:
    for user, notification in batch:
        await sio.emit("n", notification, room=user)
    return len(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        socketio.ASGIApp(sio),
        host=args.host,
        port=args.port,
        loop="uvloop",
        ws="websockets",
        log_level="warning",
        lifespan="off",
        access_log=False,
    )


if __name__ == "__main__":
    main()

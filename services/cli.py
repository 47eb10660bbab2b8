"""The `herald` command: run the services, mint dev tokens, send and tail notifications, and
the operator's commands (sessions, presence, status, templates, inbox: services/cli_admin.py).

Server settings come from `HERALD_*` variables (services/config.py); the client commands' address,
tenant and token flags default to `HERALD_ADDRESS`, `HERALD_TENANT` and `HERALD_TOKEN`.
Every failure is one line on stderr, `error: ...` (a gRPC error as `error: CODE: message`), and
exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from grpc import aio
from pydantic import ValidationError

from herald.v1 import notification_pb2, stream_pb2
from services import auth, cli_admin
from services.app_data import DataError, data_from_json, restore_notification_json
from services.cli_connection import (
    CliError,
    accepted,
    chain_flags,
    client_flags,
    connect,
    credentials,
    minter,
)
from services.client import Disconnected, Received
from services.config import BackendSettings, Config, ServerSettings
from services.logs import configure_logging

_PRIORITIES = {
    "low": notification_pb2.PRIORITY_LOW,
    "normal": notification_pb2.PRIORITY_NORMAL,
    "high": notification_pb2.PRIORITY_HIGH,
}


# The WebSocket port `herald up` and `herald serve stream` listen on unless told otherwise.
DEFAULT_WS_PORT = 8081


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _run(coro: Coroutine[Any, Any, int | None]) -> int | None:
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    except ImportError:  # pragma: no cover - uvloop is not available on Windows
        return asyncio.run(coro)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="herald", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run ingest, stream and registry in one process")
    serve = commands.add_parser("serve", help="run one service, wired to the others over gRPC")
    serve.add_argument("service", choices=["ingest", "stream", "registry"])
    serve.add_argument(
        "--workers",
        type=int,
        default=int(_env("HERALD_WORKERS", "1")),
        help="stream only: N processes on one port (SO_REUSEPORT), over the shared backends "
        "(HERALD_WORKERS)",
    )
    for p in (up, serve):
        p.add_argument("--host", default=None, help="listen address (HERALD_HOST)")
        p.add_argument("--port", type=int, default=None, help="listen port (HERALD_PORT)")
        p.add_argument(
            "--ws-port",
            default=None,
            help=f"stream nodes: the WebSocket port, or `off` (HERALD_WS_PORT; default "
            f"{DEFAULT_WS_PORT})",
        )

    commands.add_parser(
        "migrate",
        help="bring the PostgreSQL schema at HERALD_POSTGRES_DSN up to date (nodes also do it "
        "at start-up)",
    )

    token = commands.add_parser("token", help="print a token signed with the local dev key")
    token.add_argument("--tenant", default=_env("HERALD_TENANT", "default"))
    who = token.add_mutually_exclusive_group()
    who.add_argument("--user", help="a subscriber token for this user (scope: subscribe)")
    who.add_argument(
        "--service",
        help="a backend token (scopes: send presence:read sessions:admin templates:write)",
    )
    token.add_argument("--scope", action="append", help="override the scopes (repeatable)")
    token.add_argument(
        "--channel", dest="channels", action="append", help="channels the user may join"
    )
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")

    send = commands.add_parser("send", help="send one notification")
    client_flags(send, json_flag=False)
    target = send.add_mutually_exclusive_group(required=True)
    target.add_argument("--user", help="one user")
    target.add_argument("--users", help="comma-separated users")
    target.add_argument("--channel", help="a channel")
    target.add_argument("--segment", help="a segment's members now (`herald segments`)")
    target.add_argument("--broadcast", action="store_true", help="every user of the tenant")
    send.add_argument("--title", default="")
    send.add_argument("--body", default="")
    send.add_argument("--image", default="")
    send.add_argument("--data", help="app data, a JSON object (integers stay integers up to 2**53)")
    send.add_argument("--priority", choices=sorted(_PRIORITIES), default="normal")
    send.add_argument("--ttl", type=int, default=0, help="seconds; 0 = the server default")
    send.add_argument("--idempotency-key", default="")
    send.add_argument(
        "--deliver-at",
        default="",
        metavar="TIME",
        help="hold it until this time, RFC 3339 (e.g. 2026-12-24T09:00:00Z; docs/scheduling.md)",
    )
    send.add_argument(
        "--service",
        default=_env("HERALD_SERVICE", "") or None,
        help="who sends, for a minted token (HERALD_SERVICE; default herald-cli)",
    )

    tail = commands.add_parser(
        "tail",
        help="subscribe as a user and print notifications (JSON lines; connection state on stderr)",
    )
    client_flags(tail, json_flag=False)
    tail.add_argument("--user", help="who subscribes (required unless --token names them)")
    tail.add_argument("--channel", dest="channels", action="append", help="join a channel")
    tail.add_argument("--count", type=int, default=0, help="exit after this many (0 = never)")
    tail.add_argument("--no-ack", action="store_true", help="do not acknowledge")
    tail.add_argument(
        "--ack-interval",
        type=float,
        default=5.0,
        help="seconds between acks of what was printed (default 5)",
    )
    tail.add_argument(
        "--cursor", action="append", default=[], help="resume a log: LOG=CURSOR (repeatable)"
    )
    chain_flags(tail, "deliveries")
    cli_admin.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = _dispatch(args)
    except aio.AioRpcError as exc:
        _error(f"{exc.code().name}: {exc.details()}{_hint(args, exc)}")
        code = 2
    except ValidationError as exc:  # a HERALD_* setting
        _error("invalid settings: " + "; ".join(_setting_error(e) for e in exc.errors()))
        code = 2
    except (ValueError, OSError) as exc:  # CliError, DataError, key files
        _error(str(exc))
        code = 2
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        # A bug of the CLI: still one line, naming the exception (never a traceback).
        _error(f"unexpected {type(exc).__name__}: {exc}")
        code = 2
    sys.exit(code or 0)


def _hint(args: argparse.Namespace, exc: aio.AioRpcError) -> str:
    """What to try when the connection itself failed, which is most often TLS on one side only
    or a CA that does not match."""
    if exc.code() != grpc.StatusCode.UNAVAILABLE or not hasattr(args, "tls"):
        return ""
    if not (args.tls or args.ca_file):
        return "\n(if the server uses TLS, connect with --tls, and --ca-file for a private CA)"
    return (
        "\n(connecting over TLS: is the server serving TLS, and does --ca-file hold the CA that "
        "issued its certificate, for the host name in --address?)"
    )


def _error(message: str) -> None:
    one_line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"error: {one_line}", file=sys.stderr)


def _setting_error(error: Any) -> str:
    where = ".".join(str(part) for part in error.get("loc", ())) or "value"
    return f"{where}: {error.get('msg', 'invalid')}"


def _dispatch(args: argparse.Namespace) -> int | None:
    if args.command in ("up", "serve"):
        overrides: dict[str, object] = {
            k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None
        }
        if args.ws_port is not None:
            overrides["ws_port"] = args.ws_port
        elif "HERALD_WS_PORT" not in os.environ and (
            args.command == "up" or args.service == "stream"
        ):
            overrides["ws_port"] = DEFAULT_WS_PORT
        config = Config(server=ServerSettings(**overrides))  # type: ignore[arg-type]
        configure_logging(config.server.log_level)
        from services.server import ALL_ROLES, Role, serve_forever

        roles: tuple[Role, ...] = ALL_ROLES if args.command == "up" else (args.service,)
        workers = getattr(args, "workers", 1)
        if workers != 1:
            return _serve_workers(args.service, workers, config)
        return _run(serve_forever(config, roles))
    if args.command == "migrate":
        return _run(_migrate())
    if args.command == "token":
        return _print_token(args)
    if args.command == "send":
        return _run(_send(args))
    if args.command == "tail":
        _quiet_client_logs()
        return _run(_tail(args))
    if args.command in cli_admin.COMMANDS:
        return _run(cli_admin.run(args))
    return 2  # pragma: no cover - argparse rejects unknown commands


def _serve_workers(service: str, workers: int, config: Config) -> int:
    """Runs `workers` stream processes on one port and waits for them; SIGINT and SIGTERM are
    passed on, so each drains its streams within the grace period."""
    if service != "stream" or workers < 1:
        raise ValueError("--workers N (N >= 1) is for `herald serve stream`")
    if BackendSettings().profile != "production":
        raise ValueError(
            "--workers needs the production profile (HERALD_POSTGRES_DSN and HERALD_REDIS_URL): "
            "memory stores are per process, so workers would not share them"
        )
    node_id = config.server.node_id or f"{socket.gethostname()}-stream"
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "services", "serve", "stream"],
            env={
                **os.environ,
                "HERALD_WORKERS": "1",
                "HERALD_REUSE_PORT": "true",
                "HERALD_PORT": str(config.server.port),
                "HERALD_WS_PORT": "off"
                if config.server.ws_port is None
                else str(config.server.ws_port),
                "HERALD_HOST": config.server.host,
                "HERALD_NODE_ID": f"{node_id}-{i}",
            },
        )
        for i in range(workers)
    ]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    codes = [child.wait() for child in children]
    return max(codes, key=abs)


async def _migrate() -> int:
    settings = BackendSettings()
    if settings.postgres_dsn is None:
        raise ValueError("herald migrate needs HERALD_POSTGRES_DSN (the database to migrate)")
    from services.backends_production import STARTUP_FAILURES
    from services.postgres import create_pool, migrate

    try:
        pool = await create_pool(settings.postgres_dsn.get_secret_value(), max_size=1)
    except STARTUP_FAILURES as exc:
        raise ValueError(
            f"cannot reach PostgreSQL at HERALD_POSTGRES_DSN ({type(exc).__name__})"
        ) from None
    try:
        applied = await migrate(pool)
    finally:
        await pool.close()
    print(json.dumps({"applied": applied}))
    return 0


def _print_token(args: argparse.Namespace) -> int:
    if args.service:
        subject = args.service
        scopes = args.scope or [
            auth.SCOPE_SEND,
            auth.SCOPE_PRESENCE_READ,
            auth.SCOPE_SESSIONS_ADMIN,
            auth.SCOPE_TEMPLATES_WRITE,
        ]
    else:
        subject = args.user or "dev"
        scopes = args.scope or [auth.SCOPE_SUBSCRIBE]
    print(minter().mint(subject, args.tenant, scopes, ttl_s=args.ttl, channels=args.channels or ()))
    return 0


async def _send(args: argparse.Namespace) -> int:
    notification = notification_pb2.Notification(
        priority=_PRIORITIES[args.priority],
        ttl_seconds=args.ttl,
        idempotency_key=args.idempotency_key,
    )
    if args.user is not None:
        notification.target.user_id = args.user
    elif args.users is not None:
        notification.target.users.user_ids.extend(u.strip() for u in args.users.split(","))
    elif args.channel is not None:
        notification.target.channel = args.channel
    elif args.segment is not None:
        notification.target.segment = args.segment
    else:
        notification.target.broadcast = True
    if args.deliver_at:
        try:
            notification.deliver_at.FromJsonString(args.deliver_at)
        except ValueError:
            raise CliError(
                f"--deliver-at {args.deliver_at!r} is not an RFC 3339 time "
                "(e.g. 2026-12-24T09:00:00Z or 2026-12-24T10:00:00+01:00)"
            ) from None
    notification.content.title = args.title
    notification.content.body = args.body
    notification.content.image_url = args.image
    if args.data:
        try:
            notification.content.data.CopyFrom(data_from_json(args.data))
        except DataError as exc:
            raise CliError(f"--data: {exc}") from None
    who = credentials(
        args,
        [auth.SCOPE_SEND],
        args.service,
        subject_flag="--service",
        default_subject="herald-cli",
    )
    async with connect(args, who.token) as client:
        response = await client.send(notification)
    print(json_format.MessageToJson(response, indent=None))
    return 0


async def _tail(args: argparse.Namespace) -> int:
    cursors = {}
    for item in args.cursor:
        log_name, _, value = item.rpartition("=")
        if not log_name or not value.isdigit():
            raise CliError(f"--cursor takes LOG=CURSOR, e.g. user=42; got {item!r}")
        cursors[log_name] = int(value)
    who = credentials(args, [auth.SCOPE_SUBSCRIBE], args.user)
    # Each rejected delivery gets a line of its own below (on_reject), not the client's log.
    logging.getLogger("services.client_chain").setLevel(logging.ERROR)
    # SIGTERM (a supervisor, `kill`) stops tail as Ctrl-C does: the task is cancelled, so what it
    # printed is acked on the way out instead of coming again to the next session.
    task = asyncio.current_task()
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        if task is not None:
            task.cancel()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await _tail_until_done(args, who.token, cursors)
    except asyncio.CancelledError:
        if not terminated:
            raise
        return 0
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _tail_until_done(args: argparse.Namespace, token: str, cursors: dict[str, int]) -> int:
    seen = 0
    async with connect(args, token) as client:
        subscription = client.subscribe(
            channels=args.channels or (),
            cursors=cursors,
            auto_ack=not args.no_ack,
            ack_interval=args.ack_interval,
            device="cli",
            on_connect=lambda started: _state(
                f"subscribed as {started.user_id}@{started.tenant_id}, "
                f"session {started.session_id} on {started.node_id}"
                + (f" (encodings: {', '.join(started.encodings)})" if started.encodings else "")
            ),
            on_disconnect=_disconnected,
            accept_encodings=accepted(args),
            verify=args.verify,
            on_reject=lambda rejected, delivery: _state(
                f"rejected a delivery ({rejected.reason}) of log {delivery.log[:64]} "
                f"at cursor {delivery.cursor}"
            ),
        )
        try:
            # Closed before the client: its last acks (of what was printed) go out first.
            async with contextlib.aclosing(aiter(subscription)) as received_all:
                async for received in received_all:
                    line = {
                        "log": received.log,
                        "cursor": received.cursor,
                        "attempt": received.attempt,
                        "notification": restore_notification_json(
                            json_format.MessageToDict(received.notification)
                        ),
                    }
                    print(json.dumps(line), flush=True)
                    seen += 1
                    if args.count and seen >= args.count:
                        if not args.no_ack:
                            await _ack_last(received)
                        break
        except aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return 0
            raise
        closing = subscription.last_closing
        if closing is not None and closing.reason == stream_pb2.Closing.REASON_DISCONNECTED:
            _state(f"closed by the server: {closing.message}")
    return 0


async def _ack_last(received: Received) -> None:
    """Acks the notification tail stops on: auto-ack covers only what the loop came back from."""
    try:
        await received.ack()
    except aio.AioRpcError as exc:
        _state(
            f"warning: could not ack {received.notification.id} ({exc.code().name}: "
            f"{exc.details()}); it will be delivered again"
        )


def _state(message: str) -> None:
    """Connection state, on stderr (stdout carries only notifications)."""
    print(message, file=sys.stderr, flush=True)


def _disconnected(event: Disconnected) -> None:
    attempt = f" (attempt {event.failures + 1})" if event.failures else ""
    _state(f"disconnected ({event.reason}); reconnecting in {event.retry_in_s:.1f}s{attempt}")


class _OneLine(logging.Formatter):
    """`warning: message`, without a traceback: the CLI's stderr is for people."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _quiet_client_logs() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)

"""The audit log: who did what to what, from where, when, and how it ended; one JSON line each.

Records go to the `herald.audit` logger, so they leave with every other log line as JSON on
stdout (services/logs.py); select them by `"logger": "herald.audit"`. Every record has the
message `audit` and these fields (docs/audit.md):

- `time`: when, ISO 8601 in UTC with milliseconds;
- `action`: what, e.g. `session.disconnect`, `template.put`, `session.open`, `auth.failure`;
- `actor` and `tenant`: who, the token's `sub` and tenant (empty when no token verified);
- `target` and `target_tenant`: what was acted on;
- `outcome`: `OK`, or the gRPC status the caller got (`PERMISSION_DENIED`, `NOT_FOUND`...);
- `peer`: the caller's address as gRPC saw it, and `forwarded_for`, the `x-forwarded-for`
  metadata when the call has it (set by Envoy; a direct caller could write anything there);
- a few fixed details per action (a count, a closing reason, a template version).

Invariant: nothing a record holds comes from a token or a notification. A client string is
named at most through `quote` (cut to 64 characters); template bodies, payloads, variables and
the `authorization` metadata never reach this module.

Auth failures come from outside, before any check: `AuthFailures` writes at most `limit` lines
per window and reports how many it left out in the next line, so a flood of bad tokens cannot
flood the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from grpc import aio

from services.auth import Principal, current_principal
from services.bounds import QUOTE_LEN
from services.errors import HeraldError

log = logging.getLogger("herald.audit")
# The audit trail does not follow HERALD_LOG_LEVEL: a node logging only warnings still audits.
log.setLevel(logging.INFO)

OK = "OK"
# What a record keeps of an address or a forwarded-for list: a real one fits easily.
_MAX_ADDRESS_LEN = 128
_AUTH_FAILURE_LIMIT = 20
_AUTH_FAILURE_INTERVAL_S = 60.0

Context = aio.ServicerContext[Any, Any]


def bounded(value: str, limit: int = QUOTE_LEN) -> str:
    """`value` cut to `limit` characters (with an ellipsis): client strings stay short."""
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Peer:
    """Where a call came from when no gRPC context says it (the WebSocket endpoint): the
    socket's address, and the `x-forwarded-for` header when the handshake had one."""

    address: str
    forwarded_for: str = ""


# What a record names the caller by: a gRPC call's context, or a Peer.
Caller = Context | Peer


def _where(context: Caller | None) -> dict[str, str]:
    if context is None:
        return {"peer": ""}
    if isinstance(context, Peer):
        where = {"peer": bounded(context.address, _MAX_ADDRESS_LEN)}
        if context.forwarded_for:
            where["forwarded_for"] = bounded(context.forwarded_for, _MAX_ADDRESS_LEN)
        return where
    where = {"peer": bounded(context.peer() or "", _MAX_ADDRESS_LEN)}
    for key, value in context.invocation_metadata() or ():
        if key == "x-forwarded-for":
            text = value if isinstance(value, str) else bytes(value).decode(errors="replace")
            where["forwarded_for"] = bounded(text, _MAX_ADDRESS_LEN)
            break
    return where


def record(
    action: str,
    *,
    principal: Principal | None,
    target: str,
    outcome: str,
    context: Caller | None,
    target_tenant: str = "",
    **details: object,
) -> None:
    """Writes one audit record. `details` must be fixed values, never client payloads."""
    log.info(
        "audit",
        extra={
            "time": _now(),
            "action": action,
            "actor": principal.subject if principal is not None else "",
            "tenant": principal.tenant if principal is not None else "",
            "target": bounded(target, 2 * QUOTE_LEN),
            "target_tenant": bounded(
                target_tenant or (principal.tenant if principal else ""), QUOTE_LEN
            ),
            "outcome": outcome,
            **_where(context),
            **details,
        },
    )


def outcome_of(exc: BaseException) -> str:
    """The status name a caller got for `exc` (what the interceptors map it to)."""
    if isinstance(exc, HeraldError):
        return exc.code.name
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    if isinstance(exc, aio.AbortError):
        return "ABORTED"
    return "INTERNAL"


@contextlib.asynccontextmanager
async def admin_action(
    action: str, context: Context, *, target: str, target_tenant: str = ""
) -> AsyncIterator[dict[str, object]]:
    """Records an admin RPC when it ends, with its outcome: `OK`, or the status of the error it
    raised (a refusal included). The body may add fixed details to the dict it is given."""
    principal = current_principal()
    details: dict[str, object] = {}
    try:
        yield details
    except BaseException as exc:
        record(
            action,
            principal=principal,
            target=target,
            target_tenant=target_tenant,
            outcome=outcome_of(exc),
            context=context,
            **details,
        )
        raise
    record(
        action,
        principal=principal,
        target=target,
        target_tenant=target_tenant,
        outcome=OK,
        context=context,
        **details,
    )


class AuthFailures:
    """Audits refused calls (no token, a bad one, a missing scope), at most `limit` records per
    `interval_s` window. What a full window leaves out is counted and reported as `left_out` in
    the next record written, so the log says how many there were without holding each."""

    def __init__(
        self,
        limit: int = _AUTH_FAILURE_LIMIT,
        interval_s: float = _AUTH_FAILURE_INTERVAL_S,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._interval_s = interval_s
        self._now = now
        self._window_start = -math.inf
        self._written = 0
        self._left_out = 0

    def record(
        self,
        method: str,
        denial: HeraldError,
        principal: Principal | None,
        context: Caller,
    ) -> None:
        now = self._now()
        if now - self._window_start >= self._interval_s:
            self._window_start, self._written = now, 0
        if self._written >= self._limit:
            self._left_out += 1
            return
        self._written += 1
        left_out, self._left_out = self._left_out, 0
        record(
            "auth.failure",
            principal=principal,
            # Only served methods get here (grpc answers others UNIMPLEMENTED): a bounded set.
            target=method,
            outcome=denial.code.name,
            context=context,
            # Our own message ("the token has expired", "the token lacks the 'send' scope"),
            # never the token or its claims.
            reason=bounded(denial.message, 2 * QUOTE_LEN),
            left_out=left_out,
        )

"""Accepting notifications that arrive without a gRPC call (JetStream, the outbox).

A source hands over what it read as `Arrival`s; `Intake.accept` puts them through the same
admission (rate limits) and `IngestCore.send_batch` path as `SendBatch`, and says for each what
the source must do with it (`Verdict`):

- ACCEPTED: durably accepted (or a duplicate of an accepted one): ack / delete it;
- DEAD: can never be accepted (malformed, INVALID_ARGUMENT, PERMISSION_DENIED): dead-letter it
  with the reason, at once;
- RETRY: failed for a reason that may pass (a missing template, a bug): try again later, and
  dead-letter it after the source's maximum of attempts;
- PUSHBACK: Herald refused the load (UNAVAILABLE, RESOURCE_EXHAUSTED): try again after
  `retry_after_s`, without counting an attempt against it, and slow down.

A source acts as a service principal (`service`, scope `send`) of the arrival's tenant, which
must be one of `tenants` (None: any).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from enum import Enum
from typing import NamedTuple

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from herald.v1 import notification_pb2
from services import metrics
from services.auth import SCOPE_SEND, Principal
from services.bounds import MAX_ID_LEN, MAX_REASON_LEN, quote
from services.errors import (
    HeraldError,
    InvalidArgument,
    PermissionDenied,
    RateLimited,
    ResourceExhausted,
    Unavailable,
)
from services.ingest.core import IngestCore, SendOutcome
from services.ratelimit.admission import Admission

log = logging.getLogger(__name__)

# Codes that no retry can change.
_DEAD_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED})
_PUSHBACK_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
_LOG_INTERVAL_S = 10.0


class Verdict(Enum):
    ACCEPTED = "accepted"
    DEAD = "dead"
    RETRY = "retry"
    PUSHBACK = "pushback"


class Arrival(NamedTuple):
    """One message of a source: its tenant and notification, or why it could not be read."""

    tenant: str
    notification: notification_pb2.Notification | None
    idempotency_key: str
    error: HeraldError | None = None


class Result(NamedTuple):
    verdict: Verdict
    # The status code name and message (DEAD and RETRY); empty when accepted.
    code: str = ""
    reason: str = ""
    retry_after_s: float = 0.0
    notification_id: str = ""


def decode_notification(data: bytes, content_type: str = "") -> notification_pb2.Notification:
    """A `Notification` from its protobuf encoding or its canonical JSON.

    `content_type` decides (`application/json`, `application/protobuf` or
    `application/x-protobuf`); without one, a payload whose first non-blank byte is `{` is JSON
    (no protobuf encoding of a Notification starts with 0x7b: that would be field 15 as a
    group), anything else protobuf.

    Raises:
        InvalidArgument: the bytes are neither, or the content type is unknown.
    """
    kind = content_type.split(";", 1)[0].strip().lower()
    if not kind:
        kind = "application/json" if data.lstrip()[:1] == b"{" else "application/protobuf"
    notification = notification_pb2.Notification()
    if kind == "application/json":
        try:
            json_format.Parse(data.decode("utf-8"), notification)
        except (json_format.ParseError, UnicodeDecodeError, ValueError) as exc:
            raise InvalidArgument(
                f"the payload is not a herald.v1.Notification in JSON ({type(exc).__name__})"
            ) from None
        return notification
    if kind in ("application/protobuf", "application/x-protobuf"):
        try:
            notification.ParseFromString(data)
        except (DecodeError, ValueError):
            raise InvalidArgument(
                "the payload is not a herald.v1.Notification in protobuf "
                "(send JSON with Content-Type: application/json)"
            ) from None
        return notification
    raise InvalidArgument(
        f"unknown Content-Type {quote(content_type)}: use application/json or application/protobuf"
    )


def parse_tenants(value: str) -> frozenset[str] | None:
    """A `tenants` setting: None for `*` (any tenant), else the set it names."""
    names = frozenset(t.strip() for t in value.split(",") if t.strip())
    return None if "*" in names else names


def backoff(attempt: int, first_s: float, max_s: float) -> float:
    """The delay before attempt `attempt + 1` (1-based): first_s, doubled per attempt."""
    return min(max_s, first_s * 2.0 ** max(0, min(attempt - 1, 30)))


class BoundedLog:
    """Logs an event at most once per `interval_s` per kind, counting what it left out, so a
    source failing on every message cannot flood the log. Lines never hold payloads."""

    def __init__(
        self, interval_s: float = _LOG_INTERVAL_S, now: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval_s = interval_s
        self._now = now
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, message: str, *, kind: str = "", **fields: object) -> None:
        kind = kind or message
        now = self._now()
        logged_at, left_out = self._last.get(kind, (-math.inf, 0))
        if now - logged_at < self._interval_s:
            self._last[kind] = (logged_at, left_out + 1)
            return
        self._last[kind] = (now, 0)
        log.warning(
            "%s (%d more left out since the last report)",
            message,
            left_out,
            extra={**fields, "left_out": left_out},
        )


def _reason(exc: HeraldError) -> tuple[str, str]:
    message = exc.message
    if len(message) > MAX_REASON_LEN:
        message = message[: MAX_REASON_LEN - 1] + "…"
    return exc.code.name, message


def classify(exc: HeraldError, default_delay_s: float) -> Result:
    """What a source does with a message that failed with `exc`."""
    code, reason = _reason(exc)
    if exc.code in _DEAD_CODES:
        return Result(Verdict.DEAD, code, reason)
    if exc.code in _PUSHBACK_CODES:
        delay = exc.retry_after_s if isinstance(exc, RateLimited) else default_delay_s
        return Result(Verdict.PUSHBACK, code, reason, delay)
    return Result(Verdict.RETRY, code, reason, default_delay_s)


class Intake:
    """Puts arrivals through admission and IngestCore as one service principal."""

    def __init__(
        self,
        core: IngestCore,
        admission: Admission,
        *,
        source: str,
        service: str,
        tenants: frozenset[str] | None,
        max_batch: int,
        pushback_delay_s: float,
    ) -> None:
        self._core = core
        self._admission = admission
        self._source = source
        self._service = service
        self._tenants = tenants
        self._max_batch = max_batch
        self._pushback_delay_s = pushback_delay_s
        self.log = BoundedLog()

    def count(self, outcome: str, amount: int = 1) -> None:
        if amount:
            metrics.SOURCE_MESSAGES.labels(self._source, outcome).inc(amount)

    async def accept(self, arrivals: Sequence[Arrival]) -> list[Result]:
        """The result of each arrival, in order (never raises for one arrival's fault)."""
        results: list[Result | None] = [None] * len(arrivals)
        by_tenant: dict[str, list[int]] = {}
        for index, arrival in enumerate(arrivals):
            error = arrival.error
            if error is None and self._tenants is not None and arrival.tenant not in self._tenants:
                error = PermissionDenied(
                    f"this {self._source} source may not send for tenant {quote(arrival.tenant)}"
                )
            if error is None and not arrival.tenant:
                error = InvalidArgument("the message names no tenant")
            if error is None and len(arrival.tenant) > MAX_ID_LEN:
                error = InvalidArgument(f"the tenant is longer than {MAX_ID_LEN} characters")
            if error is not None:
                results[index] = classify(error, self._pushback_delay_s)
                continue
            by_tenant.setdefault(arrival.tenant, []).append(index)
        for tenant, indexes in by_tenant.items():
            step = await self._chunk_size(tenant)
            for start in range(0, len(indexes), step):
                chunk = indexes[start : start + step]
                for index, result in zip(
                    chunk, await self._send(tenant, [arrivals[i] for i in chunk]), strict=True
                ):
                    results[index] = result
        done = [result for result in results if result is not None]
        assert len(done) == len(results)  # noqa: S101 - every arrival got a result above
        # Dead letters are counted by the source once it has dead-lettered them.
        for verdict in (Verdict.ACCEPTED, Verdict.RETRY, Verdict.PUSHBACK):
            self.count(verdict.value, sum(1 for r in done if r.verdict is verdict))
        return done

    async def _chunk_size(self, tenant: str) -> int:
        """At most a batch, and never more than a send bucket's burst (which no call passes)."""
        size = self._max_batch
        limits = await self._admission.limits(tenant)
        for limit in (limits.tenant_send, limits.key_send):
            if limit.rate > 0:
                size = min(size, limit.burst)
        return max(1, size)

    async def _send(self, tenant: str, arrivals: list[Arrival]) -> list[Result]:
        principal = Principal(self._service, tenant, frozenset({SCOPE_SEND}))
        notifications = []
        for arrival in arrivals:
            assert arrival.notification is not None  # noqa: S101 - errors were sorted out
            notification = arrival.notification
            notification.idempotency_key = arrival.idempotency_key
            notifications.append(notification)
        try:
            await self._admission.admit_send(principal, len(notifications))
            outcomes: Sequence[SendOutcome | HeraldError] = await self._core.send_batch(
                tenant, notifications
            )
        except (Unavailable, ResourceExhausted) as exc:
            result = classify(exc, self._pushback_delay_s)
            self.log.warning(
                "ingest source: Herald pushed back",
                kind="pushback",
                source=self._source,
                code=result.code,
                retry_after_s=result.retry_after_s,
            )
            return [result] * len(arrivals)
        except HeraldError as exc:
            return [classify(exc, self._pushback_delay_s)] * len(arrivals)
        except Exception as exc:
            # A bug, or a store failing in a way the breaker does not know: retried, counted.
            self.log.warning(
                "ingest source: unexpected error accepting a batch",
                kind="unexpected",
                source=self._source,
                error=type(exc).__name__,
            )
            return [Result(Verdict.RETRY, "INTERNAL", "internal error; it was logged")] * len(
                arrivals
            )
        results = []
        for outcome in outcomes:
            if isinstance(outcome, HeraldError):
                results.append(classify(outcome, self._pushback_delay_s))
            else:
                results.append(Result(Verdict.ACCEPTED, notification_id=outcome.notification_id))
        return results

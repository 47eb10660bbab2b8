"""Ingestion from a NATS JetStream durable pull consumer (docs/ingestion.md).

At-least-once end to end:

- a message is acked only after `Intake.accept` said ACCEPTED, i.e. after IngestCore stored it
  (or found it a duplicate of a stored one); a crash before the ack redelivers it;
- its idempotency key is its `Nats-Msg-Id` header, else the notification's own
  `idempotency_key`, else `jetstream:<stream>:<stream sequence>`: a redelivery is a duplicate,
  never a second send;
- a message that can never be accepted is published to the dead-letter subject (with the reason
  in headers, awaited until JetStream stored it) and only then terminated (`term`); a failed
  dead-letter publish NAKs it instead;
- a push-back (UNAVAILABLE, RESOURCE_EXHAUSTED) NAKs with the delay Herald asked for and pauses
  fetching as long: consumption slows down, nothing fails or is dead-lettered for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from services.bounds import quote
from services.config import JetStreamSettings, StartupError
from services.errors import HeraldError, InvalidArgument, PermissionDenied
from services.ingest.intake import Arrival, Intake, Result, Verdict, backoff, decode_notification

log = logging.getLogger(__name__)

TENANT_HEADER = "Herald-Tenant"
MSG_ID_HEADER = "Nats-Msg-Id"
CONTENT_TYPE_HEADER = "Content-Type"
# Headers of a dead letter (beside the original message's own).
REASON_CODE_HEADER = "Herald-Reason-Code"
REASON_HEADER = "Herald-Reason"
SUBJECT_HEADER = "Herald-Original-Subject"
SEQUENCE_HEADER = "Herald-Original-Sequence"
DELIVERIES_HEADER = "Herald-Deliveries"

_NATS_FAILURES = (nats.errors.Error, OSError, asyncio.TimeoutError)


def tenant_position(subject: str) -> int | None:
    """The index of the token that names the tenant: the first wildcard of `subject`."""
    for index, token in enumerate(subject.split(".")):
        if token in ("*", ">"):
            return index
    return None


class JetStreamSource:
    """A durable pull consumer feeding `Intake`; `start` it, `aclose` it."""

    def __init__(self, intake: Intake, settings: JetStreamSettings) -> None:
        self._intake = intake
        self._settings = settings
        self._tenant_at = tenant_position(settings.subject)
        self._client: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        # The workers settling a batch now (the others wait in a fetch: cancelled at once).
        self._busy: set[asyncio.Task[None] | None] = set()

    async def start(self) -> None:
        """Connects, makes the streams and consumer when told to, and starts consuming.

        Raises:
            StartupError: NATS cannot be reached, or the stream or consumer cannot be set up.
        """
        s = self._settings
        try:
            self._client = await nats.connect(
                servers=s.url.get_secret_value().split(","),
                name="herald-ingest",
                connect_timeout=5,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                error_cb=self._on_error,
            )
        except (*_NATS_FAILURES, ValueError) as exc:
            raise StartupError(
                f"cannot reach NATS at HERALD_JETSTREAM_URL ({type(exc).__name__}); is it "
                "running with JetStream (nats-server -js)?"
            ) from None
        try:
            self._js = self._client.jetstream()
            if s.create_streams:
                await self._ensure_stream(s.stream, s.subject)
                await self._ensure_stream(f"{s.stream}_DEAD", s.dead_letter_subject)
            subscription = await self._js.pull_subscribe(
                s.subject,
                durable=s.durable,
                stream=s.stream,
                config=api.ConsumerConfig(
                    ack_policy=api.AckPolicy.EXPLICIT,
                    ack_wait=s.ack_wait_s,
                    # Push-back never uses up deliveries: Herald dead-letters, JetStream never
                    # drops a message on its own.
                    max_deliver=-1,
                    max_ack_pending=max(1000, 4 * s.batch * s.concurrency),
                ),
            )
            # More workers: pull requests of their own on the same durable consumer.
            subscriptions = [subscription]
            for _ in range(s.concurrency - 1):
                bound = await self._js.pull_subscribe_bind(durable=s.durable, stream=s.stream)
                subscriptions.append(bound)
        except (*_NATS_FAILURES, nats.js.errors.Error) as exc:
            await self._client.close()
            raise StartupError(
                f"cannot set up JetStream consumer {quote(s.durable)} on stream "
                f"{quote(s.stream)} ({type(exc).__name__}: {exc})"
            ) from None
        self._tasks = [
            asyncio.create_task(self._run(one), name=f"herald-jetstream-{index}")
            for index, one in enumerate(subscriptions)
        ]
        log.info(
            "jetstream source consuming",
            extra={"stream": s.stream, "subject": s.subject, "durable": s.durable},
        )

    async def _ensure_stream(self, name: str, subject: str) -> None:
        assert self._js is not None  # noqa: S101 - set by start
        try:
            await self._js.stream_info(name)
        except nats.js.errors.NotFoundError:
            await self._js.add_stream(name=name, subjects=[subject])

    async def _on_error(self, exc: Exception) -> None:
        self._intake.log.warning(
            "jetstream: NATS connection error", kind="nats", error=type(exc).__name__
        )

    async def _run(self, subscription: JetStreamContext.PullSubscription) -> None:
        s = self._settings
        while not self._stopping:
            try:
                messages = await subscription.fetch(s.batch, timeout=s.fetch_timeout_s)
            except nats.errors.TimeoutError:
                continue
            except _NATS_FAILURES as exc:
                self._intake.log.warning(
                    "jetstream: fetch failed; retrying", kind="fetch", error=type(exc).__name__
                )
                await asyncio.sleep(s.retry_delay_s)
                continue
            me = asyncio.current_task()
            self._busy.add(me)
            try:
                pause = await self.handle(messages)
            except Exception as exc:
                # Unsettled messages come back after the ack wait; the consumer goes on.
                self._intake.log.warning(
                    "jetstream: unexpected error handling a batch",
                    kind="handle",
                    error=type(exc).__name__,
                )
                pause = s.retry_delay_s
            finally:
                self._busy.discard(me)
            if pause > 0 and not self._stopping:
                await asyncio.sleep(pause)

    def _arrival(self, message: Msg) -> Arrival:
        headers: Mapping[str, str] = message.headers or {}
        sequence = message.metadata.sequence.stream
        key = headers.get(MSG_ID_HEADER, "")
        tenant = headers.get(TENANT_HEADER, "")
        if self._tenant_at is not None:
            tokens = message.subject.split(".")
            from_subject = tokens[self._tenant_at] if self._tenant_at < len(tokens) else ""
            if tenant and tenant != from_subject:
                error: HeraldError = PermissionDenied(
                    f"the {TENANT_HEADER} header {quote(tenant)} differs from the subject's "
                    f"tenant {quote(from_subject)}"
                )
                return Arrival(from_subject, None, key, error)
            tenant = from_subject
        elif not tenant:
            error = InvalidArgument(f"the message has no {TENANT_HEADER} header")
            return Arrival("", None, key, error)
        try:
            notification = decode_notification(message.data, headers.get(CONTENT_TYPE_HEADER, ""))
        except InvalidArgument as exc:
            return Arrival(tenant, None, key, exc)
        key = key or notification.idempotency_key or f"jetstream:{self._settings.stream}:{sequence}"
        return Arrival(tenant, notification, key)

    async def handle(self, messages: list[Msg]) -> float:
        """Accepts a fetched batch and settles each message; returns how long to pause."""
        s = self._settings
        self._intake.count("consumed", len(messages))
        self._intake.count("redelivered", sum(1 for m in messages if m.metadata.num_delivered > 1))
        arrivals = [self._arrival(message) for message in messages]
        results = await self._intake.accept(arrivals)
        pause = 0.0
        for message, arrival, result in zip(messages, arrivals, results, strict=True):
            deliveries = message.metadata.num_delivered
            try:
                if result.verdict is Verdict.ACCEPTED:
                    await message.ack()
                elif result.verdict is Verdict.PUSHBACK:
                    pause = max(pause, result.retry_after_s)
                    await message.nak(delay=max(result.retry_after_s, 0.001))
                elif result.verdict is Verdict.RETRY and deliveries < s.max_attempts:
                    await message.nak(
                        delay=backoff(deliveries, s.retry_delay_s, s.retry_delay_max_s)
                    )
                else:
                    await self._dead_letter(message, arrival, result)
            except _NATS_FAILURES as exc:
                # Unsettled: JetStream redelivers it after the ack wait.
                self._intake.log.warning(
                    "jetstream: could not settle a message", kind="settle", error=type(exc).__name__
                )
        return pause

    async def _dead_letter(self, message: Msg, arrival: Arrival, result: Result) -> None:
        assert self._js is not None  # noqa: S101 - set by start
        s = self._settings
        headers = dict(message.headers or {})
        # The dead letter is a message of its own: JetStream must not take it for a duplicate.
        headers.pop(MSG_ID_HEADER, None)
        if arrival.idempotency_key:
            headers["Herald-Msg-Id"] = arrival.idempotency_key
        headers.update(
            {
                REASON_CODE_HEADER: result.code,
                REASON_HEADER: result.reason.replace("\r", " ").replace("\n", " "),
                SUBJECT_HEADER: message.subject,
                SEQUENCE_HEADER: str(message.metadata.sequence.stream),
                DELIVERIES_HEADER: str(message.metadata.num_delivered),
            }
        )
        if arrival.tenant:
            headers[TENANT_HEADER] = arrival.tenant
        try:
            await self._js.publish(s.dead_letter_subject, message.data, headers=headers)
        except (*_NATS_FAILURES, nats.js.errors.Error) as exc:
            self._intake.log.warning(
                "jetstream: dead-letter publish failed; the message is redelivered",
                kind="dead-letter-failed",
                error=type(exc).__name__,
            )
            await message.nak(delay=s.retry_delay_max_s)
            return
        await message.term()
        self._intake.count("dead_lettered")
        self._intake.log.warning(
            "jetstream: message dead-lettered",
            kind=f"dead:{result.code}",
            code=result.code,
            tenant=quote(arrival.tenant),
            sequence=message.metadata.sequence.stream,
        )

    async def aclose(self, grace_s: float = 5.0) -> None:
        """Stops fetching; a batch in hand is settled within `grace_s` (what is not, JetStream
        redelivers after the ack wait), then the connection is drained and closed."""
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            if task not in self._busy:
                task.cancel()
        if tasks:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), grace_s)
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(*_NATS_FAILURES):
                await client.drain()
            with contextlib.suppress(*_NATS_FAILURES):
                await client.close()

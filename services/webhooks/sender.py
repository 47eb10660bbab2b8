"""The webhook sender: POSTs each tenant's batches, retries, parks, and replays.

Invariants:

- A batch is built once (JSON, services/webhooks/batches.py) and keeps its id and body on
  every attempt and replay; each attempt is signed again with a fresh timestamp
  (services/webhooks/signing.py) with the tenant's current URL and secret.
- A 2xx answer delivers it. 429, 408, 5xx, timeouts and connection errors are retried after
  exponential backoff with jitter on the injected clock (`Retry-After` is honoured, within
  the cap); after `max_attempts` attempts the batch is parked with the last reason. Any other
  answer (a 3xx: redirects are not followed; a 4xx) parks it at once: sending it again would
  not help.
- A parked batch is durable (ParkedWebhookStore) and stays until an operator replays or
  deletes it; a replay claims it for a lease, sends it through the same retries, then deletes
  it, or parks it again.
- Nothing here runs on the delivery path: events reach it through WebhookEvents' queues. Each
  attempt is a task of its own (at most `max_in_flight` POSTs at once): a slow receiver holds
  up its own batches, not the other tenants'.
- Before a batch is built, its events are filtered by their users' webhook preferences
  (services/webhooks/wanted.py): an unwanted event is dropped and counted, never sent or
  parked. A replay sends the parked batch as it is.
- Unless `allow_private`, a batch goes only to a public host: before each attempt, every address
  the URL's host resolves to must be global (services/push/public_hosts.py), or the batch is
  parked with the reason; a name that does not resolve is retried.
- `aclose` sends what is queued once more (bounded by `shutdown_s`) and parks whatever is not
  delivered, so a clean stop loses no batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Final

import httpx

from services import metrics
from services.clock import Clock
from services.config import WebhooksSettings
from services.push.public_hosts import (
    NotPublic,
    check_url_resolves_public,
    public_transport,
    refusal_in,
)
from services.webhooks import batches, signing
from services.webhooks.events import Event, SettingsFor, WebhookEvents
from services.webhooks.parked import ParkedBatch, ParkedWebhookStore
from services.webhooks.wanted import WebhookPreferences

log = logging.getLogger(__name__)

USER_AGENT: Final = "Herald-Webhooks/1"
_RETRIED_STATUS: Final = frozenset({408, 429})
_WARN_INTERVAL_S: Final = 60.0


_UNRESOLVED: Final = "the host of webhooks.url does not resolve"


def _refused(exc: NotPublic) -> str:
    return (
        f"{exc}: webhooks go to public hosts only (HERALD_WEBHOOKS_ALLOW_PRIVATE=true lets "
        "the operator allow internal ones)"
    )


async def _not_public(url: str) -> str | None:
    """None when every address the URL's host resolves to is public; otherwise why not, for the
    batch's reason (the URL was checked when it was set: it has a host and a known scheme)."""
    try:
        await check_url_resolves_public(url)
    except NotPublic as exc:
        return _refused(exc)
    except OSError as exc:
        return f"{_UNRESOLVED} ({type(exc).__name__})"
    except ValueError as exc:  # anything else the form of the URL raises: parked with it
        return f"webhooks.url cannot be used: {exc}"
    return None


@dataclass
class Outgoing:
    """A batch on its way: its attempts so far and when it may be tried next."""

    tenant: str
    batch_id: str
    body: bytes
    event_count: int
    created_at: float
    attempts: int = 0
    next_at: float = 0.0
    reason: str = ""
    # Taken from the parked store by a replay (deleted from it once delivered).
    replay: bool = False


class _Outcome:
    DELIVERED = "delivered"
    RETRY = "retry"
    PARK = "park"
    DROP = "drop"


class WebhookSender:
    def __init__(
        self,
        *,
        events: WebhookEvents,
        parked: ParkedWebhookStore,
        settings_for: SettingsFor,
        clock: Clock,
        settings: WebhooksSettings,
        refresh_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        preferences: WebhookPreferences | None = None,
    ) -> None:
        self.events = events
        # None: no preferences on this node (the split topology's memory stream node).
        self._preferences = preferences
        self._parked = parked
        self._settings_for = settings_for
        self._clock = clock
        self._settings = settings
        self._refresh_s = refresh_s
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        if transport is None and not settings.allow_private:
            # Checked at each connection too: the name cannot answer the check and the
            # connection differently (services/push/public_hosts.py).
            transport = public_transport()
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=settings.timeout_s,
            follow_redirects=False,
            headers={"user-agent": USER_AGENT, "content-type": "application/json"},
        )
        self._out: list[Outgoing] = []
        # Attempts in flight, and their batches (parked at shutdown if they do not finish).
        self._sending: dict[asyncio.Task[None], Outgoing] = {}
        # Batches to park that the store refused (it was out of reach): parked next round.
        self._unparked: list[Outgoing] = []
        self._store_warned_at = -math.inf
        self._in_flight = asyncio.Semaphore(settings.max_in_flight)
        self._refreshed_at = clock.now()
        # Batches delivered since the start (tests read it; the metric counts them too).
        self.delivered = 0

    async def run_once(self) -> int:
        """One round: cuts the batches that are ready, claims replays, and makes every attempt
        that is due now, waiting for them; returns how many attempts were made."""
        started = await self._round()
        if started:
            await asyncio.gather(*started, return_exceptions=True)
        return len(started)

    async def run(self) -> None:
        """Rounds every `tick_s`, each starting the attempts due without waiting for them: a
        slow receiver holds up its own batches only."""
        while True:
            try:
                await self._round()
            except Exception:
                log.warning("webhook round failed; trying again", exc_info=True)
            await self._clock.sleep(self._settings.tick_s)

    async def _round(self) -> list[asyncio.Task[None]]:
        now = self._clock.now()
        if now - self._refreshed_at >= self._refresh_s:
            self._refreshed_at = now
            await self.events.refresh()
        await self._cut(now)
        if self._unparked:
            # Parking failed last time (the store was out of reach): again, before anything.
            unparked, self._unparked = self._unparked, []
            await self._park(unparked, now)
        try:
            claimed = await self._parked.claim(
                now, self._settings.replay_batch, self._settings.replay_lease_s
            )
        except Exception as exc:  # the store is down: replays wait, sending goes on
            self._store_failed("claim replays", exc)
            claimed = []
        for batch in claimed:
            self._out.append(
                Outgoing(
                    batch.tenant,
                    batch.batch_id,
                    batch.body,
                    batch.event_count,
                    batch.created_at,
                    replay=True,
                )
            )
        due = [o for o in self._out if o.next_at <= now]
        if not due:
            return []
        self._out = [o for o in self._out if o.next_at > now]
        started = []
        for out in due:
            task = asyncio.get_running_loop().create_task(self._send(out))
            self._sending[task] = out
            task.add_done_callback(self._sending.pop)
            started.append(task)
        return started

    async def _send(self, out: Outgoing) -> None:
        outcome = await self._attempt(out)
        await self._settle([(out, outcome)], self._clock.now())

    async def _cut(self, now: float, flush: bool = False) -> None:
        for batch in self.events.take(now, flush):
            events = await self._wanted(batch.tenant, batch.events)
            if not events:
                continue
            batch_id = batches.new_id(now, self._rng)
            self._out.append(
                Outgoing(
                    batch.tenant,
                    batch_id,
                    batches.encode(batch.tenant, batch_id, events),
                    len(events),
                    now,
                )
            )

    async def _wanted(self, tenant: str, events: list[Event]) -> list[Event]:
        if self._preferences is None:
            return events
        try:
            return await self._preferences.keep(tenant, events)
        except Exception as exc:
            # The preferences or the logs are out of reach: send them all (at least once)
            # rather than hold or lose the batch.
            self._store_failed("read webhook preferences", exc)
            return events

    async def _attempt(self, out: Outgoing) -> str:
        record = await self._settings_for(out.tenant)
        webhooks = record.webhooks
        if webhooks is None or not webhooks.enabled or not webhooks.url or not webhooks.secret:
            out.reason = "webhooks are not enabled for the tenant"
            # Events of a tenant that turned its webhooks off are not wanted any more; a
            # replay an operator asked for goes back to the parked batches.
            return _Outcome.PARK if out.replay else _Outcome.DROP
        out.attempts += 1
        if not self._settings.allow_private:
            refused = await _not_public(webhooks.url)
            if refused is not None:
                out.reason = refused
                # A DNS failure may pass; an internal host is refused until the URL changes.
                return _Outcome.RETRY if refused.startswith(_UNRESOLVED) else _Outcome.PARK
        timestamp = int(self._clock.now())
        headers = signing.headers(webhooks.secret, out.batch_id, timestamp, out.body)
        try:
            async with self._in_flight:
                response = await self._client.post(webhooks.url, content=out.body, headers=headers)
        except httpx.TimeoutException:
            out.reason = f"no answer within {self._settings.timeout_s:g} s"
            return _Outcome.RETRY
        except httpx.HTTPError as exc:
            refusal = refusal_in(exc)
            if refusal is not None:
                # The name resolved to a public address at the check above and to an internal
                # one at the connection: refused as the check refuses it.
                out.reason = _refused(refusal)
                return _Outcome.PARK
            out.reason = f"connection failed ({type(exc).__name__})"
            return _Outcome.RETRY
        status = response.status_code
        if 200 <= status < 300:
            return _Outcome.DELIVERED
        out.reason = f"HTTP {status}"
        if status >= 500 or status in _RETRIED_STATUS:
            out.next_at = self._retry_after(response)
            return _Outcome.RETRY
        out.reason += " (not retried: fix the receiver, then replay)"
        return _Outcome.PARK

    def _retry_after(self, response: httpx.Response) -> float:
        """0, or the receiver's Retry-After as an absolute time (within the cap)."""
        value = response.headers.get("retry-after", "")
        if not value:
            return 0.0
        now = self._clock.now()
        try:
            delay = float(value)
        except ValueError:
            try:
                delay = parsedate_to_datetime(value).timestamp() - now
            except (TypeError, ValueError):
                return 0.0
        return now + max(0.0, min(delay, self._settings.retry_delay_max_s))

    def _backoff(self, attempts: int) -> float:
        ceiling = min(
            self._settings.retry_delay_s * 2.0 ** (attempts - 1), self._settings.retry_delay_max_s
        )
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    async def _settle(self, results: Sequence[tuple[Outgoing, str]], now: float) -> None:
        park: list[Outgoing] = []
        replayed: dict[str, list[str]] = {}
        for out, outcome in results:
            if outcome == _Outcome.DELIVERED:
                self.delivered += 1
                if out.replay:
                    replayed.setdefault(out.tenant, []).append(out.batch_id)
                counted = "delivered"
            elif outcome == _Outcome.RETRY and out.attempts < self._settings.max_attempts:
                out.next_at = max(out.next_at, now + self._backoff(out.attempts))
                self._out.append(out)
                counted = "retried"
            elif outcome == _Outcome.RETRY:
                out.reason = f"{out.reason} after {out.attempts} attempts"
                park.append(out)
                counted = "parked"
            elif outcome == _Outcome.PARK or out.replay:  # a replay is never dropped
                park.append(out)
                counted = "parked"
            else:
                counted = "dropped"
            metrics.WEBHOOK_BATCHES.labels(counted).inc()
        for tenant, ids in replayed.items():
            try:
                await self._parked.delete(tenant, ids)
            except Exception as exc:
                # Left parked with its replay mark: sent again after the lease (at least once).
                self._store_failed("forget replayed batches", exc)
        await self._park(park, now)

    def _store_failed(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._store_warned_at >= _WARN_INTERVAL_S:
            self._store_warned_at = now
            log.warning(
                "webhook store call failed; retrying",
                extra={"action": what, "error": type(exc).__name__},
            )

    async def _park(self, outs: Sequence[Outgoing], now: float) -> None:
        if not outs:
            return
        try:
            await self._parked.park(
                [
                    ParkedBatch(
                        o.tenant,
                        o.batch_id,
                        o.body,
                        o.event_count,
                        o.attempts,
                        o.reason,
                        o.created_at,
                        now,
                    )
                    for o in outs
                ]
            )
        except Exception as exc:
            self._store_failed("park batches", exc)
            self._unparked.extend(outs)
            return
        for o in outs:
            # The tenant, never the URL or the body.
            log.warning(
                "webhook batch parked",
                extra={
                    "tenant": o.tenant,
                    "batch_id": o.batch_id,
                    "events": o.event_count,
                    "reason": o.reason,
                },
            )

    async def aclose(self) -> None:
        """Lets the attempts in flight finish and sends what is queued once more, within
        `shutdown_s`; then parks every batch not delivered (reason: the node stopped), and
        closes the HTTP client."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.shutdown_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self.events.settle()
        now = self._clock.now()
        await self._cut(now, flush=True)
        pending, self._out = self._out, []
        for out in pending:
            task = loop.create_task(self._send(out))
            self._sending[task] = out
            task.add_done_callback(self._sending.pop)
        try:
            if self._sending:
                await asyncio.wait(list(self._sending), timeout=max(0.0, deadline - loop.time()))
            unfinished = dict(self._sending)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            # Cut short, or waiting for a retry: parked, as they would be lost otherwise.
            left = [*unfinished.values(), *self._out]
            self._out = []
            for out in left:
                out.reason = f"{out.reason or 'not sent'}; the node stopped before it was sent"
            await self._park([*self._unparked, *left], now)
        finally:
            await self._client.aclose()

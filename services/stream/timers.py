"""The node's timers: heartbeats, slow consumers, token expiry, redelivery, TTL sweeps, session
leases, the broker catch-up check and status retention, all on one ticker."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping

from herald.v1 import stream_pb2
from services import metrics
from services.clock import Clock
from services.config import DeliverySettings
from services.domain import State, Transition
from services.errors import Unavailable
from services.ports import RegistryPort
from services.stream.acks import AckStore
from services.stream.hub import Hub
from services.stream.inbox_state import InboxStateStore, forget_inbox_states
from services.stream.log import LogStore
from services.stream.session import Pending, Session
from services.stream.status import StatusStore
from services.stream.status_recorder import StatusEvents
from services.stream.writer import AckDelays, Spawn

log = logging.getLogger(__name__)

_CLOSING = stream_pb2.Closing
# Expired entries removed per store call while sweeping.
_SWEEP_BATCH = 1000


class Timers:
    def __init__(
        self,
        *,
        hub: Hub,
        logs: LogStore,
        acks: AckStore,
        status: StatusStore,
        registry: RegistryPort,
        delays: AckDelays,
        settings: DeliverySettings,
        clock: Clock,
        spawn: Spawn,
        inbox_states: InboxStateStore | None = None,
        events: StatusEvents | None = None,
    ) -> None:
        self._events = events
        self._hub = hub
        self._inbox_states = inbox_states
        self._logs = logs
        self._acks = acks
        self._status = status
        self._registry = registry
        self._delays = delays
        self._settings = settings
        self._clock = clock
        self._spawn = spawn

    async def run(self) -> None:
        interval = self._settings.heartbeat_interval_s
        tick = min(1.0, interval / 2)
        last_sweep = last_lease = last_purge = last_check = self._clock.now()
        last_unavailable_log = -math.inf
        while True:
            await self._clock.sleep(tick)
            now = self._clock.now()
            try:
                self.heartbeats(now, interval)
                await self.redeliver(now)
                if now - last_sweep >= 10 * tick:
                    last_sweep = now
                    await self.sweep_expired()
                if now - last_check >= self._settings.catchup_interval_s:
                    last_check = now
                    await self.check_heads()
                if now - last_lease >= self._settings.lease_refresh_s:
                    last_lease = now
                    # A network call (in the split topology): never let it hold up the timers.
                    self._spawn(self._refresh_leases())
                if now - last_purge >= 3600.0:
                    last_purge = now
                    await self._status.purge(now - self._settings.status_retention_s)
            except Unavailable as exc:
                # A backend is down (its breaker says so, and health shows it): no traceback per
                # tick; the timers go on and catch up once it is back.
                if now - last_unavailable_log >= 60.0:
                    last_unavailable_log = now
                    log.warning("delivery timers degraded", extra={"reason": exc.message})
            except Exception:
                log.exception("delivery timer failed; continuing")

    def heartbeats(self, now: float, interval: float) -> None:
        # A stalled write is real I/O: measured on the monotonic clock, not the injected one.
        stalled_since = time.monotonic() - self._settings.write_timeout_s
        # Tokens expire in wall-clock time, as they were verified.
        wall = time.time()
        for session in self._hub.sessions.values():
            started = session.write_started_at
            if started and started < stalled_since:
                self._slow_consumer(session)
            elif session.expires_at <= wall:
                session.close(
                    _CLOSING.REASON_TOKEN_EXPIRED,
                    "the token has expired; reconnect with a fresh token and your cursors",
                )
            elif now - session.last_write_at >= interval and not session.heartbeat_due:
                session.heartbeat_due = True
                session.wakeup.set()

    def _slow_consumer(self, session: Session) -> None:
        """A write that has not completed: the client is not reading. Cancel the stream; the
        client resumes from its cursor and nothing is lost (the entries stay in the log)."""
        metrics.SLOW_CONSUMERS.inc()
        log.info("closing slow consumer", extra={"session_id": session.session_id})
        session.write_started_at = 0.0
        session.stalled = True
        if session.task is not None:
            session.task.cancel()

    async def redeliver(self, now: float) -> None:
        failed: dict[str, list[Transition]] = {}
        max_attempts = self._settings.max_attempts
        shortest = self._delays.shortest
        requeued = 0
        for session in list(self._hub.sessions.values()):
            if not session.unacked:
                continue
            due = session.due(now, shortest)
            if not due:
                continue
            await self._refresh_acks(session, due)
            for pending in due:
                entry = pending.entry
                if entry.expires_at <= now or pending.log.acks.is_acked(entry.cursor):
                    continue
                if pending.attempt >= max_attempts:
                    failed.setdefault(session.tenant, []).append(
                        Transition(
                            entry.notification_id,
                            session.user_id,
                            State.FAILED,
                            f"no ack after {pending.attempt} attempts; kept for the next connect",
                        )
                    )
                    continue
                session.requeue(pending)
                requeued += 1
        if requeued:
            metrics.REDELIVERIES.inc(requeued)
        for tenant, transitions in failed.items():
            metrics.FAILED.inc(len(transitions))
            self._notify(tenant, transitions, now)
            await self._status.apply(tenant, transitions, now)

    def _notify(
        self,
        tenant: str,
        transitions: list[Transition],
        now: float,
        notifications: Mapping[str, bytes] | None = None,
    ) -> None:
        # The state changes the timers make, to the webhooks' queues (status_recorder.py).
        events = self._events
        if events is not None and events.wants(tenant):
            events.transitions(tenant, transitions, now, notifications)

    async def _refresh_acks(self, session: Session, due: list[Pending]) -> None:
        """Before redelivering, learns what the user acked through other nodes (acks stop
        timers only on the node that took them): one store call per session with entries due,
        which the ack timeout makes rare. Without the store, the session's own view decides."""
        logs = {pending.log.log_key: pending.log for pending in due}
        keys = list(logs)
        try:
            stored = await self._acks.get(session.tenant, session.user_id, keys)
        except Exception as exc:  # never lose the due entries over it
            if not isinstance(exc, Unavailable):
                log.warning("could not read acks before redelivering", extra={"error": repr(exc)})
            return
        for key, state in zip(keys, stored, strict=True):
            logs[key].acks.merge(state)

    async def sweep_expired(self) -> int:
        """Drops expired entries from every log and marks them EXPIRED for their recipients."""
        now = self._clock.now()
        count = 0
        while True:
            swept = await self._logs.drop_expired(now, _SWEEP_BATCH)
            batch = 0
            # Per tenant, the entries of users' own logs: their inbox states go, one call each.
            left: dict[str, list[tuple[str, str]]] = {}
            for tenant, key, entries in swept:
                transitions: list[Transition] = []
                for entry in entries:
                    if key.is_user:
                        users: list[str] = [key.name]
                    else:
                        record = await self._status.get(tenant, entry.notification_id)
                        users = [] if record is None else list(record.recipients)
                    transitions.extend(
                        Transition(entry.notification_id, u, State.EXPIRED, "ttl") for u in users
                    )
                if transitions:
                    # Swept: the store no longer holds them, the webhook events carry them.
                    self._notify(
                        tenant,
                        transitions,
                        now,
                        {e.notification_id: e.notification_field for e in entries},
                    )
                    await self._status.apply(tenant, transitions, now)
                if key.is_user:
                    left.setdefault(tenant, []).extend(
                        (key.name, e.notification_id) for e in entries
                    )
                batch += len(entries)
            if self._inbox_states is not None:
                for tenant, gone in left.items():
                    await forget_inbox_states(self._inbox_states, tenant, gone)
            count += batch
            if batch < _SWEEP_BATCH:
                break
        if count:
            metrics.EXPIRED.inc(count)
        return count

    async def check_heads(self) -> int:
        """Reads the head of every log a session here reads (one call per tenant): a session
        whose log moved on without a publication reaching this node reads the log."""
        behind = 0
        for tenant, keys in list(self._hub.open_logs()):
            heads = await self._logs.heads(tenant, keys)
            behind += self._hub.check_heads(tenant, keys, heads)
        if behind:
            metrics.CATCHUPS.inc(behind)
        return behind

    async def _refresh_leases(self) -> None:
        try:
            await self._refresh_leases_once()
        except Unavailable as exc:
            log.warning(
                "could not refresh session leases; will retry", extra={"reason": exc.message}
            )
        except Exception:
            log.warning("could not refresh session leases; will retry", exc_info=True)

    async def _refresh_leases_once(self) -> None:
        by_tenant: dict[str, list[str]] = {}
        for session in self._hub.sessions.values():
            by_tenant.setdefault(session.tenant, []).append(session.session_id)
        for tenant, ids in by_tenant.items():
            for unknown in await self._registry.heartbeat(tenant, ids):
                gone = self._hub.sessions.get(unknown)
                if gone is not None:
                    gone.close(
                        _CLOSING.REASON_DISCONNECTED, "the registry no longer knows this session"
                    )

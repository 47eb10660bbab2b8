"""Each node's copy of the tenant settings it uses, read from the registry and kept `ttl_s`.

Invariants:

- A lookup never returns settings read longer than `ttl_s` ago while the source answers: an
  older entry is read again first (one read per tenant at a time; concurrent lookups wait for
  it). So a change stored anywhere is in force on every node within `ttl_s` (plus one read).
- A change made through this node's own registry core is in force here at once (`store`).
- The source failing never fails the lookup: the last settings read stay in force (or, for a
  tenant never read, none: the node's defaults), and the source is asked again after
  `retry_s`, not on every call.
- At most `max_tenants` entries are kept, the least recently used dropped first.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from typing import Final, Protocol

from services.clock import Clock
from services.domain import TenantSettingsRecord

log = logging.getLogger(__name__)

_WARN_INTERVAL_S: Final = 60.0


class TenantSettingsSource(Protocol):
    """Where a node reads tenant settings: the registry core, or the registry over gRPC."""

    async def tenant_settings(self, tenant: str) -> TenantSettingsRecord | None:
        """The stored settings, or None when none were ever stored."""
        ...


class TenantSettingsCache:
    def __init__(
        self,
        source: TenantSettingsSource,
        clock: Clock,
        ttl_s: float,
        *,
        retry_s: float = 1.0,
        max_tenants: int = 10_000,
    ) -> None:
        self._source = source
        self._clock = clock
        self._ttl_s = ttl_s
        self._retry_s = min(retry_s, ttl_s)
        self._max_tenants = max_tenants
        # tenant -> (settings, when they are to be read again)
        self._entries: OrderedDict[str, tuple[TenantSettingsRecord, float]] = OrderedDict()
        self._reading: dict[str, asyncio.Future[TenantSettingsRecord]] = {}
        self._warned_at = -math.inf

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    async def get(self, tenant: str) -> TenantSettingsRecord:
        """The tenant's settings (version 0 and nothing set when it has none)."""
        entry = self._entries.get(tenant)
        if entry is not None and self._clock.now() < entry[1]:
            self._entries.move_to_end(tenant)
            return entry[0]
        reading = self._reading.get(tenant)
        if reading is None:
            reading = self._reading[tenant] = asyncio.ensure_future(self._read(tenant))
            reading.add_done_callback(lambda _: self._reading.pop(tenant, None))
        # Shielded: a caller cancelled while waiting must not cancel the others' read.
        return await asyncio.shield(reading)

    def store(self, settings: TenantSettingsRecord) -> None:
        """Puts settings just stored through this node in force here at once."""
        current = self._entries.get(settings.tenant)
        if current is not None and current[0].version > settings.version:
            return
        self._keep(settings, self._clock.now() + self._ttl_s)

    async def _read(self, tenant: str) -> TenantSettingsRecord:
        try:
            found = await self._source.tenant_settings(tenant)
        except Exception as exc:  # any failure of the source keeps what was read last
            self._warn(tenant, exc)
            entry = self._entries.get(tenant)
            kept = entry[0] if entry is not None else TenantSettingsRecord(tenant)
            self._keep(kept, self._clock.now() + self._retry_s)
            return kept
        settings = found if found is not None else TenantSettingsRecord(tenant)
        current = self._entries.get(tenant)
        if current is not None and current[0].version > settings.version:
            settings = current[0]  # stored here meanwhile (`store`): newer than what was read
        self._keep(settings, self._clock.now() + self._ttl_s)
        return settings

    def _keep(self, settings: TenantSettingsRecord, until: float) -> None:
        self._entries[settings.tenant] = (settings, until)
        self._entries.move_to_end(settings.tenant)
        while len(self._entries) > self._max_tenants:
            self._entries.popitem(last=False)

    def _warn(self, tenant: str, exc: Exception) -> None:
        now = self._clock.now()
        if now - self._warned_at < _WARN_INTERVAL_S:
            return
        self._warned_at = now
        log.warning(
            "tenant settings could not be read; the last ones read stay in force",
            extra={"tenant": tenant, "error": type(exc).__name__, "retry_s": self._retry_s},
        )

"""Registry logic: session leases, presence states and disconnects, independent of gRPC."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from services.bounds import (
    MAX_ADDRESS_LEN,
    MAX_CHANNEL_LEN,
    MAX_DEVICE_LEN,
    MAX_ID_LEN,
    MAX_REASON_LEN,
    MAX_TEMPLATE_ID_LEN,
    check_count,
    check_each,
    check_id,
    check_length,
    quote,
)
from services.clock import Clock
from services.config import RegistrySettings
from services.domain import SessionInfo, TemplateRecord, TenantSettingsRecord
from services.errors import InvalidArgument, NotFound, ResourceExhausted
from services.ingest.rendering import check as check_template
from services.ports import NodePort
from services.registry.sessions import SessionDirectory
from services.registry.templates import TemplateStore
from services.registry.tenant_settings import (
    DEFAULT_PAGE,
    MAX_PAGE,
    TenantSettingsStore,
    VersionConflict,
    check_settings,
    empty,
)
from services.registry.tenant_settings_memory import MemoryTenantSettingsStore

log = logging.getLogger(__name__)

# The least time between two sweeps of expired session leases.
_SWEEP_INTERVAL_S = 1.0
# An unconditional put is a read and a conditional put (so the change it reports is exact),
# tried again this many times when another put came between.
_PUT_ATTEMPTS = 5


class Presence(IntEnum):
    """Mirrors herald.v1.PresenceState."""

    ONLINE = 1
    OFFLINE = 2
    RECONNECTING = 3


@dataclass(frozen=True, slots=True)
class PresenceView:
    user_id: str
    state: Presence
    sessions: int
    since: float


class RegistryCore:
    """Sessions and presence. Presence: ONLINE with at least one session; RECONNECTING for
    `presence_grace_s` after the last one closed; OFFLINE after that (or if never seen)."""

    def __init__(
        self,
        directory: SessionDirectory,
        templates: TemplateStore,
        settings: RegistrySettings,
        clock: Clock,
        node_for: Callable[[SessionInfo], NodePort | None],
        tenant_settings: TenantSettingsStore | None = None,
    ) -> None:
        self._directory = directory
        self._templates = templates
        self._tenant_settings = tenant_settings or MemoryTenantSettingsStore()
        self._settings_watchers: list[Callable[[TenantSettingsRecord], None]] = []
        self._settings = settings
        self._clock = clock
        self._node_for = node_for
        self._swept_at = -math.inf

    @property
    def lease_seconds(self) -> int:
        return self._settings.session_lease_s

    async def register(self, session: SessionInfo) -> None:
        if not session.session_id or not session.user_id or not session.tenant:
            raise InvalidArgument("session_id, tenant_id and user_id are required")
        check_length(session.session_id, MAX_ID_LEN, "session_id")
        check_length(session.user_id, MAX_ID_LEN, "user_id")
        check_length(session.node_id, MAX_ID_LEN, "node_id")
        check_length(session.node_address, MAX_ADDRESS_LEN, "node_address")
        check_length(session.device, MAX_DEVICE_LEN, "device")
        check_each(session.channels, MAX_CHANNEL_LEN, "channels")
        now = self._clock.now()
        session.connected_at = session.connected_at or now
        session.last_seen_at = now
        # Sessions of a node that died hold the user's slots until their lease runs out:
        # sweep them first, so they never lock the user out.
        await self.expire_stale()
        if not await self._directory.add(session, self._settings.max_sessions_per_user):
            raise ResourceExhausted(
                f"user {quote(session.user_id)} already has {self._settings.max_sessions_per_user} "
                "open sessions; close one (or raise HERALD_REGISTRY_MAX_SESSIONS_PER_USER)"
            )

    async def heartbeat(self, tenant: str, session_ids: list[str]) -> list[str]:
        check_each(session_ids, MAX_ID_LEN, "session_ids")
        return await self._directory.touch(tenant, session_ids, self._clock.now())

    async def unregister(self, tenant: str, session_id: str) -> None:
        check_length(session_id, MAX_ID_LEN, "session_id")
        await self._directory.remove(tenant, session_id, self._clock.now())

    async def presence(self, tenant: str, user_ids: list[str]) -> list[PresenceView]:
        if not user_ids:
            raise InvalidArgument("user_ids must name at least one user")
        check_count(user_ids, "user_ids")
        if any(not u for u in user_ids):
            raise InvalidArgument("user_ids must not contain an empty user id")
        check_each(user_ids, MAX_ID_LEN, "user_ids")
        await self.expire_stale()
        now = self._clock.now()
        views = []
        for record in await self._directory.presence(tenant, user_ids):
            if record.sessions:
                views.append(
                    PresenceView(
                        record.user_id, Presence.ONLINE, record.sessions, record.online_since
                    )
                )
            elif (
                record.last_left_at and now - record.last_left_at < self._settings.presence_grace_s
            ):
                views.append(
                    PresenceView(record.user_id, Presence.RECONNECTING, 0, record.last_left_at)
                )
            else:
                views.append(PresenceView(record.user_id, Presence.OFFLINE, 0, record.last_left_at))
        return views

    async def sessions(self, tenant: str, user_id: str = "") -> list[SessionInfo]:
        check_length(user_id, MAX_ID_LEN, "user_id")
        await self.expire_stale()
        return await self._directory.list(tenant, user_id)

    async def disconnect(self, tenant: str, session_id: str, user_id: str, reason: str) -> int:
        """Asks the nodes holding the sessions to close them."""
        if not session_id and not user_id:
            raise InvalidArgument("name a session_id or a user_id to disconnect")
        check_length(session_id, MAX_ID_LEN, "session_id")
        check_length(user_id, MAX_ID_LEN, "user_id")
        check_length(reason, MAX_REASON_LEN, "reason")
        sessions = await self._directory.list(tenant, user_id)
        if session_id:
            sessions = [s for s in sessions if s.session_id == session_id]
        closed = 0
        by_node: dict[str, list[SessionInfo]] = {}
        for session in sessions:
            by_node.setdefault(session.node_id, []).append(session)
        for node_sessions in by_node.values():
            node = self._node_for(node_sessions[0])
            if node is None:
                continue
            closed += await node.close_sessions(
                tenant, [s.session_id for s in node_sessions], "", reason
            )
        return closed

    async def change_channels(
        self, tenant: str, session_id: str, join: list[str], leave: list[str]
    ) -> list[str]:
        """Asks the session's node to join or leave channels; returns the session's channels."""
        check_id(session_id, "session_id")
        for channel in (*join, *leave):
            check_id(channel, "channel", MAX_CHANNEL_LEN)
        session = next(
            (s for s in await self._directory.list(tenant) if s.session_id == session_id), None
        )
        node = None if session is None else self._node_for(session)
        channels = None
        if session is not None and node is not None:
            channels = await node.change_channels(tenant, session_id, join, leave)
        if session is None or channels is None:
            raise NotFound(f"no open session {quote(session_id)} in this tenant")
        await self._directory.set_channels(tenant, session_id, tuple(channels))
        return channels

    # -- templates -------------------------------------------------------------------------

    async def put_template(self, tenant: str, template: TemplateRecord) -> TemplateRecord:
        check_template(template)
        return await self._templates.put(
            tenant, dataclasses.replace(template, created_at=self._clock.now())
        )

    async def get_template(
        self, tenant: str, template_id: str, version: int = 0
    ) -> TemplateRecord | None:
        return await self._templates.get(tenant, template_id, version)

    async def template(self, tenant: str, template_id: str, version: int = 0) -> TemplateRecord:
        check_id(template_id, "template_id", MAX_TEMPLATE_ID_LEN)
        found = await self._templates.get(tenant, template_id, version)
        if found is None:
            which = f"version {version} of " if version else ""
            raise NotFound(f"no {which}template {quote(template_id)} in this tenant")
        return found

    async def templates(self, tenant: str) -> list[TemplateRecord]:
        return await self._templates.list(tenant)

    async def delete_template(self, tenant: str, template_id: str) -> int:
        check_id(template_id, "template_id", MAX_TEMPLATE_ID_LEN)
        deleted = await self._templates.delete(tenant, template_id)
        if not deleted:
            raise NotFound(f"no template {quote(template_id)} in this tenant")
        return deleted

    # -- tenant settings -------------------------------------------------------------------

    def watch_tenant_settings(self, watcher: Callable[[TenantSettingsRecord], None]) -> None:
        """Calls `watcher` with the settings each put or reset through this core stored."""
        self._settings_watchers.append(watcher)

    async def tenant_settings(self, tenant: str) -> TenantSettingsRecord | None:
        """The stored settings, None when there are none (a TenantSettingsSource)."""
        return await self._tenant_settings.get(tenant)

    async def get_tenant_settings(self, tenant: str) -> TenantSettingsRecord:
        """The stored settings, or empty ones at version 0."""
        return await self._tenant_settings.get(tenant) or empty(tenant)

    async def put_tenant_settings(
        self, settings: TenantSettingsRecord, expected_version: int | None, actor: str
    ) -> tuple[TenantSettingsRecord, TenantSettingsRecord]:
        """Replaces the tenant's settings (see TenantSettingsStore.put); returns the settings
        before and after.

        Raises:
            InvalidArgument: a value is out of its bounds (the message names the field).
            VersionConflict: `expected_version` is not the stored version (ABORTED).
        """
        check_settings(settings)
        stamped = dataclasses.replace(settings, updated_at=self._clock.now(), updated_by=actor)
        for attempt in range(1, _PUT_ATTEMPTS + 1):
            before = await self.get_tenant_settings(settings.tenant)
            if expected_version is not None and expected_version != before.version:
                raise VersionConflict(settings.tenant, expected_version, before.version)
            try:
                stored = await self._tenant_settings.put(stamped, before.version)
            except VersionConflict:
                if expected_version is not None or attempt == _PUT_ATTEMPTS:
                    raise
                continue
            for watcher in self._settings_watchers:
                watcher(stored)
            return before, stored
        raise AssertionError("unreachable")

    async def list_tenant_settings(
        self, after: str, limit: int
    ) -> tuple[list[TenantSettingsRecord], str]:
        """A page of every tenant's stored settings, and the token of the next page ("")."""
        check_length(after, MAX_ID_LEN, "page_token")
        if limit > MAX_PAGE:
            raise InvalidArgument(f"page_size must be at most {MAX_PAGE}")
        limit = limit or DEFAULT_PAGE
        page = await self._tenant_settings.list(after, limit + 1)
        if len(page) > limit:
            return page[:limit], page[limit - 1].tenant
        return page, ""

    async def expire_stale(self) -> None:
        """Drops sessions whose lease ran out. A sweep covers every tenant, so it runs at most
        once a second however many presence and session queries come in."""
        now = self._clock.now()
        if now - self._swept_at < _SWEEP_INTERVAL_S:
            return
        self._swept_at = now
        for session in await self._directory.expire(now - self._settings.session_lease_s, now):
            log.info(
                "session lease expired",
                extra={"tenant": session.tenant, "session_id": session.session_id},
            )

"""TenantSettingsStore in process memory."""

from __future__ import annotations

import builtins
import dataclasses

from services.domain import TenantSettingsRecord
from services.registry.tenant_settings import DEFAULT_PAGE, VersionConflict


class MemoryTenantSettingsStore:
    def __init__(self) -> None:
        self._settings: dict[str, TenantSettingsRecord] = {}

    async def get(self, tenant: str) -> TenantSettingsRecord | None:
        return self._settings.get(tenant)

    async def put(
        self, settings: TenantSettingsRecord, expected_version: int | None = None
    ) -> TenantSettingsRecord:
        current = self._settings.get(settings.tenant)
        version = 0 if current is None else current.version
        if expected_version is not None and expected_version != version:
            raise VersionConflict(settings.tenant, expected_version, version)
        stored = dataclasses.replace(settings, version=version + 1)
        self._settings[settings.tenant] = stored
        return stored

    async def list(
        self, after: str = "", limit: int = DEFAULT_PAGE
    ) -> builtins.list[TenantSettingsRecord]:
        tenants = sorted(t for t in self._settings if t > after)[:limit]
        return [self._settings[t] for t in tenants]

    async def aclose(self) -> None:
        return None

"""PreferenceStore in process memory."""

from __future__ import annotations

from collections.abc import Sequence

from services.preferences.store import UserPreferences


class MemoryPreferenceStore:
    def __init__(self) -> None:
        # tenant -> user -> preferences
        self._tenants: dict[str, dict[str, UserPreferences]] = {}

    async def get(self, tenant: str, user_id: str) -> UserPreferences | None:
        return self._tenants.get(tenant, {}).get(user_id)

    async def put(self, tenant: str, preferences: UserPreferences) -> UserPreferences:
        stored = UserPreferences(
            preferences.user_id,
            preferences.defaults,
            dict(preferences.categories),
            preferences.updated_at,
        )
        self._tenants.setdefault(tenant, {})[preferences.user_id] = stored
        return stored

    async def load(self, tenant: str, user_ids: Sequence[str]) -> dict[str, UserPreferences]:
        users = self._tenants.get(tenant)
        if not users:
            return {}
        return {u: users[u] for u in user_ids if u in users}

    async def has_any(self, tenant: str) -> bool:
        return bool(self._tenants.get(tenant))

    async def aclose(self) -> None:
        return None

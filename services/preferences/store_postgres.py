"""PreferenceStore in PostgreSQL: a row per (tenant, user), the choices as JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

import asyncpg

from services.preferences.store import Choice, DeliveryPath, UserPreferences

_PUT: Final = """
INSERT INTO herald_preferences (tenant_id, user_id, defaults, categories, updated_at)
VALUES ($1, $2, $3::jsonb, $4::jsonb, $5)
ON CONFLICT (tenant_id, user_id) DO UPDATE SET
    defaults = excluded.defaults, categories = excluded.categories,
    updated_at = excluded.updated_at
"""

_GET: Final = """
SELECT user_id, defaults::text, categories::text, updated_at FROM herald_preferences
WHERE tenant_id = $1 AND user_id = $2
"""

_LOAD: Final = """
SELECT user_id, defaults::text, categories::text, updated_at FROM herald_preferences
WHERE tenant_id = $1 AND user_id = ANY($2::text[])
"""

_HAS_ANY: Final = "SELECT EXISTS (SELECT 1 FROM herald_preferences WHERE tenant_id = $1)"


def _choice_doc(choice: Choice) -> dict[str, bool]:
    return {p.value: v for p in DeliveryPath if (v := choice.on(p)) is not None}


def _choice(doc: Mapping[str, Any]) -> Choice:
    return Choice(doc.get("in_app"), doc.get("push"), doc.get("webhook"))


def _record(row: asyncpg.Record) -> UserPreferences:
    user_id, defaults, categories, updated_at = row
    return UserPreferences(
        user_id,
        _choice(json.loads(defaults)),
        {name: _choice(doc) for name, doc in json.loads(categories).items()},
        updated_at,
    )


class PostgresPreferenceStore:
    """Preferences in PostgreSQL, on a pool it shares and does not close."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def get(self, tenant: str, user_id: str) -> UserPreferences | None:
        row = await self._pool.fetchrow(_GET, tenant, user_id)
        return None if row is None else _record(row)

    async def put(self, tenant: str, preferences: UserPreferences) -> UserPreferences:
        await self._pool.execute(
            _PUT,
            tenant,
            preferences.user_id,
            json.dumps(_choice_doc(preferences.defaults)),
            json.dumps({n: _choice_doc(c) for n, c in preferences.categories.items()}),
            preferences.updated_at,
        )
        return UserPreferences(
            preferences.user_id,
            preferences.defaults,
            dict(preferences.categories),
            preferences.updated_at,
        )

    async def load(self, tenant: str, user_ids: Sequence[str]) -> dict[str, UserPreferences]:
        if not user_ids:
            return {}
        rows = await self._pool.fetch(_LOAD, tenant, list(dict.fromkeys(user_ids)))
        return {row[0]: _record(row) for row in rows}

    async def has_any(self, tenant: str) -> bool:
        return bool(await self._pool.fetchval(_HAS_ANY, tenant))

    async def aclose(self) -> None:
        # The pool belongs to whoever made it (services.postgres.PostgresBackend).
        return None

"""TemplateStore in PostgreSQL: a row per version, the locales as jsonb."""

from __future__ import annotations

import builtins
import json
from typing import Any, Final

import asyncpg

from services.domain import TemplateAction, TemplateRecord, TemplateText

# Two puts of one template at once both pick the same next version; the loser tries again.
_PUT_ATTEMPTS: Final = 5

_PUT: Final = """
INSERT INTO herald_templates
    (tenant_id, template_id, version, default_locale, locales, created_at)
SELECT $1, $2, coalesce(max(version), 0) + 1, $3, $4::jsonb, $5
FROM herald_templates
WHERE tenant_id = $1 AND template_id = $2
RETURNING version
"""

_GET_NEWEST: Final = """
SELECT template_id, version, default_locale, locales::text, created_at FROM herald_templates
WHERE tenant_id = $1 AND template_id = $2
ORDER BY version DESC
LIMIT 1
"""

_GET_VERSION: Final = """
SELECT template_id, version, default_locale, locales::text, created_at FROM herald_templates
WHERE tenant_id = $1 AND template_id = $2 AND version = $3
"""

_LIST: Final = """
SELECT DISTINCT ON (template_id)
    template_id, version, default_locale, locales::text, created_at
FROM herald_templates
WHERE tenant_id = $1
ORDER BY template_id, version DESC
"""

_DELETE: Final = """
WITH gone AS (
    DELETE FROM herald_templates WHERE tenant_id = $1 AND template_id = $2 RETURNING 1
)
SELECT count(*) FROM gone
"""


def _encode(locales: dict[str, TemplateText]) -> str:
    return json.dumps(
        {
            locale: {
                "title": text.title,
                "body": text.body,
                "image_url": text.image_url,
                "actions": [
                    {"action_id": a.action_id, "label": a.label, "url": a.url} for a in text.actions
                ],
            }
            for locale, text in locales.items()
        }
    )


def _text(stored: dict[str, Any]) -> TemplateText:
    return TemplateText(
        title=stored["title"],
        body=stored["body"],
        image_url=stored["image_url"],
        actions=tuple(
            TemplateAction(a["action_id"], a["label"], a["url"]) for a in stored["actions"]
        ),
    )


def _record(row: asyncpg.Record) -> TemplateRecord:
    template_id, version, default_locale, locales, created_at = row
    decoded: dict[str, dict[str, Any]] = json.loads(locales)
    return TemplateRecord(
        template_id,
        version,
        default_locale,
        {locale: _text(text) for locale, text in decoded.items()},
        created_at,
    )


class PostgresTemplateStore:
    """Templates in PostgreSQL, on a pool it shares and does not close."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def put(self, tenant: str, template: TemplateRecord) -> TemplateRecord:
        locales = _encode(template.locales)
        for attempt in range(1, _PUT_ATTEMPTS + 1):
            try:
                version = await self._pool.fetchval(
                    _PUT,
                    tenant,
                    template.template_id,
                    template.default_locale,
                    locales,
                    template.created_at,
                )
            except asyncpg.UniqueViolationError:
                if attempt == _PUT_ATTEMPTS:
                    raise
                continue
            return TemplateRecord(
                template.template_id,
                int(version),
                template.default_locale,
                dict(template.locales),
                template.created_at,
            )
        raise AssertionError("unreachable")

    async def get(self, tenant: str, template_id: str, version: int = 0) -> TemplateRecord | None:
        if version == 0:
            row = await self._pool.fetchrow(_GET_NEWEST, tenant, template_id)
        else:
            row = await self._pool.fetchrow(_GET_VERSION, tenant, template_id, version)
        return None if row is None else _record(row)

    async def list(self, tenant: str) -> builtins.list[TemplateRecord]:
        return [_record(row) for row in await self._pool.fetch(_LIST, tenant)]

    async def delete(self, tenant: str, template_id: str) -> int:
        return int(await self._pool.fetchval(_DELETE, tenant, template_id))

    async def aclose(self) -> None:
        # The pool belongs to whoever made it (services.postgres.PostgresBackend).
        return None

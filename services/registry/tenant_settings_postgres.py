"""TenantSettingsStore in PostgreSQL: a row per tenant, the settings as jsonb."""

from __future__ import annotations

import builtins
import dataclasses
import json
from typing import Any, Final

import asyncpg

from services.domain import (
    RATE_LIMIT_FIELDS,
    PushFallback,
    RateLimitOverrides,
    StreamPolicy,
    TenantSettingsRecord,
    Webhooks,
)
from services.registry.tenant_settings import DEFAULT_PAGE, SEND_FIELDS, VersionConflict
from services.secrets_at_rest import SecretBox

_SEND_FIELDS: Final = tuple(name for name, _, _ in SEND_FIELDS)
# The write-only fields, encrypted at rest with HERALD_SECRETS_KEYS (services/secrets_at_rest.py).
_PUSH_SECRETS: Final = ("fcm_service_account_json", "apns_private_key_p8", "vapid_private_key")
_WEBHOOK_SECRETS: Final = ("secret",)
_PLAIN: Final = SecretBox()

_UPSERT: Final = """
INSERT INTO herald_tenant_settings (tenant_id, version, settings, updated_at, updated_by)
VALUES ($1, 1, $2::jsonb, $3, $4)
ON CONFLICT (tenant_id) DO UPDATE
SET version = herald_tenant_settings.version + 1, settings = excluded.settings,
    updated_at = excluded.updated_at, updated_by = excluded.updated_by
RETURNING version
"""

_CREATE: Final = """
INSERT INTO herald_tenant_settings (tenant_id, version, settings, updated_at, updated_by)
VALUES ($1, 1, $2::jsonb, $3, $4)
ON CONFLICT (tenant_id) DO NOTHING
RETURNING version
"""

_REPLACE: Final = """
UPDATE herald_tenant_settings
SET version = version + 1, settings = $2::jsonb, updated_at = $3, updated_by = $4
WHERE tenant_id = $1 AND version = $5
RETURNING version
"""

_COLUMNS: Final = "tenant_id, version, settings::text, updated_at, updated_by"
_GET: Final = f"SELECT {_COLUMNS} FROM herald_tenant_settings WHERE tenant_id = $1"  # noqa: S608
_VERSION: Final = "SELECT version FROM herald_tenant_settings WHERE tenant_id = $1"
_LIST: Final = (
    f"SELECT {_COLUMNS} FROM herald_tenant_settings"  # noqa: S608 - constants only
    " WHERE tenant_id > $1 ORDER BY tenant_id LIMIT $2"
)


def encode(settings: TenantSettingsRecord, box: SecretBox = _PLAIN) -> str:
    """The jsonb document of `settings`: only the fields that are set, secrets sealed by
    `box`."""
    limits = {
        name: getattr(settings.rate_limits, name)
        for name in RATE_LIMIT_FIELDS
        if getattr(settings.rate_limits, name) is not None
    }
    policy = settings.stream_policy
    document: dict[str, Any] = {
        "rate_limits": limits,
        "stream_policy": None if policy is None else dataclasses.asdict(policy),
    }
    for name in _SEND_FIELDS:
        if getattr(settings, name) is not None:
            document[name] = getattr(settings, name)
    tenant = settings.tenant
    if settings.push_fallback is not None:
        push = dataclasses.asdict(settings.push_fallback)
        for name in _PUSH_SECRETS:
            push[name] = box.seal(push[name], tenant, f"push_fallback.{name}")
        document["push_fallback"] = push
    if settings.webhooks is not None:
        hooks = dataclasses.asdict(settings.webhooks)
        for name in _WEBHOOK_SECRETS:
            hooks[name] = box.seal(hooks[name], tenant, f"webhooks.{name}")
        document["webhooks"] = hooks
    return json.dumps(document)


def decode(row: asyncpg.Record, box: SecretBox = _PLAIN) -> TenantSettingsRecord:
    tenant, version, document, updated_at, updated_by = row
    stored: dict[str, Any] = json.loads(document)
    for section, names in (("push_fallback", _PUSH_SECRETS), ("webhooks", _WEBHOOK_SECRETS)):
        values: dict[str, Any] = stored.get(section) or {}
        for name in names:
            if isinstance(values.get(name), str):
                values[name] = box.open(values[name], tenant, f"{section}.{name}")
    limits = {k: v for k, v in stored.get("rate_limits", {}).items() if k in RATE_LIMIT_FIELDS}
    for name, value in limits.items():
        limits[name] = float(value) if name.endswith("_rate") else int(value)
    policy = stored.get("stream_policy")
    push = stored.get("push_fallback")
    push_fields = {f.name for f in dataclasses.fields(PushFallback)}
    hooks = stored.get("webhooks")
    hook_fields = {f.name for f in dataclasses.fields(Webhooks)}
    return TenantSettingsRecord(
        tenant,
        int(version),
        RateLimitOverrides(**limits),
        None
        if policy is None
        else StreamPolicy(
            compression=tuple(policy.get("compression", ())),
            compression_min_bytes=int(policy.get("compression_min_bytes", 0)),
            signing_required=bool(policy.get("signing_required", False)),
            allowed_formats=tuple(policy.get("allowed_formats", ())),
        ),
        float(updated_at),
        updated_by,
        **{name: int(stored[name]) for name in _SEND_FIELDS if stored.get(name) is not None},
        push_fallback=(
            None
            if push is None
            else PushFallback(**{k: v for k, v in push.items() if k in push_fields})
        ),
        webhooks=(
            None
            if hooks is None
            else dataclasses.replace(
                Webhooks(**{k: v for k, v in hooks.items() if k in hook_fields}),
                events=tuple(hooks.get("events", ())),
            )
        ),
    )


class PostgresTenantSettingsStore:
    """Tenant settings in PostgreSQL, on a pool it shares and does not close."""

    def __init__(self, pool: asyncpg.Pool, box: SecretBox = _PLAIN) -> None:
        self._pool = pool
        # Seals and opens the tenants' secrets (services/secrets_at_rest.py).
        self._box = box

    async def get(self, tenant: str) -> TenantSettingsRecord | None:
        row = await self._pool.fetchrow(_GET, tenant)
        return None if row is None else decode(row, self._box)

    async def put(
        self, settings: TenantSettingsRecord, expected_version: int | None = None
    ) -> TenantSettingsRecord:
        values = (
            settings.tenant,
            encode(settings, self._box),
            settings.updated_at,
            settings.updated_by,
        )
        if expected_version is None:
            version = await self._pool.fetchval(_UPSERT, *values)
        elif expected_version == 0:
            version = await self._pool.fetchval(_CREATE, *values)
        else:
            version = await self._pool.fetchval(_REPLACE, *values, expected_version)
        if version is None:
            current = await self._pool.fetchval(_VERSION, settings.tenant)
            raise VersionConflict(settings.tenant, expected_version or 0, int(current or 0))
        return dataclasses.replace(settings, version=int(version))

    async def list(
        self, after: str = "", limit: int = DEFAULT_PAGE
    ) -> builtins.list[TenantSettingsRecord]:
        return [decode(row, self._box) for row in await self._pool.fetch(_LIST, after, limit)]

    async def aclose(self) -> None:
        # The pool belongs to whoever made it (services.postgres.PostgresBackend).
        return None

-- Tenant settings (services/registry/tenant_settings.py): one row per tenant that ever stored
-- any, replaced whole by each put. `version` grows by one with every put and is never reused (a
-- reset stores empty settings), so a conditional put compares it. The settings are jsonb:
-- {"rate_limits": {"tenant_send_rate": 100, ...}, "stream_policy": {...} or null}, with only
-- the fields that are set, so a field added later needs no migration.
CREATE TABLE herald_tenant_settings (
    tenant_id text COLLATE "C" PRIMARY KEY,
    version bigint NOT NULL CHECK (version > 0),
    settings jsonb NOT NULL,
    updated_at double precision NOT NULL,
    updated_by text NOT NULL
);

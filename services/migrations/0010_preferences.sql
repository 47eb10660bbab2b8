-- Notification preferences (services/preferences/store.py, docs/preferences.md): one row per
-- user who stored any, replaced whole. `defaults` and each value of `categories` hold only the
-- paths the user set, e.g. {"in_app": false}; a path left out follows the default (on).
-- A send reads the rows of its recipients in one statement (the primary key); a tenant with no
-- row costs its sends one cached existence check (services/preferences/gate.py).
CREATE TABLE herald_preferences (
    tenant_id text COLLATE "C" NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    defaults jsonb NOT NULL DEFAULT '{}',
    categories jsonb NOT NULL DEFAULT '{}',
    updated_at double precision NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);

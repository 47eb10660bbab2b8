-- Herald's first schema: logs and the notifications they hold, status records, acks,
-- idempotency keys and templates (docs/postgres.md explains each table).
--
-- tenant_id leads every primary key and index, except the two indexes of the store-wide sweeps
-- (expiry of log entries and notifications, retention of status records), which find due rows
-- across every tenant. Identifiers use the "C" collation: bytewise comparison is faster, and
-- SQL orders them as Python does, so rows are locked in the same order everywhere.
-- Times are seconds since the epoch, as float8 (the domain's floats, kept exactly).

-- One row: the epoch every new log starts with (services/stream/log.py, "epoch"). Drawn once,
-- when the schema is made: an emptied and re-made database gives every log a new epoch.
CREATE TABLE herald_meta (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    log_epoch bigint NOT NULL CHECK (log_epoch > 0)
);
INSERT INTO herald_meta (log_epoch) VALUES (1 + floor(random() * (2 ^ 52 - 1))::bigint);

-- One row per log: the appender locks it (INSERT ... ON CONFLICT DO UPDATE) to take cursors,
-- so two nodes appending to one log are serialized and never share a cursor. Entries of a log
-- are only inserted or deleted while holding this row's lock, which keeps `live` exact.
CREATE TABLE herald_logs (
    tenant_id text COLLATE "C" NOT NULL,
    log text COLLATE "C" NOT NULL,
    epoch bigint NOT NULL,
    next_cursor bigint NOT NULL,
    -- How many entries the log holds: the bound drops the oldest beyond it.
    live integer NOT NULL,
    PRIMARY KEY (tenant_id, log)
);

-- Each notification once, however many logs it is in: the encoded Delivery.notification field
-- and what every entry of it shares. Deleted by the expiry sweep once no entry refers to it.
CREATE TABLE herald_notifications (
    tenant_id text COLLATE "C" NOT NULL,
    notification_id text COLLATE "C" NOT NULL,
    priority integer NOT NULL,
    created_at double precision NOT NULL,
    expires_at double precision NOT NULL,
    payload bytea NOT NULL,
    PRIMARY KEY (tenant_id, notification_id)
);
CREATE INDEX herald_notifications_expiry ON herald_notifications (expires_at);

-- A notification in a log, at its cursor. expires_at is the notification's, repeated here for
-- the sweep's index.
CREATE TABLE herald_log_entries (
    tenant_id text COLLATE "C" NOT NULL,
    log text COLLATE "C" NOT NULL,
    cursor bigint NOT NULL,
    notification_id text COLLATE "C" NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (tenant_id, log, cursor)
);
CREATE INDEX herald_log_entries_notification ON herald_log_entries (tenant_id, notification_id);
CREATE INDEX herald_log_entries_expiry ON herald_log_entries (expires_at);

-- Status and history (services/stream/status.py): the notification, then one row per recipient.
CREATE TABLE herald_status (
    tenant_id text COLLATE "C" NOT NULL,
    notification_id text COLLATE "C" NOT NULL,
    -- The encoded herald.v1.Target.
    target bytea NOT NULL,
    created_at double precision NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (tenant_id, notification_id)
);
CREATE INDEX herald_status_retention ON herald_status (created_at);

CREATE TABLE herald_recipients (
    tenant_id text COLLATE "C" NOT NULL,
    notification_id text COLLATE "C" NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    -- services.domain.State
    state smallint NOT NULL,
    updated_at double precision NOT NULL,
    queued_at double precision NOT NULL DEFAULT 0,
    delivered_at double precision NOT NULL DEFAULT 0,
    acked_at double precision NOT NULL DEFAULT 0,
    attempts integer NOT NULL DEFAULT 0,
    reason text NOT NULL DEFAULT '',
    -- 0: unread.
    read_at double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, notification_id, user_id)
);

-- What each user acknowledged per log: every cursor <= up_to, and each of `above` (ascending).
CREATE TABLE herald_acks (
    tenant_id text COLLATE "C" NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    log text COLLATE "C" NOT NULL,
    up_to bigint NOT NULL,
    above bigint[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant_id, user_id, log)
);

-- Idempotency keys: a claim is live while expires_at > now.
CREATE TABLE herald_idempotency (
    tenant_id text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    notification_id text COLLATE "C" NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX herald_idempotency_expiry ON herald_idempotency (tenant_id, expires_at);

-- Templates, one row per version; `locales` maps a locale to its texts (services.domain).
CREATE TABLE herald_templates (
    tenant_id text COLLATE "C" NOT NULL,
    template_id text COLLATE "C" NOT NULL,
    version integer NOT NULL,
    default_locale text NOT NULL,
    locales jsonb NOT NULL,
    created_at double precision NOT NULL,
    PRIMARY KEY (tenant_id, template_id, version)
);

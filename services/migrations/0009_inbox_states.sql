-- Inbox states (services/stream/inbox_state_postgres.py, docs/inbox.md): seen, read and archived
-- per user and notification, a row only for a notification whose state changed, and per user
-- three counters over those rows, kept in the transaction of every change, so that the counts
-- (unseen, unread, total) are two primary-key reads, never a scan of the inbox.
CREATE TABLE herald_inbox_states (
    tenant_id text COLLATE "C" NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    notification_id text COLLATE "C" NOT NULL,
    -- 0: not set.
    seen_at double precision NOT NULL DEFAULT 0,
    read_at double precision NOT NULL DEFAULT 0,
    archived_at double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, user_id, notification_id)
);

-- archived: rows archived; read / seen: rows read / seen and not archived.
CREATE TABLE herald_inbox_counters (
    tenant_id text COLLATE "C" NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    archived integer NOT NULL DEFAULT 0,
    read integer NOT NULL DEFAULT 0,
    seen integer NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, user_id)
);

-- Read marks made before (MarkRead wrote them into herald_recipients) become inbox states, for
-- the notifications still in the user's own log: read and seen at the time of the mark.
INSERT INTO herald_inbox_states (tenant_id, user_id, notification_id, seen_at, read_at)
SELECT r.tenant_id, r.user_id, r.notification_id, r.read_at, r.read_at
FROM herald_recipients AS r
JOIN herald_log_entries AS e
    ON e.tenant_id = r.tenant_id AND e.log = 'user:' || r.user_id
    AND e.notification_id = r.notification_id
WHERE r.read_at > 0
ON CONFLICT DO NOTHING;

INSERT INTO herald_inbox_counters (tenant_id, user_id, archived, read, seen)
SELECT tenant_id, user_id, 0, count(*), count(*)
FROM herald_inbox_states
GROUP BY tenant_id, user_id;

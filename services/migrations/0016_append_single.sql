-- A notification to one user whose log gets nothing else in the call (the common send), as one
-- row: its log, notification and status record together. The argument of
-- services/stream/log_postgres.py's _APPEND_SINGLES, which takes one array of these where
-- _APPEND_ONE takes four arrays of the types of migration 0015 (one composite per notification
-- instead of four: asyncpg checks and frames each composite, PostgreSQL decodes each one).
-- Nothing is stored in this type: it only carries arguments.
CREATE TYPE herald_append_single AS (
    log text,
    notification_id text,
    priority integer,
    created_at float8,
    expires_at float8,
    payload bytea,
    trace_context text,
    target bytea,
    user_id text
);

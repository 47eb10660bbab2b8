-- The rows of an append (services/stream/log_postgres.py, _APPEND_ONE) and of the status marks
-- (status_postgres.py, _RECORD) as arrays of these composite types, one array per kind of row,
-- instead of a parallel array per column: asyncpg checks every element of a plain array for
-- being a nested container, which took about 7 µs of the node's CPU per notification (19
-- elements each; docs/performance.md, "2026-12-03 (tenth session)"), and checks an array of
-- records once per row. Nothing is stored in these types: they only carry arguments.
CREATE TYPE herald_append_log AS (log text, n integer);
CREATE TYPE herald_append_notification AS (
    notification_id text,
    priority integer,
    created_at float8,
    expires_at float8,
    payload bytea,
    trace_context text
);
CREATE TYPE herald_append_entry AS (log text, ord integer, notification_id text, expires_at float8);
-- A status record; its one user's log and position (NULL when it names several or none).
CREATE TYPE herald_append_record AS (
    notification_id text,
    target bytea,
    created_at float8,
    expires_at float8,
    user_id text,
    log text,
    ord integer
);
-- A user of a record that names several, with its entry's log and position.
CREATE TYPE herald_append_recipient AS (notification_id text, user_id text, log text, ord integer);
-- A run of consecutive cursors of one user's own log that reached a state (a row of
-- herald_status_marks without its tenant): the argument of services/stream/status_postgres.py's
-- _RECORD.
CREATE TYPE herald_mark_run AS (user_id text, state smallint, lo bigint, hi bigint, at float8);

-- The transactional outbox (docs/ingestion.md): a backend inserts a row in its own
-- transaction, so the notification exists exactly when its business change commits; Herald
-- takes rows in batches (FOR UPDATE SKIP LOCKED, so several ingest nodes share the table),
-- accepts them like SendBatch and deletes them. A row that can never be accepted, or failed
-- HERALD_OUTBOX_MAX_ATTEMPTS times, stays with its error and dead_at set, for an operator.
--
-- The file stands alone: for an outbox in the backend's own database (HERALD_OUTBOX_DSN),
-- apply it there with `psql -f`.
CREATE TABLE herald_outbox (
    id bigserial PRIMARY KEY,
    tenant_id text COLLATE "C" NOT NULL,
    -- Empty: `outbox:<id>`, so a row taken again after a crash is never sent twice.
    idempotency_key text COLLATE "C" NOT NULL DEFAULT '',
    -- The herald.v1.Notification: encoded (payload) or its canonical JSON (payload_json).
    payload bytea,
    payload_json jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    -- Not taken before this (a failed row waits its backoff).
    available_at timestamptz NOT NULL DEFAULT now(),
    -- Set when the row was dead-lettered: it is never taken again.
    dead_at timestamptz,
    CONSTRAINT herald_outbox_one_payload CHECK ((payload IS NULL) <> (payload_json IS NULL))
);
CREATE INDEX herald_outbox_pending ON herald_outbox (available_at, id) WHERE dead_at IS NULL;

-- Wakes the ingest nodes listening (LISTEN herald_outbox) when an inserting transaction
-- commits; one notification per statement, and none for a transaction rolled back. Not
-- durable: the nodes also poll (HERALD_OUTBOX_POLL_INTERVAL_S).
CREATE FUNCTION herald_outbox_wake() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('herald_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER herald_outbox_wake AFTER INSERT ON herald_outbox
FOR EACH STATEMENT EXECUTE FUNCTION herald_outbox_wake();

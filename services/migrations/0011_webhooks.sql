-- Webhook batches that could not be delivered (services/webhooks/parked.py), kept until an
-- operator replays or deletes them (`herald webhooks`). replay_at is set by a replay: a
-- sender may take the batch from then on (a claim moves it on by the claim's lease).
CREATE TABLE herald_webhooks_parked (
    tenant_id text COLLATE "C" NOT NULL,
    -- Sortable by creation time: listing is oldest first.
    batch_id text COLLATE "C" NOT NULL,
    -- The JSON body as first built (signed again on every attempt).
    body bytea NOT NULL,
    event_count integer NOT NULL,
    attempts integer NOT NULL,
    reason text NOT NULL,
    created_at double precision NOT NULL,
    parked_at double precision NOT NULL,
    replay_at double precision,
    PRIMARY KEY (tenant_id, batch_id)
);
CREATE INDEX herald_webhooks_parked_replay ON herald_webhooks_parked (replay_at)
    WHERE replay_at IS NOT NULL;

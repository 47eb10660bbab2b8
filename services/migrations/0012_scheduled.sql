-- Scheduled sends (docs/scheduling.md): notifications held until deliver_at. A row is a
-- completed notification; the scheduler claims due rows FOR UPDATE SKIP LOCKED and leases
-- them (leased_until), so several ingest nodes never release one twice, and deletes each once
-- it is in its logs. A cancelled row (cancelled_at set) stays for GetStatus until purged.
CREATE TABLE herald_scheduled (
    tenant_id text COLLATE "C" NOT NULL,
    notification_id text COLLATE "C" NOT NULL,
    deliver_at double precision NOT NULL,
    -- The completed notification, encoded herald.v1.Notification.
    payload bytea NOT NULL,
    -- 0: never claimed; else when the claim's lease ends.
    leased_until double precision NOT NULL DEFAULT 0,
    -- Claims so far (past 1, an earlier claimant may have delivered it before it died).
    attempts integer NOT NULL DEFAULT 0,
    cancelled_at double precision,
    PRIMARY KEY (tenant_id, notification_id)
);
-- What the scheduler claims next, and when it must wake.
CREATE INDEX herald_scheduled_due ON herald_scheduled (greatest(deliver_at, leased_until))
    WHERE cancelled_at IS NULL;
-- ListScheduled: a tenant's held sends by deliver_at.
CREATE INDEX herald_scheduled_tenant ON herald_scheduled (tenant_id, deliver_at, notification_id)
    WHERE cancelled_at IS NULL;
CREATE INDEX herald_scheduled_cancelled ON herald_scheduled (cancelled_at)
    WHERE cancelled_at IS NOT NULL;

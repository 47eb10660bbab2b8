-- The offline fallback (docs/push.md): the push targets users register, and the pushes
-- waiting for their delay (so a notification accepted before a restart still gets its push).
CREATE TABLE herald_push_targets (
    tenant_id text COLLATE "C" NOT NULL,
    target_id text COLLATE "C" NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    -- herald.v1.PushKind: 1 FCM, 2 APNs, 3 Web Push.
    kind smallint NOT NULL,
    -- FCM registration token, APNs device token, or the Web Push endpoint.
    token text NOT NULL,
    p256dh text NOT NULL DEFAULT '',
    auth text NOT NULL DEFAULT '',
    registered_at double precision NOT NULL,
    PRIMARY KEY (tenant_id, target_id)
);
CREATE INDEX herald_push_targets_user ON herald_push_targets (tenant_id, user_id, registered_at);

-- One row per (recipient, notification) whose push is due at due_at unless acked first.
CREATE TABLE herald_push_pending (
    tenant_id text COLLATE "C" NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    notification_id text COLLATE "C" NOT NULL,
    due_at double precision NOT NULL,
    -- The push content (title, body, data), encoded herald.v1.Notification.
    payload bytea NOT NULL,
    PRIMARY KEY (tenant_id, user_id, notification_id)
);
CREATE INDEX herald_push_pending_due ON herald_push_pending (due_at);

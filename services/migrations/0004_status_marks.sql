-- Status without a write per delivery (services/stream/status_postgres.py, docs/postgres.md).
--
-- A recipient of a notification sent to users is no longer a row made at send time and
-- updated at each delivery and ack. The notification's row names its users and the cursor of
-- its entry in each user's log; what each user's streams wrote for the first time and what
-- each user acked are runs of cursors (`herald_status_marks`, a row per run, written behind
-- in batches); `herald_recipients` keeps only the exceptions: FAILED, EXPIRED, redeliveries,
-- read marks, and the recipients of channel and broadcast notifications. A recipient's state
-- is derived from the three (rows made before this migration keep answering as they did).

ALTER TABLE herald_status
    ADD COLUMN user_ids text[] COLLATE "C",
    ADD COLUMN cursors bigint[];

-- When the recipient last became FAILED (0: never): a first write after it counts an attempt,
-- whatever state the row moved to since. State 0: a row that holds only a read mark.
ALTER TABLE herald_recipients ADD COLUMN failed_at double precision NOT NULL DEFAULT 0;

-- `state` 2 (DELIVERED: first writes) or 3 (ACKED): every entry of the user's own log with
-- lo <= cursor <= hi took that step at `at` (or up to the write-behind interval before it).
CREATE TABLE herald_status_marks (
    tenant_id text COLLATE "C" NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    state smallint NOT NULL,
    lo bigint NOT NULL,
    hi bigint NOT NULL,
    at double precision NOT NULL
);
-- Finding the first run that covers an entry: from the notification's creation, in time order.
CREATE INDEX herald_status_marks_lookup ON herald_status_marks (tenant_id, user_id, state, at);
-- Retention: rows arrive in time order, so a block range index finds old ones for little.
CREATE INDEX herald_status_marks_retention ON herald_status_marks USING brin (at);

-- Acks up to a cursor in one round trip (services/stream/acks_postgres.py): the same steps the
-- store took in five (lock the row, making it first if the log had no acks; raise the
-- watermark as services.stream.acks.AckState.raise_to does; write it back), and the state
-- from before, which names what the ack changed. The transaction it runs in commits without
-- waiting for its WAL flush: an ack a crash loses is redelivered, which at-least-once allows.
CREATE FUNCTION herald_ack_up_to(
    p_tenant text,
    p_user text,
    p_log text,
    p_cursor bigint,
    OUT before_up_to bigint,
    OUT before_above bigint[]
)
LANGUAGE plpgsql
AS $$
DECLARE
    new_up_to bigint;
    new_above bigint[];
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT a.up_to, a.above INTO before_up_to, before_above
    FROM herald_acks AS a
    WHERE a.tenant_id = p_tenant AND a.user_id = p_user AND a.log = p_log
    FOR UPDATE;
    IF NOT FOUND THEN
        -- Another node may make the row at the same time: ours waits for its, then finds it.
        INSERT INTO herald_acks AS a (tenant_id, user_id, log, up_to)
        VALUES (p_tenant, p_user, p_log, 0)
        ON CONFLICT (tenant_id, user_id, log) DO NOTHING;
        SELECT a.up_to, a.above INTO before_up_to, before_above
        FROM herald_acks AS a
        WHERE a.tenant_id = p_tenant AND a.user_id = p_user AND a.log = p_log
        FOR UPDATE;
    END IF;
    IF p_cursor <= before_up_to THEN
        RETURN;
    END IF;
    new_up_to := p_cursor;
    new_above := ARRAY(SELECT c FROM unnest(before_above) AS c WHERE c > p_cursor ORDER BY c);
    WHILE cardinality(new_above) > 0 AND new_above[1] = new_up_to + 1 LOOP
        new_up_to := new_up_to + 1;
        new_above := new_above[2:];
    END LOOP;
    UPDATE herald_acks AS a
    SET up_to = new_up_to, above = new_above
    WHERE a.tenant_id = p_tenant AND a.user_id = p_user AND a.log = p_log;
END
$$;

-- Acks up to a cursor of many users and logs in one round trip: services/stream/acks_postgres.py
-- sends together the acks that arrive while its previous statement is in flight. It calls
-- herald_ack_up_to (0002) for each, in the order given, which the store sorts by (tenant, user,
-- log) on every node, so two nodes' batches never wait for each other's rows in a circle. The
-- same row twice is acked twice, the second seeing the first. `ord` numbers the answers as the
-- arguments come (from 1).
CREATE FUNCTION herald_ack_up_to_many(
    p_tenants text[],
    p_users text[],
    p_logs text[],
    p_cursors bigint[]
)
RETURNS TABLE (ord integer, before_up_to bigint, before_above bigint[])
LANGUAGE plpgsql
AS $$
BEGIN
    FOR k IN 1 .. coalesce(cardinality(p_tenants), 0) LOOP
        ord := k;
        SELECT a.before_up_to, a.before_above INTO before_up_to, before_above
        FROM herald_ack_up_to(p_tenants[k], p_users[k], p_logs[k], p_cursors[k]) AS a;
        RETURN NEXT;
    END LOOP;
END
$$;

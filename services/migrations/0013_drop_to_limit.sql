-- The bound of a log applied after an append, in one round trip (services/stream/log_postgres.py):
-- an append is one statement that commits on its own, and a log it took past its bound is cut
-- back here. The rows are locked first, in the appenders' order, and every later statement of
-- the function sees what committed before the lock: `live` as it is now, and the entries. What
-- is cut is decided now (live - bound), not by the append that went over, so two appenders that
-- both went over cut once, and a cut a crash skipped is made by the next append to the log.
CREATE FUNCTION herald_drop_to_limit(p_tenant text, p_logs text[], p_limits integer[])
RETURNS TABLE (
    log text,
    cursor bigint,
    notification_id text,
    priority integer,
    created_at double precision,
    expires_at double precision,
    payload bytea,
    trace_context text
)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
BEGIN
    PERFORM 1 FROM herald_logs AS l
    WHERE l.tenant_id = p_tenant AND l.log = ANY (p_logs)
    ORDER BY l.log
    FOR UPDATE;
    RETURN QUERY
    WITH over AS (
        SELECT l.log, l.live - d.lim AS k
        FROM unnest(p_logs, p_limits) AS d (log, lim)
        JOIN herald_logs AS l ON l.tenant_id = p_tenant AND l.log = d.log
        WHERE l.live > d.lim
    ), doomed AS (
        DELETE FROM herald_log_entries AS e
        USING (
            SELECT o.log, (
                SELECT x.cursor FROM herald_log_entries AS x
                WHERE x.tenant_id = p_tenant AND x.log = o.log
                ORDER BY x.cursor
                OFFSET o.k - 1
                LIMIT 1
            ) AS cutoff
            FROM over AS o
        ) AS c
        WHERE e.tenant_id = p_tenant AND e.log = c.log AND e.cursor <= c.cutoff
        RETURNING e.log, e.cursor, e.notification_id, e.expires_at
    ), counted AS (
        UPDATE herald_logs AS l SET live = l.live - g.n
        FROM (SELECT d.log, count(*) AS n FROM doomed AS d GROUP BY d.log) AS g
        WHERE l.tenant_id = p_tenant AND l.log = g.log
    )
    SELECT d.log, d.cursor, d.notification_id, n.priority, n.created_at, d.expires_at,
        n.payload, n.trace_context
    FROM doomed AS d
    JOIN herald_notifications AS n
        ON n.tenant_id = p_tenant AND n.notification_id = d.notification_id
    ORDER BY d.log, d.cursor;
END
$$;

-- The retention purge of herald_status (status_postgres.py, _PURGE: `created_at < $1 LIMIT $2`,
-- no order) by a block range index instead of a B-tree: rows arrive in creation order, so the
-- ranges of old blocks hold old rows, and the purge reads only those. A B-tree entry per
-- notification cost every append about 12 % of PostgreSQL's CPU per notification (measured,
-- docs/performance.md, "2026-12-08"); a block range index is updated once per range of pages.
-- `autosummarize`: a range filled after the index was made is summarized by autovacuum as soon
-- as the next one starts (without it, only by a VACUUM, and until then the purge reads every
-- page of those ranges). herald_status_marks' index (migration 0004) gets it too.
DROP INDEX herald_status_retention;
CREATE INDEX herald_status_retention ON herald_status USING brin (created_at)
    WITH (autosummarize = on);
ALTER INDEX herald_status_marks_retention SET (autosummarize = on);

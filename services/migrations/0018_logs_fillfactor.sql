-- herald_logs keeps half of each page free. Every append updates its logs' rows (next_cursor
-- and live, which no index covers), and an update that finds room on the row's own page is a
-- heap-only tuple, with no new entry in the primary key; on full pages every update inserted
-- one. Counted with callgrind on the server: 9,300 instructions per appended notification of
-- 170,000 (docs/performance.md, "2026-12-08"). The table has one row per log, so the free half
-- costs little space; pages written before this migration get it as they are rewritten.
ALTER TABLE herald_logs SET (fillfactor = 50);

-- The W3C traceparent of the Send that stored a notification (services/tracing.py): each
-- delivery's span links to it. Empty when tracing is off or the Send was not sampled, so the
-- default costs no storage beyond the column's header; existing rows get it too.
ALTER TABLE herald_notifications ADD COLUMN trace_context text NOT NULL DEFAULT '';

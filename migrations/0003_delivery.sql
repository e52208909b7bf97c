-- Delivery is its own state: a job that ended but whose message was not yet posted (the bot was
-- killed in between) is posted at the next start. Jobs that ended before this migration count as
-- delivered, so an upgrade posts nothing old again.
ALTER TABLE jobs ADD COLUMN delivered_at REAL;
UPDATE jobs SET delivered_at = finished_at WHERE status IN ('done', 'failed', 'cancelled');
CREATE INDEX jobs_undelivered ON jobs (id) WHERE delivered_at IS NULL AND status IN ('done', 'failed', 'cancelled');

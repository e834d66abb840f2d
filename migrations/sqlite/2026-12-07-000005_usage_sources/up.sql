-- A turn metered by both the model gateway (per call) and the harness (its own report) has a
-- record of each; only the billed one (the gateway's when it exists) is in the roll-up.
ALTER TABLE usage_records ADD COLUMN billed BOOLEAN NOT NULL DEFAULT TRUE;
-- The unit prices (micro-cents per token) applied from `[[prices]]`, copied so a later price
-- change does not rewrite history; NULL when the cost came from the harness.
ALTER TABLE usage_records ADD COLUMN price_input BIGINT;
ALTER TABLE usage_records ADD COLUMN price_output BIGINT;
ALTER TABLE usage_records ADD COLUMN price_cache_read BIGINT;
ALTER TABLE usage_records ADD COLUMN price_cache_write BIGINT;

-- Org events (budget thresholds now; webhooks deliver them). `dedupe_key` makes an event that
-- can be noticed twice (two turns crossing the same threshold) a single row.
CREATE TABLE org_events (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    UNIQUE (org_id, dedupe_key)
);
CREATE INDEX org_events_org_id ON org_events (org_id, id);

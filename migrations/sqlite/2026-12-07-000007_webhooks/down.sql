DROP INDEX org_events_pending;
ALTER TABLE org_events DROP COLUMN fanned_out;
DROP TABLE webhook_attempts;
DROP TABLE webhook_deliveries;
DROP TABLE webhook_endpoints;

DROP TABLE org_events;
ALTER TABLE usage_records DROP COLUMN price_cache_write;
ALTER TABLE usage_records DROP COLUMN price_cache_read;
ALTER TABLE usage_records DROP COLUMN price_output;
ALTER TABLE usage_records DROP COLUMN price_input;
ALTER TABLE usage_records DROP COLUMN billed;

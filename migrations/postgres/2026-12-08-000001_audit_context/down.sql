ALTER TABLE audit_log DROP COLUMN before_digest;
ALTER TABLE audit_log DROP COLUMN resource_type;

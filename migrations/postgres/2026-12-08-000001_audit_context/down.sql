-- The 14-character key prefixes stay: the 16-character ones are not kept anywhere. A build
-- from before this migration finds such keys no more.
ALTER TABLE audit_log DROP COLUMN before_digest;
ALTER TABLE audit_log DROP COLUMN resource_type;

ALTER TABLE audit_log DROP COLUMN digest;
ALTER TABLE audit_log DROP COLUMN remote_addr;
ALTER TABLE audit_log DROP COLUMN request_id;
ALTER TABLE audit_log DROP COLUMN actor_type;
DROP TABLE idempotency_keys;
DROP TRIGGER audit_log_no_delete;
DROP TRIGGER audit_log_no_update;
ALTER TABLE api_keys DROP COLUMN managed_by;
ALTER TABLE api_keys DROP COLUMN last4;

DROP TABLE idempotency_keys;
DROP TRIGGER audit_log_no_delete;
DROP TRIGGER audit_log_no_update;
ALTER TABLE api_keys DROP COLUMN managed_by;
ALTER TABLE api_keys DROP COLUMN last4;

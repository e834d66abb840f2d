DROP TABLE idempotency_keys;
DROP TRIGGER audit_log_no_truncate ON audit_log;
DROP TRIGGER audit_log_no_delete ON audit_log;
DROP TRIGGER audit_log_no_update ON audit_log;
DROP FUNCTION audit_log_immutable();
ALTER TABLE api_keys DROP COLUMN managed_by;
ALTER TABLE api_keys DROP COLUMN last4;

-- The last four characters of a key, shown in lists beside its prefix to recognise it.
ALTER TABLE api_keys ADD COLUMN last4 TEXT NOT NULL DEFAULT '';

-- The audit log is append-only: the database itself refuses to change or remove a row.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only (UPDATE blocked)');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only (DELETE blocked)');
END;

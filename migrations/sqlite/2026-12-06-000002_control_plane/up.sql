-- The last four characters of a key, shown in lists beside its prefix to recognise it.
ALTER TABLE api_keys ADD COLUMN last4 TEXT NOT NULL DEFAULT '';
-- Keys declared in configuration ([[api_keys]], by hash) are 'config'; the rest 'api'.
ALTER TABLE api_keys ADD COLUMN managed_by TEXT NOT NULL DEFAULT 'api';

-- The audit log is append-only: the database itself refuses to change or remove a row.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only (UPDATE blocked)');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only (DELETE blocked)');
END;

-- Idempotency-Key: the first answer to a keyed request, replayed for 24 hours.
CREATE TABLE idempotency_keys (
    org_id TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status INTEGER,
    response TEXT,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (org_id, idem_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Who did it (type and id apart), the request it came with, and a digest of what changed.
ALTER TABLE audit_log ADD COLUMN actor_type TEXT NOT NULL DEFAULT 'system';
ALTER TABLE audit_log ADD COLUMN request_id TEXT;
ALTER TABLE audit_log ADD COLUMN remote_addr TEXT;
ALTER TABLE audit_log ADD COLUMN digest TEXT;

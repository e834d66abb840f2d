-- BYOK: an org's own model-provider key, one per provider, sealed with AES-256-GCM under the
-- master key named by `master_key_id` (never stored in clear).
CREATE TABLE model_keys (
    org_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    sealed TEXT NOT NULL,
    master_key_id TEXT NOT NULL,
    last4 TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (org_id, provider)
);

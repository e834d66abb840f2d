-- Each tenant's harnesses run as a host uid of their own: [sandbox] uid_base + sandbox_slot,
-- given out once and kept, because the tenant's files on disk are owned by it.
ALTER TABLE orgs ADD COLUMN sandbox_slot INTEGER;
CREATE UNIQUE INDEX orgs_sandbox_slot ON orgs (sandbox_slot);

-- Every call a harness made to a model provider through Karta's gateway: the authoritative
-- usage count for any harness, first-party or plugin.
CREATE TABLE model_calls (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    status INTEGER NOT NULL,
    streamed BOOLEAN NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cache_read_tokens BIGINT NOT NULL,
    cache_creation_tokens BIGINT NOT NULL,
    latency_ms BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX model_calls_org_created ON model_calls (org_id, created_at);
CREATE INDEX model_calls_session ON model_calls (session_id, created_at);

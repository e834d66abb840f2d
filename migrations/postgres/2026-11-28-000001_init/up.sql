-- Tenants. `managed_by` is 'config' for rows reconciled from the platform files, 'api' otherwise.
CREATE TABLE orgs (
    id TEXT PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    managed_by TEXT NOT NULL,
    disabled_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    slug TEXT NOT NULL,
    source_path TEXT NOT NULL,
    harness TEXT,
    -- What a send does while a turn runs: reject (409), enqueue, or interrupt.
    multitask TEXT NOT NULL,
    managed_by TEXT NOT NULL,
    disabled_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    UNIQUE (org_id, slug)
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    name TEXT NOT NULL,
    lookup_prefix TEXT NOT NULL UNIQUE,
    key_hash TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    last_used_at TIMESTAMP,
    revoked_at TIMESTAMP
);

CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    project_id TEXT NOT NULL REFERENCES projects (id),
    driver TEXT NOT NULL,
    -- The harness-app folder the session is pinned to at creation.
    app_path TEXT NOT NULL,
    harness_session_id TEXT,
    status TEXT NOT NULL,
    current_agent TEXT NOT NULL,
    permission_mode TEXT,
    metadata TEXT NOT NULL,
    participants TEXT NOT NULL,
    pending_input TEXT,
    -- Tools approved for the rest of the session (JSON array of names).
    approved_tools TEXT NOT NULL,
    parent_id TEXT,
    last_seq BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX sessions_org_idx ON sessions (org_id, created_at);

-- The per-session event log behind stream replay (bounded per session).
CREATE TABLE session_events (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    org_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (session_id, seq)
);

CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    org_id TEXT,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    details TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX audit_log_org_idx ON audit_log (org_id, created_at);

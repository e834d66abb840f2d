-- Releases: immutable, numbered snapshots of a project's harness app, extracted once into
-- `path`. The project's live release is its one `active` production release (the pointer);
-- previews are never the pointer and expire.
CREATE TABLE releases (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    commit_sha TEXT NOT NULL,
    message TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    build_kind TEXT NOT NULL,
    path TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    files BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    activated_at TIMESTAMP,
    expires_at TIMESTAMP,
    UNIQUE (project_id, version),
    UNIQUE (project_id, commit_sha, kind)
);
CREATE UNIQUE INDEX releases_one_active ON releases (project_id)
    WHERE status = 'active' AND kind = 'production';
CREATE INDEX releases_expiry ON releases (expires_at) WHERE kind = 'preview';

-- Periodic jobs (sweeping expired previews) that one instance runs at a time when several
-- share the database: whoever holds the unexpired lease.
CREATE TABLE job_leases (
    name TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    expires_at TIMESTAMP NOT NULL
);

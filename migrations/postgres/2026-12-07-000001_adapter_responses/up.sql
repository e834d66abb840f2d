-- Responses adapter: stored responses (`store: true`), by id, so that `previous_response_id`
-- continues the same Karta session and `GET .../responses/{id}` returns the final object.
CREATE TABLE adapter_responses (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX adapter_responses_org_created ON adapter_responses (org_id, created_at);

-- Managed Agents adapter: each session's log of `user.*`, `agent.*` and `session.*` entries,
-- numbered from 1 without gaps, replayed with `?after=<seq>`.
CREATE TABLE managed_events (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    org_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (session_id, seq)
);

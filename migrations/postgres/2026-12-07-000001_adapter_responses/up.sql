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

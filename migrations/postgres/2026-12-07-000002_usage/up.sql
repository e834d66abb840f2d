-- Metering: one record per turn and source (the harness's own report now; the model gateway's
-- per-call counts are in model_calls), written in the transaction that stores the turn's `done`.
-- `client_event_id` makes a record idempotent per org.
CREATE TABLE usage_records (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    client_event_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    turn_seq BIGINT NOT NULL,
    api_key_id TEXT,
    driver TEXT NOT NULL,
    provider TEXT,
    model TEXT,
    byok BOOLEAN NOT NULL,
    status TEXT NOT NULL,
    source TEXT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cache_read_tokens BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    cost_micro_cents BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    UNIQUE (org_id, client_event_id)
);
CREATE INDEX usage_records_org_created ON usage_records (org_id, created_at);

-- The roll-up per org, project, key ('' for none), model ('' when unknown) and UTC day,
-- updated with every record actually inserted.
CREATE TABLE usage_daily (
    org_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    api_key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    day TEXT NOT NULL,
    turns BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cache_read_tokens BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    cost_micro_cents BIGINT NOT NULL,
    PRIMARY KEY (org_id, project_id, api_key_id, model, day)
);

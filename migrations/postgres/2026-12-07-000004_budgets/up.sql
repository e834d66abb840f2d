-- Budgets set through the API (`PUT /v1/budgets`); those declared in configuration stay there.
-- `scope_id` is the org id, a project id or an API key id.
CREATE TABLE budgets (
    org_id TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    input_tokens BIGINT,
    output_tokens BIGINT,
    total_tokens BIGINT,
    cost_cents BIGINT,
    reserve_tokens BIGINT,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (org_id, scope_id)
);

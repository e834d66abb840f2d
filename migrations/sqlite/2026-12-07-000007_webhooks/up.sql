-- Webhook endpoints: declared in configuration (their secret stays there) or created through
-- the API (their secret sealed under the master key; during a rotation the previous one signs
-- too until previous_secret_until).
CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    event_types TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    disabled_reason TEXT,
    secret_sealed TEXT,
    previous_secret_sealed TEXT,
    previous_secret_until TIMESTAMP,
    managed_by TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    UNIQUE (org_id, name)
);

-- One delivery per event and endpoint; workers claim due ones with a lease.
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at TIMESTAMP NOT NULL,
    lease_holder TEXT,
    lease_until TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    delivered_at TIMESTAMP,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);

-- Every attempt of a delivery.
CREATE TABLE webhook_attempts (
    id TEXT PRIMARY KEY NOT NULL,
    delivery_id TEXT NOT NULL,
    org_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    status_code BIGINT,
    latency_ms BIGINT NOT NULL,
    error TEXT,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id);

-- Events not yet turned into deliveries.
ALTER TABLE org_events ADD COLUMN fanned_out BOOLEAN NOT NULL DEFAULT 0;
CREATE INDEX org_events_pending ON org_events (fanned_out, created_at);

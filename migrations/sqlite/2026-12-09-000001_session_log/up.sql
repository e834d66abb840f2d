-- The replay log keeps a run of a session's consecutive events in one row: a turn's events
-- then cost the log's index one entry instead of one each (see store/events.rs).
CREATE TABLE session_log (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    -- The run's first and last sequence numbers; it holds every number between.
    seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    org_id TEXT NOT NULL,
    -- The events' envelopes, one line of JSON each, in sequence order.
    payload TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (session_id, seq)
);

INSERT INTO session_log (session_id, seq, last_seq, org_id, payload, created_at)
SELECT session_id, seq, seq, org_id, payload, created_at FROM session_events;

-- Instances of an older version must be stopped first: they write to the table dropped here.
DROP TABLE session_events;

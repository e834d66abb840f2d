CREATE TABLE session_events (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    org_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (session_id, seq)
);

-- Each run's lines back into one row per event.
INSERT INTO session_events (session_id, org_id, seq, event_type, payload, created_at)
SELECT l.session_id, l.org_id, l.seq + e.n - 1, coalesce(e.line::json ->> 'type', ''), e.line,
       l.created_at
FROM session_log l,
     unnest(string_to_array(l.payload, E'\n')) WITH ORDINALITY AS e (line, n);

DROP TABLE session_log;

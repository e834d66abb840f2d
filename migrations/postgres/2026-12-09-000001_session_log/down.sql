CREATE TABLE session_events (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    org_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (session_id, seq)
);

-- Each run's lines back into one row per event (a row of one event is taken whole: its
-- envelope may hold a line break). The type is read from the envelope's start, where ours
-- put it, so a payload that is not JSON cannot stop the migration.
INSERT INTO session_events (session_id, org_id, seq, event_type, payload, created_at)
SELECT l.session_id, l.org_id, l.seq + e.n - 1,
       coalesce(substring(e.line from '^\{"type":"([^"\\]*)"'), ''), e.line, l.created_at
FROM session_log l,
     unnest(CASE WHEN l.seq = l.last_seq THEN ARRAY[l.payload]
                 ELSE string_to_array(l.payload, E'\n') END) WITH ORDINALITY AS e (line, n);

DROP TABLE session_log;

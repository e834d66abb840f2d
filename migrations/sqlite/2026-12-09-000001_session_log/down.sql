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
-- envelope may hold a line break).
WITH RECURSIVE split (session_id, org_id, seq, line, rest, created_at) AS (
    SELECT session_id, org_id, seq - 1, NULL, payload || char(10), created_at
    FROM session_log WHERE seq < last_seq
    UNION ALL
    SELECT session_id, org_id, seq + 1,
           substr(rest, 1, instr(rest, char(10)) - 1),
           substr(rest, instr(rest, char(10)) + 1),
           created_at
    FROM split WHERE rest <> ''
),
events (session_id, org_id, seq, line, created_at) AS (
    SELECT session_id, org_id, seq, line, created_at FROM split WHERE line IS NOT NULL
    UNION ALL
    SELECT session_id, org_id, seq, payload, created_at FROM session_log WHERE seq = last_seq
)
INSERT INTO session_events (session_id, org_id, seq, event_type, payload, created_at)
SELECT session_id, org_id, seq,
       CASE WHEN json_valid(line) THEN coalesce(json_extract(line, '$.type'), '') ELSE '' END,
       line, created_at
FROM events;

DROP TABLE session_log;

-- Which instance runs the session's turn, and until when its claim holds (renewed while the
-- turn runs). Two instances on one database never run two turns of a session.
ALTER TABLE sessions ADD COLUMN turn_owner TEXT;
ALTER TABLE sessions ADD COLUMN turn_lease_until TIMESTAMP;

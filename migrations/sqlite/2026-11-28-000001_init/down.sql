DROP TABLE audit_log;
DROP TABLE session_events;
DROP TABLE sessions;
DROP TABLE api_keys;
DROP TABLE projects;
DROP TABLE orgs;

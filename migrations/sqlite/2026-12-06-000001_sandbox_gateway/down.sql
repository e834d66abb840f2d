DROP TABLE model_calls;
DROP INDEX orgs_sandbox_slot;
ALTER TABLE orgs DROP COLUMN sandbox_slot;

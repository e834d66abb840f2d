ALTER TABLE sessions DROP COLUMN turn_lease_until;
ALTER TABLE sessions DROP COLUMN turn_owner;

-- What kind of thing an audit row is about, and the digest of the state before a change.
ALTER TABLE audit_log ADD COLUMN resource_type TEXT;
ALTER TABLE audit_log ADD COLUMN before_digest TEXT;
-- API key lookup prefixes are 14 characters (`kt_live_` and 6), as documented.
-- A key whose first 14 characters another key shares keeps its 16 (the verifier falls back to
-- them), so the unique column never refuses the migration.
UPDATE api_keys SET lookup_prefix = substr(lookup_prefix, 1, 14)
WHERE length(lookup_prefix) > 14
  AND NOT EXISTS (
    SELECT 1 FROM api_keys other
    WHERE other.id <> api_keys.id
      AND substr(other.lookup_prefix, 1, 14) = substr(api_keys.lookup_prefix, 1, 14)
  );

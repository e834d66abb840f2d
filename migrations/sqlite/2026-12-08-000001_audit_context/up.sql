-- What kind of thing an audit row is about, and the digest of the state before a change.
ALTER TABLE audit_log ADD COLUMN resource_type TEXT;
ALTER TABLE audit_log ADD COLUMN before_digest TEXT;
-- API key lookup prefixes are 14 characters (`kt_live_` and 6), as documented.
UPDATE api_keys SET lookup_prefix = substr(lookup_prefix, 1, 14) WHERE length(lookup_prefix) > 14;

//! API keys (hashes only).

use diesel::prelude::*;

use super::models::ApiKey;
use super::schema::{api_keys, orgs};
use super::{Conn, StoreError};

/// Inserts a key record.
pub fn insert(c: &mut Conn, key: &ApiKey) -> Result<(), StoreError> {
    diesel::insert_into(api_keys::table)
        .values(key)
        .execute(c)?;
    Ok(())
}

/// The unrevoked key with this lookup prefix. Not org-scoped: the credential itself names the org.
pub fn find_active_by_prefix(c: &mut Conn, prefix: &str) -> Result<Option<ApiKey>, StoreError> {
    // A disabled org's keys stop working with it.
    Ok(api_keys::table
        .inner_join(orgs::table)
        .filter(api_keys::lookup_prefix.eq(prefix))
        .filter(api_keys::revoked_at.is_null())
        .filter(orgs::disabled_at.is_null())
        .select(ApiKey::as_select())
        .first(c)
        .optional()?)
}

/// Records a successful use.
pub fn touch(c: &mut Conn, org_id: &str, id: &str) -> Result<(), StoreError> {
    diesel::update(
        api_keys::table
            .filter(api_keys::org_id.eq(org_id))
            .filter(api_keys::id.eq(id)),
    )
    .set(api_keys::last_used_at.eq(Some(super::now())))
    .execute(c)?;
    Ok(())
}

/// How many keys (revoked or not) the org has.
pub fn count_for_org(c: &mut Conn, org_id: &str) -> Result<i64, StoreError> {
    Ok(api_keys::table
        .filter(api_keys::org_id.eq(org_id))
        .count()
        .get_result(c)?)
}

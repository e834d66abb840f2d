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

/// Whether any key (revoked ones too: the column is unique) has this lookup prefix.
pub fn prefix_taken(c: &mut Conn, prefix: &str) -> Result<bool, StoreError> {
    Ok(diesel::select(diesel::dsl::exists(
        api_keys::table.filter(api_keys::lookup_prefix.eq(prefix)),
    ))
    .get_result(c)?)
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

/// Records a successful use, at most once a minute per key (verification stays read-mostly).
pub fn touch(c: &mut Conn, org_id: &str, id: &str) -> Result<(), StoreError> {
    let now = super::now();
    let stale = now - chrono::Duration::seconds(60);
    diesel::update(
        api_keys::table
            .filter(api_keys::org_id.eq(org_id))
            .filter(api_keys::id.eq(id))
            .filter(
                api_keys::last_used_at
                    .is_null()
                    .or(api_keys::last_used_at.lt(stale)),
            ),
    )
    .set(api_keys::last_used_at.eq(Some(now)))
    .execute(c)?;
    Ok(())
}

/// The org's keys, newest first (revoked ones included).
pub fn list_for_org(c: &mut Conn, org_id: &str) -> Result<Vec<ApiKey>, StoreError> {
    Ok(api_keys::table
        .filter(api_keys::org_id.eq(org_id))
        .order((api_keys::created_at.desc(), api_keys::id.desc()))
        .select(ApiKey::as_select())
        .load(c)?)
}

/// One key of the org.
pub fn get(c: &mut Conn, org_id: &str, id: &str) -> Result<ApiKey, StoreError> {
    use super::OptionalRow;
    api_keys::table
        .filter(api_keys::org_id.eq(org_id))
        .filter(api_keys::id.eq(id))
        .select(ApiKey::as_select())
        .first(c)
        .found()
}

/// Marks the key revoked (for good); a revoked key keeps its first revocation time.
pub fn revoke(c: &mut Conn, org_id: &str, id: &str) -> Result<bool, StoreError> {
    let n = diesel::update(
        api_keys::table
            .filter(api_keys::org_id.eq(org_id))
            .filter(api_keys::id.eq(id))
            .filter(api_keys::revoked_at.is_null()),
    )
    .set(api_keys::revoked_at.eq(Some(super::now())))
    .execute(c)?;
    Ok(n == 1)
}

/// How many keys (revoked or not) the org has.
pub fn count_for_org(c: &mut Conn, org_id: &str) -> Result<i64, StoreError> {
    Ok(api_keys::table
        .filter(api_keys::org_id.eq(org_id))
        .count()
        .get_result(c)?)
}

/// Keys declared in configuration, revoked or not.
pub fn list_config_managed(c: &mut Conn) -> Result<Vec<ApiKey>, StoreError> {
    Ok(api_keys::table
        .filter(api_keys::managed_by.eq("config"))
        .select(ApiKey::as_select())
        .load(c)?)
}

/// Sets a declared key's scopes, hash and prefix, and brings it back if it was revoked.
pub fn update_declared(
    c: &mut Conn,
    id: &str,
    scopes: &str,
    key_hash: &str,
    lookup_prefix: &str,
) -> Result<(), StoreError> {
    diesel::update(api_keys::table.find(id))
        .set((
            api_keys::scopes.eq(scopes),
            api_keys::key_hash.eq(key_hash),
            api_keys::lookup_prefix.eq(lookup_prefix),
            api_keys::revoked_at.eq(None::<chrono::NaiveDateTime>),
        ))
        .execute(c)?;
    Ok(())
}

/// Revokes a key by id (a declared key removed from configuration).
pub fn revoke_by_id(c: &mut Conn, id: &str) -> Result<(), StoreError> {
    diesel::update(
        api_keys::table
            .find(id)
            .filter(api_keys::revoked_at.is_null()),
    )
    .set(api_keys::revoked_at.eq(Some(super::now())))
    .execute(c)?;
    Ok(())
}

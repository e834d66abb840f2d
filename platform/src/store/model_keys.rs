//! BYOK keys, sealed.

use diesel::prelude::*;

use super::schema::model_keys as mk;
use super::{Conn, StoreError};

/// One stored key.
#[derive(Debug, Clone, Queryable, PartialEq)]
pub struct ModelKey {
    /// Owner.
    pub org_id: String,
    /// `anthropic` or `openai`.
    pub provider: String,
    /// The sealed secret (see `platform::byok`).
    pub sealed: String,
    /// The master key that sealed it.
    pub master_key_id: String,
    /// Its last four characters, for recognising it.
    pub last4: String,
    /// When first set.
    pub created_at: chrono::NaiveDateTime,
    /// When last replaced.
    pub updated_at: chrono::NaiveDateTime,
}

/// Sets the org's key for the provider (replacing any); whether one was replaced.
pub fn put(c: &mut Conn, k: &ModelKey) -> Result<bool, StoreError> {
    let n = diesel::update(
        mk::table
            .filter(mk::org_id.eq(&k.org_id))
            .filter(mk::provider.eq(&k.provider)),
    )
    .set((
        mk::sealed.eq(&k.sealed),
        mk::master_key_id.eq(&k.master_key_id),
        mk::last4.eq(&k.last4),
        mk::updated_at.eq(k.updated_at),
    ))
    .execute(c)?;
    if n > 0 {
        return Ok(true);
    }
    diesel::insert_into(mk::table)
        .values((
            mk::org_id.eq(&k.org_id),
            mk::provider.eq(&k.provider),
            mk::sealed.eq(&k.sealed),
            mk::master_key_id.eq(&k.master_key_id),
            mk::last4.eq(&k.last4),
            mk::created_at.eq(k.created_at),
            mk::updated_at.eq(k.updated_at),
        ))
        .execute(c)?;
    Ok(false)
}

/// The org's key for the provider.
pub fn get(c: &mut Conn, org_id: &str, provider: &str) -> Result<Option<ModelKey>, StoreError> {
    Ok(mk::table
        .filter(mk::org_id.eq(org_id))
        .filter(mk::provider.eq(provider))
        .first(c)
        .optional()?)
}

/// Whether the org has any key.
pub fn any(c: &mut Conn, org_id: &str) -> Result<bool, StoreError> {
    let n: i64 = mk::table
        .filter(mk::org_id.eq(org_id))
        .count()
        .get_result(c)?;
    Ok(n > 0)
}

/// Removes the org's key for the provider; whether there was one.
pub fn delete(c: &mut Conn, org_id: &str, provider: &str) -> Result<bool, StoreError> {
    Ok(diesel::delete(
        mk::table
            .filter(mk::org_id.eq(org_id))
            .filter(mk::provider.eq(provider)),
    )
    .execute(c)?
        > 0)
}

/// Every key (for re-sealing under a new master key).
pub fn all(c: &mut Conn) -> Result<Vec<ModelKey>, StoreError> {
    Ok(mk::table.load(c)?)
}

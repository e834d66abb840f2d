//! Stored responses of the Responses adapter: which Karta session a response belongs to, and
//! its final object.

use diesel::prelude::*;

use super::schema::adapter_responses as ar;
use super::{Conn, StoreError};

/// A stored response.
#[derive(Debug, Clone, Queryable)]
pub struct StoredResponse {
    /// `resp_...`
    pub id: String,
    /// Owner.
    pub org_id: String,
    /// The project it ran in.
    pub project_id: String,
    /// The Karta session that produced it.
    pub session_id: String,
    /// The final response object (JSON).
    pub body: String,
    /// When it was stored.
    pub created_at: chrono::NaiveDateTime,
}

/// Stores a response, and forgets the org's responses older than `keep_days`.
pub fn insert(c: &mut Conn, r: &StoredResponse, keep_days: i64) -> Result<(), StoreError> {
    let cutoff = r.created_at - chrono::Duration::days(keep_days);
    diesel::delete(
        ar::table
            .filter(ar::org_id.eq(&r.org_id))
            .filter(ar::created_at.lt(cutoff)),
    )
    .execute(c)?;
    diesel::insert_into(ar::table)
        .values((
            ar::id.eq(&r.id),
            ar::org_id.eq(&r.org_id),
            ar::project_id.eq(&r.project_id),
            ar::session_id.eq(&r.session_id),
            ar::body.eq(&r.body),
            ar::created_at.eq(r.created_at),
        ))
        .execute(c)?;
    Ok(())
}

/// The org's response `id`, if stored.
pub fn get(c: &mut Conn, org_id: &str, id: &str) -> Result<Option<StoredResponse>, StoreError> {
    Ok(ar::table
        .filter(ar::org_id.eq(org_id))
        .filter(ar::id.eq(id))
        .select((
            ar::id,
            ar::org_id,
            ar::project_id,
            ar::session_id,
            ar::body,
            ar::created_at,
        ))
        .first(c)
        .optional()?)
}

/// Forgets the org's response `id`; whether there was one.
pub fn delete(c: &mut Conn, org_id: &str, id: &str) -> Result<bool, StoreError> {
    let n = diesel::delete(
        ar::table
            .filter(ar::org_id.eq(org_id))
            .filter(ar::id.eq(id)),
    )
    .execute(c)?;
    Ok(n > 0)
}

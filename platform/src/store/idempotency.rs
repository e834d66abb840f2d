//! Keyed requests (`Idempotency-Key`): the first answer, kept for a day.

use diesel::prelude::*;

use super::schema::idempotency_keys as ik;
use super::{Conn, StoreError};

/// How long an answer is replayed.
pub const TTL_HOURS: i64 = 24;

/// What the store knows of a key.
#[derive(Debug, PartialEq)]
pub enum Seen {
    /// Never (or expired): now claimed for this request.
    Claimed,
    /// Claimed by a request that has not finished.
    InProgress,
    /// Used for another request (a different method, path or body).
    Mismatch,
    /// Answered: status and body.
    Answered(i32, String),
}

/// Claims `key` for the request with `hash`, or says how it was used. Run in a write
/// transaction.
pub fn claim(c: &mut Conn, org_id: &str, key: &str, hash: &str) -> Result<Seen, StoreError> {
    let now = super::now();
    let cutoff = now - chrono::Duration::hours(TTL_HOURS);
    let row: Option<(String, Option<i32>, Option<String>, chrono::NaiveDateTime)> = ik::table
        .filter(ik::org_id.eq(org_id))
        .filter(ik::idem_key.eq(key))
        .select((ik::request_hash, ik::status, ik::response, ik::created_at))
        .first(c)
        .optional()?;
    if let Some((h, status, response, at)) = row {
        if at >= cutoff {
            if h != hash {
                return Ok(Seen::Mismatch);
            }
            return Ok(match (status, response) {
                (Some(s), Some(r)) => Seen::Answered(s, r),
                _ => Seen::InProgress,
            });
        }
        diesel::delete(
            ik::table
                .filter(ik::org_id.eq(org_id))
                .filter(ik::idem_key.eq(key)),
        )
        .execute(c)?;
    }
    diesel::insert_into(ik::table)
        .values((
            ik::org_id.eq(org_id),
            ik::idem_key.eq(key),
            ik::request_hash.eq(hash),
            ik::created_at.eq(now),
        ))
        .execute(c)?;
    Ok(Seen::Claimed)
}

/// Stores the answer of a claimed key.
pub fn answer(
    c: &mut Conn,
    org_id: &str,
    key: &str,
    status: i32,
    response: &str,
) -> Result<(), StoreError> {
    diesel::update(
        ik::table
            .filter(ik::org_id.eq(org_id))
            .filter(ik::idem_key.eq(key)),
    )
    .set((ik::status.eq(Some(status)), ik::response.eq(Some(response))))
    .execute(c)?;
    Ok(())
}

/// Lets a claimed key go (the request failed in a way a retry may fix).
pub fn release(c: &mut Conn, org_id: &str, key: &str) -> Result<(), StoreError> {
    diesel::delete(
        ik::table
            .filter(ik::org_id.eq(org_id))
            .filter(ik::idem_key.eq(key))
            .filter(ik::status.is_null()),
    )
    .execute(c)?;
    Ok(())
}

/// Forgets expired keys.
pub fn prune(c: &mut Conn) -> Result<usize, StoreError> {
    let cutoff = super::now() - chrono::Duration::hours(TTL_HOURS);
    Ok(diesel::delete(ik::table.filter(ik::created_at.lt(cutoff))).execute(c)?)
}

//! Session handles. Every query takes the org.

use diesel::prelude::*;

use super::models::Session;
use super::schema::sessions;
use super::{Conn, OptionalRow, StoreError};

/// Inserts a session.
pub fn insert(c: &mut Conn, s: &Session) -> Result<(), StoreError> {
    diesel::insert_into(sessions::table).values(s).execute(c)?;
    Ok(())
}

/// A session of the org; another org's session is `NotFound`.
pub fn get(c: &mut Conn, org_id: &str, id: &str) -> Result<Session, StoreError> {
    sessions::table
        .filter(sessions::org_id.eq(org_id))
        .filter(sessions::id.eq(id))
        .select(Session::as_select())
        .first(c)
        .found()
}

/// Records the harness's own session id.
pub fn set_harness_session(
    c: &mut Conn,
    org_id: &str,
    id: &str,
    harness_session_id: &str,
) -> Result<(), StoreError> {
    diesel::update(
        sessions::table
            .filter(sessions::org_id.eq(org_id))
            .filter(sessions::id.eq(id)),
    )
    .set((
        sessions::harness_session_id.eq(Some(harness_session_id)),
        sessions::updated_at.eq(super::now()),
    ))
    .execute(c)?;
    Ok(())
}

/// Replaces the participants list (JSON) and bumps `updated_at`.
pub fn set_participants(
    c: &mut Conn,
    org_id: &str,
    id: &str,
    participants_json: &str,
) -> Result<(), StoreError> {
    diesel::update(
        sessions::table
            .filter(sessions::org_id.eq(org_id))
            .filter(sessions::id.eq(id)),
    )
    .set((
        sessions::participants.eq(participants_json),
        sessions::updated_at.eq(super::now()),
    ))
    .execute(c)?;
    Ok(())
}

/// Replaces the metadata (JSON) and bumps `updated_at`.
pub fn set_metadata(
    c: &mut Conn,
    org_id: &str,
    id: &str,
    metadata_json: &str,
) -> Result<(), StoreError> {
    diesel::update(
        sessions::table
            .filter(sessions::org_id.eq(org_id))
            .filter(sessions::id.eq(id)),
    )
    .set((
        sessions::metadata.eq(metadata_json),
        sessions::updated_at.eq(super::now()),
    ))
    .execute(c)?;
    Ok(())
}

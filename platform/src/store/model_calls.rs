//! Model calls recorded by the gateway.

use diesel::prelude::*;

use super::models::ModelCall;
use super::schema::model_calls;
use super::{Conn, StoreError};

/// Records one call.
pub fn insert(c: &mut Conn, call: &ModelCall) -> Result<(), StoreError> {
    diesel::insert_into(model_calls::table)
        .values(call)
        .execute(c)?;
    Ok(())
}

/// The calls made for a session (of `org_id` when given), oldest first (at most `limit`).
pub fn list_for_session(
    c: &mut Conn,
    org_id: Option<&str>,
    session_id: &str,
    limit: i64,
) -> Result<Vec<ModelCall>, StoreError> {
    let mut q = model_calls::table
        .filter(model_calls::session_id.eq(session_id))
        .into_boxed();
    if let Some(org) = org_id {
        q = q.filter(model_calls::org_id.eq(org));
    }
    Ok(
        q.order((model_calls::created_at.asc(), model_calls::id.asc()))
            .limit(limit)
            .select(ModelCall::as_select())
            .load(c)?,
    )
}

//! Budgets set through the API.

use diesel::prelude::*;

use super::schema::budgets as b;
use super::{Conn, StoreError};

/// One budget row: caps per calendar month of a scope (org, project or API key).
#[derive(Debug, Clone, Queryable, Insertable, AsChangeset, PartialEq)]
#[diesel(table_name = b, treat_none_as_null = true)]
pub struct BudgetRow {
    /// Owner.
    pub org_id: String,
    /// The org id, a project id or an API key id.
    pub scope_id: String,
    /// Input tokens.
    pub input_tokens: Option<i64>,
    /// Output tokens.
    pub output_tokens: Option<i64>,
    /// Input plus output.
    pub total_tokens: Option<i64>,
    /// Cost in cents.
    pub cost_cents: Option<i64>,
    /// Tokens a starting turn reserves.
    pub reserve_tokens: Option<i64>,
    /// Last change.
    pub updated_at: chrono::NaiveDateTime,
}

/// Sets a scope's budget (replacing it); whether one was replaced.
pub fn put(c: &mut Conn, row: &BudgetRow) -> Result<bool, StoreError> {
    let n = diesel::update(
        b::table
            .filter(b::org_id.eq(&row.org_id))
            .filter(b::scope_id.eq(&row.scope_id)),
    )
    .set(row)
    .execute(c)?;
    if n == 0 {
        diesel::insert_into(b::table).values(row).execute(c)?;
    }
    Ok(n > 0)
}

/// Removes a scope's budget; whether there was one.
pub fn delete(c: &mut Conn, org_id: &str, scope_id: &str) -> Result<bool, StoreError> {
    Ok(diesel::delete(
        b::table
            .filter(b::org_id.eq(org_id))
            .filter(b::scope_id.eq(scope_id)),
    )
    .execute(c)?
        > 0)
}

/// The org's budgets.
pub fn for_org(c: &mut Conn, org_id: &str) -> Result<Vec<BudgetRow>, StoreError> {
    Ok(b::table.filter(b::org_id.eq(org_id)).load(c)?)
}

/// Every budget (the runtime's settings).
pub fn all(c: &mut Conn) -> Result<Vec<BudgetRow>, StoreError> {
    Ok(b::table.load(c)?)
}

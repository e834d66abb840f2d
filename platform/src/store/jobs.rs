//! Leases of periodic jobs: one instance runs a job at a time when several share the database.

use chrono::{Duration, NaiveDateTime};
use diesel::prelude::*;

use super::schema::job_leases as jl;
use super::{Conn, StoreError};

/// Takes (or renews) the job's lease for `holder` until `now + ttl`, unless another holder's
/// lease is still running. Whether `holder` holds it. Run in a write transaction.
pub fn try_lease(
    c: &mut Conn,
    name: &str,
    holder: &str,
    now: NaiveDateTime,
    ttl: Duration,
) -> Result<bool, StoreError> {
    let until = now + ttl;
    let taken = diesel::update(
        jl::table
            .filter(jl::name.eq(name))
            .filter(jl::holder.eq(holder).or(jl::expires_at.le(now))),
    )
    .set((jl::holder.eq(holder), jl::expires_at.eq(until)))
    .execute(c)?;
    if taken == 1 {
        return Ok(true);
    }
    let inserted = super::execute_on_backend!(
        c,
        diesel::insert_into(jl::table)
            .values((
                jl::name.eq(name),
                jl::holder.eq(holder),
                jl::expires_at.eq(until),
            ))
            .on_conflict(jl::name)
            .do_nothing()
    )?;
    Ok(inserted == 1)
}

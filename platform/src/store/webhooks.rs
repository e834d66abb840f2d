//! Webhook endpoints, deliveries (claimed by workers with leases) and their attempts.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::{webhook_attempts as wa, webhook_deliveries as wd, webhook_endpoints as we};
use super::{Conn, OptionalRow, StoreError};

/// An endpoint.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, PartialEq)]
#[diesel(table_name = we)]
pub struct Endpoint {
    /// `whe_...`
    pub id: String,
    /// Owner.
    pub org_id: String,
    /// Unique in the org (config: the declared name; API: the id).
    pub name: String,
    /// Where events are POSTed.
    pub url: String,
    /// JSON array of event types (`*` for all).
    pub event_types: String,
    /// Whether it receives events.
    pub enabled: bool,
    /// Why it was disabled, when Karta disabled it.
    pub disabled_reason: Option<String>,
    /// The signing secret, sealed (API endpoints).
    pub secret_sealed: Option<String>,
    /// The secret before the last rotation, sealed.
    pub previous_secret_sealed: Option<String>,
    /// Until when the previous secret signs too.
    pub previous_secret_until: Option<NaiveDateTime>,
    /// `config` or `api`.
    pub managed_by: String,
    /// Created.
    pub created_at: NaiveDateTime,
    /// Last changed.
    pub updated_at: NaiveDateTime,
}

impl Endpoint {
    /// Whether it takes events of `event_type`.
    pub fn wants(&self, event_type: &str) -> bool {
        serde_json::from_str::<Vec<String>>(&self.event_types)
            .map(|types| types.iter().any(|t| t == "*" || t == event_type))
            .unwrap_or(false)
    }
}

/// A delivery.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, PartialEq)]
#[diesel(table_name = wd)]
pub struct Delivery {
    /// `whd_...`
    pub id: String,
    /// Owner.
    pub org_id: String,
    /// The event.
    pub event_id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// When the next attempt is due.
    pub next_attempt_at: NaiveDateTime,
    /// The worker holding it.
    pub lease_holder: Option<String>,
    /// Until when.
    pub lease_until: Option<NaiveDateTime>,
    /// Created.
    pub created_at: NaiveDateTime,
    /// When an attempt succeeded.
    pub delivered_at: Option<NaiveDateTime>,
}

impl Delivery {
    /// A pending delivery of an event to an endpoint, due at `due`.
    pub fn pending(org_id: &str, event_id: &str, endpoint_id: &str, due: NaiveDateTime) -> Self {
        Delivery {
            id: super::new_id("whd"),
            org_id: org_id.to_string(),
            event_id: event_id.to_string(),
            endpoint_id: endpoint_id.to_string(),
            status: "pending".into(),
            attempts: 0,
            next_attempt_at: due,
            lease_holder: None,
            lease_until: None,
            created_at: super::now(),
            delivered_at: None,
        }
    }
}

/// An attempt.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, PartialEq)]
#[diesel(table_name = wa)]
pub struct Attempt {
    /// `wha_...`
    pub id: String,
    /// The delivery.
    pub delivery_id: String,
    /// Owner.
    pub org_id: String,
    /// 1, 2, ...
    pub attempt: i64,
    /// The receiver's status, when it answered.
    pub status_code: Option<i64>,
    /// How long it took.
    pub latency_ms: i64,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// When.
    pub created_at: NaiveDateTime,
}

/// Stores an endpoint.
pub fn insert(c: &mut Conn, e: &Endpoint) -> Result<(), StoreError> {
    diesel::insert_into(we::table).values(e).execute(c)?;
    Ok(())
}

/// The org's endpoints.
pub fn list(c: &mut Conn, org_id: &str) -> Result<Vec<Endpoint>, StoreError> {
    Ok(we::table
        .filter(we::org_id.eq(org_id))
        .order(we::created_at.asc())
        .select(Endpoint::as_select())
        .load(c)?)
}

/// Every endpoint declared in configuration.
pub fn list_config(c: &mut Conn) -> Result<Vec<Endpoint>, StoreError> {
    Ok(we::table
        .filter(we::managed_by.eq("config"))
        .select(Endpoint::as_select())
        .load(c)?)
}

/// The orgs with an enabled endpoint.
pub fn orgs_with_endpoints(c: &mut Conn) -> Result<Vec<String>, StoreError> {
    Ok(we::table
        .filter(we::enabled.eq(true))
        .select(we::org_id)
        .distinct()
        .load(c)?)
}

/// An endpoint of the org.
pub fn get(c: &mut Conn, org_id: &str, id: &str) -> Result<Endpoint, StoreError> {
    we::table
        .filter(we::org_id.eq(org_id))
        .filter(we::id.eq(id))
        .select(Endpoint::as_select())
        .first(c)
        .found()
}

/// An endpoint by id (any org: the delivery worker's view).
pub fn get_any(c: &mut Conn, id: &str) -> Result<Option<Endpoint>, StoreError> {
    Ok(we::table
        .filter(we::id.eq(id))
        .select(Endpoint::as_select())
        .first(c)
        .optional()?)
}

/// Replaces an endpoint's row.
pub fn update(c: &mut Conn, e: &Endpoint) -> Result<(), StoreError> {
    diesel::update(we::table.filter(we::id.eq(&e.id)))
        .set((
            we::name.eq(&e.name),
            we::url.eq(&e.url),
            we::event_types.eq(&e.event_types),
            we::enabled.eq(e.enabled),
            we::disabled_reason.eq(&e.disabled_reason),
            we::secret_sealed.eq(&e.secret_sealed),
            we::previous_secret_sealed.eq(&e.previous_secret_sealed),
            we::previous_secret_until.eq(e.previous_secret_until),
            we::updated_at.eq(e.updated_at),
        ))
        .execute(c)?;
    Ok(())
}

/// Removes an endpoint and its pending deliveries.
pub fn delete(c: &mut Conn, id: &str) -> Result<(), StoreError> {
    diesel::delete(
        wd::table
            .filter(wd::endpoint_id.eq(id))
            .filter(wd::status.eq("pending")),
    )
    .execute(c)?;
    diesel::delete(we::table.filter(we::id.eq(id))).execute(c)?;
    Ok(())
}

/// Queues a delivery unless the event already has one for the endpoint.
pub fn queue(c: &mut Conn, d: &Delivery) -> Result<(), StoreError> {
    super::execute_on_backend!(
        c,
        diesel::insert_into(wd::table)
            .values(d)
            .on_conflict((wd::event_id, wd::endpoint_id))
            .do_nothing()
    )?;
    Ok(())
}

/// Claims up to `limit` due deliveries for `holder` until `until`: a delivery another worker
/// holds (its lease unexpired) is skipped. Run in a write transaction.
pub fn claim(
    c: &mut Conn,
    holder: &str,
    now: NaiveDateTime,
    until: NaiveDateTime,
    limit: i64,
) -> Result<Vec<Delivery>, StoreError> {
    let free = || {
        wd::lease_until
            .is_null()
            .or(wd::lease_until.lt(now))
            .or(wd::lease_holder.eq(holder))
    };
    let due: Vec<String> = wd::table
        .filter(wd::status.eq("pending"))
        .filter(wd::next_attempt_at.le(now))
        .filter(free())
        .order(wd::next_attempt_at.asc())
        .limit(limit)
        .select(wd::id)
        .load(c)?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    // The condition is checked again by the update: of two workers that read the same rows,
    // the second updates none of those the first took.
    diesel::update(wd::table.filter(wd::id.eq_any(&due)).filter(free()))
        .set((wd::lease_holder.eq(holder), wd::lease_until.eq(until)))
        .execute(c)?;
    Ok(wd::table
        .filter(wd::id.eq_any(&due))
        .filter(wd::lease_holder.eq(holder))
        .filter(wd::lease_until.eq(until))
        .select(Delivery::as_select())
        .load(c)?)
}

/// Records an attempt and the delivery's new state (the lease released), if `holder` still
/// holds the delivery; whether it did (a worker whose lease was taken over records nothing).
pub fn record_attempt(
    c: &mut Conn,
    a: &Attempt,
    holder: &str,
    status: &str,
    next_attempt_at: NaiveDateTime,
    delivered_at: Option<NaiveDateTime>,
) -> Result<bool, StoreError> {
    let n = diesel::update(
        wd::table
            .filter(wd::id.eq(&a.delivery_id))
            .filter(wd::lease_holder.eq(holder)),
    )
    .set((
        wd::status.eq(status),
        wd::attempts.eq(a.attempt),
        wd::next_attempt_at.eq(next_attempt_at),
        wd::delivered_at.eq(delivered_at),
        wd::lease_holder.eq(None::<String>),
        wd::lease_until.eq(None::<NaiveDateTime>),
    ))
    .execute(c)?;
    if n == 1 {
        diesel::insert_into(wa::table).values(a).execute(c)?;
    }
    Ok(n == 1)
}

/// An event's deliveries, with their attempts.
pub fn deliveries_of(
    c: &mut Conn,
    org_id: &str,
    event_id: &str,
) -> Result<Vec<(Delivery, Vec<Attempt>)>, StoreError> {
    let ds: Vec<Delivery> = wd::table
        .filter(wd::org_id.eq(org_id))
        .filter(wd::event_id.eq(event_id))
        .order(wd::created_at.asc())
        .select(Delivery::as_select())
        .load(c)?;
    let mut out = Vec::with_capacity(ds.len());
    for d in ds {
        let attempts = wa::table
            .filter(wa::delivery_id.eq(&d.id))
            .order(wa::attempt.asc())
            .select(Attempt::as_select())
            .load(c)?;
        out.push((d, attempts));
    }
    Ok(out)
}

/// Queues the event's deliveries again (all, or one endpoint's), due now. How many.
pub fn redeliver(
    c: &mut Conn,
    org_id: &str,
    event_id: &str,
    endpoint_id: Option<&str>,
    now: NaiveDateTime,
) -> Result<usize, StoreError> {
    // The retry window starts again (it is measured from `created_at`).
    let set = (
        wd::status.eq("pending"),
        wd::created_at.eq(now),
        wd::next_attempt_at.eq(now),
        wd::lease_holder.eq(None::<String>),
        wd::lease_until.eq(None::<NaiveDateTime>),
    );
    let of_event = wd::org_id.eq(org_id).and(wd::event_id.eq(event_id));
    Ok(match endpoint_id {
        Some(e) => diesel::update(wd::table.filter(of_event.and(wd::endpoint_id.eq(e))))
            .set(set)
            .execute(c)?,
        None => diesel::update(wd::table.filter(of_event))
            .set(set)
            .execute(c)?,
    })
}

/// Removes what is older than `before`: ended deliveries and their attempts, and events that
/// were fanned out and have no pending delivery. How many rows went. Run in a write transaction.
pub fn prune(c: &mut Conn, before: NaiveDateTime, limit: i64) -> Result<usize, StoreError> {
    use super::schema::org_events as oe;
    let old: Vec<String> = wd::table
        .filter(wd::status.ne("pending"))
        .filter(wd::created_at.lt(before))
        .select(wd::id)
        .limit(limit)
        .load(c)?;
    let mut n = diesel::delete(wa::table.filter(wa::delivery_id.eq_any(&old))).execute(c)?;
    n += diesel::delete(wd::table.filter(wd::id.eq_any(&old))).execute(c)?;
    let pending_events = wd::table
        .filter(wd::status.eq("pending"))
        .select(wd::event_id);
    let events: Vec<String> = oe::table
        .filter(oe::created_at.lt(before))
        .filter(oe::fanned_out.eq(true))
        .filter(diesel::dsl::not(oe::id.eq_any(pending_events)))
        .select(oe::id)
        .limit(limit)
        .load(c)?;
    // A delivery that ended is gone with its event (its attempts above, or below).
    let ds: Vec<String> = wd::table
        .filter(wd::event_id.eq_any(&events))
        .select(wd::id)
        .load(c)?;
    n += diesel::delete(wa::table.filter(wa::delivery_id.eq_any(&ds))).execute(c)?;
    n += diesel::delete(wd::table.filter(wd::id.eq_any(&ds))).execute(c)?;
    n += diesel::delete(oe::table.filter(oe::id.eq_any(&events))).execute(c)?;
    Ok(n)
}

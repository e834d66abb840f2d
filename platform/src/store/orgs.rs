//! Orgs (tenants).

use diesel::prelude::*;

use super::models::Org;
use super::schema::orgs;
use super::{Conn, OptionalRow, StoreError};

/// All orgs managed by the platform config, enabled or not.
pub fn list_config_managed(c: &mut Conn) -> Result<Vec<Org>, StoreError> {
    Ok(orgs::table
        .filter(orgs::managed_by.eq("config"))
        .order(orgs::slug.asc())
        .select(Org::as_select())
        .load(c)?)
}

/// An org by slug, whoever manages it.
pub fn find_by_slug(c: &mut Conn, slug: &str) -> Result<Option<Org>, StoreError> {
    Ok(orgs::table
        .filter(orgs::slug.eq(slug))
        .select(Org::as_select())
        .first(c)
        .optional()?)
}

/// An enabled org by slug.
pub fn get_enabled_by_slug(c: &mut Conn, slug: &str) -> Result<Org, StoreError> {
    orgs::table
        .filter(orgs::slug.eq(slug))
        .filter(orgs::disabled_at.is_null())
        .select(Org::as_select())
        .first(c)
        .found()
}

/// Inserts an org.
pub fn insert(c: &mut Conn, org: &Org) -> Result<(), StoreError> {
    diesel::insert_into(orgs::table).values(org).execute(c)?;
    Ok(())
}

/// Sets the name and the disabled mark.
pub fn update(
    c: &mut Conn,
    id: &str,
    name: &str,
    disabled_at: Option<chrono::NaiveDateTime>,
) -> Result<(), StoreError> {
    diesel::update(orgs::table.find(id))
        .set((
            orgs::name.eq(name),
            orgs::disabled_at.eq(disabled_at),
            orgs::updated_at.eq(super::now()),
        ))
        .execute(c)?;
    Ok(())
}

/// Deletes an org that has no history.
pub fn delete(c: &mut Conn, id: &str) -> Result<(), StoreError> {
    diesel::delete(orgs::table.find(id)).execute(c)?;
    Ok(())
}

/// Slugs of every org, whoever manages it.
pub fn list_every_slug(c: &mut Conn) -> Result<Vec<String>, StoreError> {
    Ok(orgs::table.select(orgs::slug).load(c)?)
}

/// (id, slug) of every org, whoever manages it.
pub fn list_every_id_slug(c: &mut Conn) -> Result<Vec<(String, String)>, StoreError> {
    Ok(orgs::table.select((orgs::id, orgs::slug)).load(c)?)
}

/// The org's sandbox slot (its harnesses' host uid is `uid_base + slot`), given out on first
/// use and kept for good: the org's files on disk belong to that uid. Run in a write
/// transaction; the unique index makes a concurrent claim of the same slot fail rather than
/// share it.
pub fn sandbox_slot(c: &mut Conn, org_id: &str) -> Result<i32, StoreError> {
    use diesel::dsl::max;
    let current: Option<i32> = orgs::table
        .find(org_id)
        .select(orgs::sandbox_slot)
        .first(c)
        .found()?;
    if let Some(slot) = current {
        return Ok(slot);
    }
    let highest: Option<i32> = orgs::table.select(max(orgs::sandbox_slot)).first(c)?;
    let next = highest.map_or(0, |h| h + 1);
    diesel::update(
        orgs::table
            .find(org_id)
            .filter(orgs::sandbox_slot.is_null()),
    )
    .set(orgs::sandbox_slot.eq(Some(next)))
    .execute(c)?;
    orgs::table
        .find(org_id)
        .select(orgs::sandbox_slot)
        .first::<Option<i32>>(c)
        .found()?
        .ok_or(StoreError::NotFound)
}

/// A page of orgs by slug, after `after` (exclusive).
pub fn page(c: &mut Conn, after: Option<&str>, limit: i64) -> Result<Vec<Org>, StoreError> {
    let mut q = orgs::table
        .order(orgs::slug.asc())
        .limit(limit)
        .select(Org::as_select())
        .into_boxed();
    if let Some(a) = after {
        q = q.filter(orgs::slug.gt(a.to_string()));
    }
    Ok(q.load(c)?)
}

/// An org by slug or id, whoever manages it.
pub fn find_by_ref(c: &mut Conn, reference: &str) -> Result<Option<Org>, StoreError> {
    Ok(orgs::table
        .filter(orgs::slug.eq(reference).or(orgs::id.eq(reference)))
        .select(Org::as_select())
        .first(c)
        .optional()?)
}

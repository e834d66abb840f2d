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

//! Helpers for tests that run against both backends: a throw-away PostgreSQL database per test.
//!
//! `KARTA_TEST_PG_URL` names the server's maintenance database (default
//! `postgres://postgres@127.0.0.1:5432/test`). When it cannot be reached the PostgreSQL half of a
//! test is skipped with a note, except under `CI=true`, where that is a failure.

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};

/// The default maintenance database for tests.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A database created for one test and dropped when this is dropped.
pub struct TempPgDatabase {
    admin_url: String,
    name: String,
    /// The new database's URL.
    pub url: String,
}

impl Drop for TempPgDatabase {
    fn drop(&mut self) {
        if let Ok(mut c) = PgConnection::establish(&self.admin_url) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Creates a fresh database, or `None` (skip) when PostgreSQL is unreachable outside CI.
///
/// # Panics
/// Under `CI=true` when PostgreSQL is unreachable: CI must not silently skip half the suite.
pub fn temp_pg_database() -> Option<TempPgDatabase> {
    let admin_url = std::env::var("KARTA_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.into());
    let mut conn = match PgConnection::establish(&admin_url) {
        Ok(c) => c,
        Err(e) => {
            assert!(
                !in_ci(),
                "PostgreSQL is required in CI but unreachable at {admin_url}: {e}"
            );
            eprintln!("note: PostgreSQL unreachable ({e}); skipping the PostgreSQL half");
            return None;
        }
    };
    let name = format!("karta_t_{}", super::random_base62(12).to_lowercase());
    conn.batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or(admin_url.clone());
    Some(TempPgDatabase {
        url: format!("{base}/{name}"),
        admin_url,
        name,
    })
}

/// A new active session row of the org's project on the app at `app_path` (echo driver, the
/// `default` agent, no participants yet), for a test to insert.
pub fn session_row(org: &str, project: &str, app_path: &str) -> super::models::Session {
    let now = super::now();
    super::models::Session {
        id: super::new_id("sess"),
        org_id: org.into(),
        project_id: project.into(),
        driver: "echo".into(),
        app_path: app_path.into(),
        harness_session_id: None,
        status: "active".into(),
        current_agent: "default".into(),
        permission_mode: None,
        metadata: "{}".into(),
        participants: "[]".into(),
        pending_input: None,
        approved_tools: "[]".into(),
        parent_id: None,
        last_seq: 0,
        created_at: now,
        updated_at: now,
    }
}

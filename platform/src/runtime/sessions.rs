//! Creating, resuming and reading sessions.

use std::path::{Path, PathBuf};

use chrono::{NaiveDateTime, SecondsFormat};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{Runtime, RuntimeError};
use crate::store::{self, models, projects, sessions, StoreError};

/// Most metadata keys a session may carry.
pub const MAX_METADATA_KEYS: usize = 50;

/// `POST /v1/sessions` input.
#[derive(Clone, Debug, Default)]
pub struct CreateSession {
    /// Free-form tags.
    pub metadata: Option<Map<String, Value>>,
    /// Resume this session instead of creating one.
    pub session_id: Option<String>,
    /// Project slug or id; defaults to the org's only project.
    pub project: Option<String>,
}

/// The public session object.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SessionView {
    pub id: String,
    pub metadata: Value,
    pub current_agent: String,
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
    pub parent_id: Option<String>,
    pub pending_input: Option<Value>,
    pub permission_mode: Option<String>,
    pub participants: Value,
    pub project: ProjectRef,
}

/// Which project a session belongs to and the version it is pinned to.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ProjectRef {
    /// The project's slug.
    #[serde(rename = "ref")]
    pub reference: String,
    /// `prj_...`
    pub project_id: String,
    /// The release the session is pinned to (`null` while projects serve their folder directly).
    pub version: Option<String>,
}

/// ISO-8601 with an explicit `+00:00`, as the API documents.
pub(crate) fn iso(t: NaiveDateTime) -> String {
    t.and_utc().to_rfc3339_opts(SecondsFormat::Secs, false)
}

fn parse_json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or(Value::Null)
}

pub(crate) fn view(s: &models::Session, p: &models::Project) -> SessionView {
    SessionView {
        id: s.id.clone(),
        metadata: parse_json(&s.metadata),
        current_agent: s.current_agent.clone(),
        status: s.status.clone(),
        created_at: iso(s.created_at),
        updated_at: iso(s.updated_at),
        parent_id: s.parent_id.clone(),
        pending_input: s.pending_input.as_deref().map(parse_json),
        permission_mode: s.permission_mode.clone(),
        participants: parse_json(&s.participants),
        project: ProjectRef {
            reference: p.slug.clone(),
            project_id: p.id.clone(),
            version: None,
        },
    }
}

fn invalid(field: &str, msg: impl Into<String>) -> RuntimeError {
    RuntimeError::Invalid(vec!["body".into(), field.into()], msg.into())
}

impl Runtime {
    /// Creates a session, or resumes `session_id` (merging metadata key by key). Returns the
    /// session and whether it was created.
    pub async fn create_session(
        &self,
        org_id: &str,
        req: CreateSession,
    ) -> Result<(SessionView, bool), RuntimeError> {
        if let Some(m) = &req.metadata {
            if m.len() > MAX_METADATA_KEYS {
                return Err(invalid(
                    "metadata",
                    format!(
                        "at most {MAX_METADATA_KEYS} keys are allowed, got {}",
                        m.len()
                    ),
                ));
            }
        }
        let org = org_id.to_string();
        if let Some(id) = req.session_id.clone() {
            let metadata = req.metadata.clone();
            return self
                .store
                .write_async(move |c| {
                    let s = sessions::get(c, &org, &id)?;
                    let p = projects::get(c, &org, &s.project_id)?;
                    let s = match metadata {
                        Some(extra) if !extra.is_empty() => {
                            let mut merged = match parse_json(&s.metadata) {
                                Value::Object(m) => m,
                                _ => Map::new(),
                            };
                            merged.extend(extra);
                            if merged.len() > MAX_METADATA_KEYS {
                                return Err(StoreError::Conflict(format!(
                                    "metadata would have {} keys; at most {MAX_METADATA_KEYS} are allowed",
                                    merged.len()
                                )));
                            }
                            let json = Value::Object(merged).to_string();
                            sessions::set_metadata(c, &org, &id, &json)?;
                            sessions::get(c, &org, &id)?
                        }
                        _ => s,
                    };
                    Ok((view(&s, &p), false))
                })
                .await
                .map_err(|e| match e {
                    StoreError::Conflict(m) => invalid("metadata", m),
                    other => other.into(),
                });
        }

        let project = self.pick_project(org_id, req.project.as_deref()).await?;
        let app_dir = PathBuf::from(&project.source_path);
        let drivers = self.drivers.clone();
        let harness = project.harness.clone();
        let dir = app_dir.clone();
        let (driver_name, default_agent) = tokio::task::spawn_blocking(move || {
            let driver = match &harness {
                Some(name) => drivers.get(name).ok_or_else(|| {
                    RuntimeError::Unavailable(format!(
                        "the project selects harness `{name}`, but no driver of that name is loaded"
                    ))
                })?,
                None => drivers.detect(&dir).ok_or_else(|| {
                    RuntimeError::Unavailable(
                        "no loaded driver can serve this project's harness app".into(),
                    )
                })?,
            };
            let discovery = driver.driver.discover(&dir).map_err(|e| {
                RuntimeError::Unavailable(format!("the harness app cannot be loaded: {e}"))
            })?;
            Ok::<_, RuntimeError>((
                driver.name.clone(),
                discovery.default_agent.unwrap_or_else(|| "default".into()),
            ))
        })
        .await
        .map_err(|e| RuntimeError::Store(StoreError::Task(e.to_string())))??;

        let now = store::now();
        let row = models::Session {
            id: store::new_id("sess"),
            org_id: org_id.to_string(),
            project_id: project.id.clone(),
            driver: driver_name,
            harness_session_id: None,
            status: "active".into(),
            current_agent: default_agent,
            permission_mode: None,
            metadata: Value::Object(req.metadata.unwrap_or_default()).to_string(),
            participants: "[]".into(),
            pending_input: None,
            parent_id: None,
            last_seq: 0,
            created_at: now,
            updated_at: now,
        };
        let workspace = self.workspace_dir(org_id, &row.id);
        std::fs::create_dir_all(&workspace).map_err(|e| {
            RuntimeError::Unavailable(format!("cannot create the session workspace: {e}"))
        })?;
        let inserted = row.clone();
        self.store
            .write_async(move |c| sessions::insert(c, &inserted))
            .await?;
        Ok((view(&row, &project), true))
    }

    async fn pick_project(
        &self,
        org_id: &str,
        reference: Option<&str>,
    ) -> Result<models::Project, RuntimeError> {
        let org = org_id.to_string();
        let enabled = self
            .store
            .read_async(move |c| projects::list_enabled(c, &org))
            .await?;
        let names = || {
            enabled
                .iter()
                .map(|p| p.slug.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match reference {
            Some(r) => enabled
                .iter()
                .find(|p| p.slug == r || p.id == r)
                .cloned()
                .ok_or_else(|| {
                    invalid(
                        "project",
                        format!("unknown project `{r}`; the org's projects are: {}", names()),
                    )
                }),
            None => match enabled.len() {
                1 => Ok(enabled[0].clone()),
                0 => Err(invalid(
                    "project",
                    "the org has no project to run sessions in",
                )),
                _ => Err(invalid(
                    "project",
                    format!(
                        "required: the org has several projects ({}); name one",
                        names()
                    ),
                )),
            },
        }
    }

    /// A session of the caller's org.
    pub async fn get_session(&self, org_id: &str, id: &str) -> Result<SessionView, RuntimeError> {
        let (org, id) = (org_id.to_string(), id.to_string());
        self.store
            .read_async(move |c| {
                let s = sessions::get(c, &org, &id)?;
                let p = projects::get(c, &org, &s.project_id)?;
                Ok(view(&s, &p))
            })
            .await
            .map_err(Into::into)
    }

    pub(crate) fn workspace_dir(&self, org_id: &str, session_id: &str) -> PathBuf {
        workspace_path(&self.settings().data_dir, org_id, session_id)
    }
}

fn workspace_path(data_dir: &Path, org_id: &str, session_id: &str) -> PathBuf {
    data_dir.join("workspaces").join(org_id).join(session_id)
}

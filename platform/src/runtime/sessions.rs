//! Creating, resuming, listing, reading and closing sessions; participants.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::{NaiveDateTime, SecondsFormat};
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::app_settings::{AppSettings, PermissionMode};
use super::{Runtime, RuntimeError};
use crate::store::sessions::{SessionFilter, SessionPatch};
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
    /// `interactive` or `autonomous` for this session.
    pub permission_mode: Option<String>,
    /// Whether the caller may set a looser `permission_mode` than the app's (API keys may; an
    /// end user's session token may not).
    pub may_loosen_approvals: bool,
    /// A preview release to run (`<project>@v<N>` routes); the active release when absent.
    pub release: Option<i64>,
}

/// `GET /v1/sessions` input.
#[derive(Clone, Debug, Default)]
pub struct ListSessions {
    /// Only this project (slug or id).
    pub project: Option<String>,
    /// Only this status.
    pub status: Option<String>,
    /// Only sessions whose metadata has these key/value pairs (values compared as text).
    pub metadata: Vec<(String, String)>,
    /// Page size (1..=100, default 20).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One page of sessions.
#[derive(Clone, Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct SessionPage {
    /// Newest first.
    pub data: Vec<SessionView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The public session object.
#[derive(Clone, Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct SessionView {
    /// `sess_...`
    pub id: String,
    /// The caller's tags.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// The agent handling turns.
    pub current_agent: String,
    /// `active` or `closed`.
    pub status: String,
    /// ISO-8601, `+00:00`.
    pub created_at: String,
    /// ISO-8601, `+00:00`.
    pub updated_at: String,
    /// The parent session, for sub-sessions.
    pub parent_id: Option<String>,
    /// The approval the session waits for (the `input_required` payload), if any.
    #[schema(value_type = Option<Object>)]
    pub pending_input: Option<Value>,
    /// `interactive`, `autonomous`, or `null` (the app's setting applies).
    pub permission_mode: Option<String>,
    /// `{name, type, display_name, joined_at, turns, last_turn_at}` per participant.
    #[schema(value_type = Vec<Object>)]
    pub participants: Value,
    /// The project and the version the session is pinned to.
    pub project: ProjectRef,
}

/// Which project a session belongs to and the version it is pinned to.
#[derive(Clone, Debug, Serialize, PartialEq, utoipa::ToSchema)]
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

pub(crate) fn parse_json(s: &str) -> Value {
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

pub(crate) fn invalid(field: &str, msg: impl Into<String>) -> RuntimeError {
    RuntimeError::Invalid(vec!["body".into(), field.into()], msg.into())
}

/// Loads a session of the org, and its project; when `project_id` is given the session must
/// belong to it (a session of another project is not found, like one of another org).
pub(crate) fn load(
    c: &mut store::Conn,
    org_id: &str,
    id: &str,
    project_id: Option<&str>,
) -> Result<(models::Session, models::Project), StoreError> {
    let (s, p) = sessions::get_with_project(c, org_id, id)?;
    if project_id.is_some_and(|p| p != s.project_id) {
        return Err(StoreError::NotFound);
    }
    Ok((s, p))
}

fn encode_cursor(s: &models::Session) -> String {
    format!("{}.{}", s.created_at.and_utc().timestamp_micros(), s.id)
}

fn decode_cursor(c: &str) -> Option<(NaiveDateTime, String)> {
    let (micros, id) = c.split_once('.')?;
    let t = chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?.naive_utc();
    Some((t, id.to_string()))
}

fn metadata_matches(s: &models::Session, wanted: &[(String, String)]) -> bool {
    if wanted.is_empty() {
        return true;
    }
    let meta = parse_json(&s.metadata);
    wanted.iter().all(|(k, v)| match meta.get(k) {
        Some(Value::String(s)) => s == v,
        // Numbers and booleans match their JSON text (`?metadata.tier=2`).
        Some(other) => serde_json::from_str::<Value>(v).is_ok_and(|parsed| &parsed == other),
        None => false,
    })
}

/// How large a session's metadata may be.
#[derive(Clone, Copy, Debug)]
struct MetadataLimits {
    value_bytes: usize,
    total_bytes: usize,
}

impl From<&super::RuntimeSettings> for MetadataLimits {
    fn from(s: &super::RuntimeSettings) -> Self {
        Self {
            value_bytes: s.metadata_max_value_bytes,
            total_bytes: s.metadata_max_bytes,
        }
    }
}

impl MetadataLimits {
    /// Why `m` is too large, if it is: key count, one value's size (as JSON), the whole size.
    fn check(&self, m: &Map<String, Value>) -> Result<(), String> {
        if m.len() > MAX_METADATA_KEYS {
            return Err(format!(
                "at most {MAX_METADATA_KEYS} keys are allowed, got {}",
                m.len()
            ));
        }
        for (k, v) in m {
            let size = v.to_string().len();
            if size > self.value_bytes {
                return Err(format!(
                    "the value of `{k}` is {size} bytes as JSON; at most {} are allowed",
                    self.value_bytes
                ));
            }
        }
        let total = Value::Object(m.clone()).to_string().len();
        if total > self.total_bytes {
            return Err(format!(
                "metadata would be {total} bytes as JSON; at most {} are allowed",
                self.total_bytes
            ));
        }
        Ok(())
    }
}

impl Runtime {
    /// Creates a session, or resumes `session_id` (merging metadata key by key). Returns the
    /// session and whether it was created. `scope` pins the project (project routes).
    pub async fn create_session(
        &self,
        org_id: &str,
        scope: Option<&str>,
        req: CreateSession,
    ) -> Result<(SessionView, bool), RuntimeError> {
        let limits = MetadataLimits::from(&*self.settings());
        if let Some(m) = &req.metadata {
            limits.check(m).map_err(|m| invalid("metadata", m))?;
        }
        if let Some(mode) = &req.permission_mode {
            if PermissionMode::parse(mode).is_none() {
                return Err(invalid(
                    "permission_mode",
                    format!("must be `interactive` or `autonomous`, got `{mode}`"),
                ));
            }
        }
        if let Some(id) = req.session_id.clone() {
            return self.resume(org_id, scope, &id, req.metadata).await;
        }

        let project = match scope {
            Some(project_id) => {
                let (org, id) = (org_id.to_string(), project_id.to_string());
                self.store
                    .read_async(move |c| projects::get_enabled(c, &org, &id))
                    .await
                    .map_err(|_| RuntimeError::NotFound("project"))?
            }
            None => self.pick_project(org_id, req.project.as_deref()).await?,
        };
        let app_dir = self.app_dir_of(&project, req.release).await?;
        if !req.may_loosen_approvals
            && req
                .permission_mode
                .as_deref()
                .and_then(PermissionMode::parse)
                == Some(PermissionMode::Autonomous)
        {
            let settings = self
                .app_settings
                .get(&app_dir)
                .map_err(|m| super::app_problem(&app_dir, &m))?;
            if settings.runtime.permission_mode != Some(PermissionMode::Autonomous) {
                return Err(RuntimeError::Forbidden(
                    "a session token cannot loosen the app's approval policy: permission_mode \
                     `autonomous` needs an API key (or the app's runtime.permission_mode)"
                        .into(),
                ));
            }
        }
        let (driver_name, default_agent) = self.resolve_driver(&project, &app_dir).await?;

        let now = store::now();
        let row = models::Session {
            id: store::new_id("sess"),
            org_id: org_id.to_string(),
            project_id: project.id.clone(),
            driver: driver_name,
            app_path: app_dir.to_string_lossy().into_owned(),
            harness_session_id: None,
            status: "active".into(),
            current_agent: default_agent,
            permission_mode: req.permission_mode,
            metadata: Value::Object(req.metadata.unwrap_or_default()).to_string(),
            participants: "[]".into(),
            pending_input: None,
            approved_tools: "[]".into(),
            parent_id: None,
            last_seq: 0,
            created_at: now,
            updated_at: now,
        };
        let workspace = self.workspace_dir(org_id, &row.id);
        let app = app_dir.clone();
        tokio::task::spawn_blocking(move || super::workspace::copy_app(&app, &workspace))
            .await
            .map_err(|e| RuntimeError::Store(StoreError::Task(e.to_string())))?
            .map_err(|e| {
                RuntimeError::Unavailable(format!("cannot create the session workspace: {e}"))
            })?;
        let inserted = row.clone();
        // For orgs with webhooks, `session.created` goes in the insert's transaction.
        let event = self.webhook_org(org_id).then(|| {
            crate::store::org_events::new_event(
                org_id,
                "session.created",
                &serde_json::json!({"id": row.id, "project_id": row.project_id,
                        "driver": row.driver, "metadata": parse_json(&row.metadata)}),
            )
        });
        self.store
            .write_async(move |c| {
                sessions::insert(c, &inserted)?;
                if let Some(e) = &event {
                    crate::store::org_events::insert(c, e)?;
                }
                Ok(())
            })
            .await?;
        self.fire_hooks(
            "session.created",
            &row,
            serde_json::json!({"metadata": parse_json(&row.metadata), "driver": row.driver}),
        );
        Ok((view(&row, &project), true))
    }

    async fn resume(
        &self,
        org_id: &str,
        scope: Option<&str>,
        id: &str,
        metadata: Option<Map<String, Value>>,
    ) -> Result<(SessionView, bool), RuntimeError> {
        let (org, id, scope) = (
            org_id.to_string(),
            id.to_string(),
            scope.map(str::to_string),
        );
        let limits = MetadataLimits::from(&*self.settings());
        self.store
            .write_async(move |c| {
                let Some(extra) = metadata.filter(|m| !m.is_empty()) else {
                    let (s, p) = load(c, &org, &id, scope.as_deref())?;
                    return Ok((view(&s, &p), false));
                };
                sessions::lock_row(c, &org, &id)?;
                let (s, _) = load(c, &org, &id, scope.as_deref())?;
                let mut merged = match parse_json(&s.metadata) {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                merged.extend(extra);
                limits.check(&merged).map_err(StoreError::Conflict)?;
                let patch = SessionPatch {
                    metadata: Some(Value::Object(merged).to_string()),
                    ..Default::default()
                };
                sessions::update(c, &org, &id, patch)?;
                let (s, p) = load(c, &org, &id, None)?;
                Ok((view(&s, &p), false))
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict(m) => invalid("metadata", m),
                other => other.into(),
            })
    }

    /// A project of the org with its driver and what the app defines (agents, skills).
    pub async fn describe_project(
        &self,
        project: models::Project,
    ) -> Result<(models::Project, Option<String>, karta_driver_api::Discovery), RuntimeError> {
        let drivers = self.drivers.clone();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            // What new sessions get: the live release once there is one.
            let live = store
                .read(|c| crate::store::releases::active(c, &project.id))
                .ok()
                .flatten();
            let dir = PathBuf::from(live.map_or(project.source_path.clone(), |r| r.path));
            let driver = match &project.harness {
                Some(name) => drivers.get(name),
                None => drivers.detect(&dir),
            };
            let discovery = match &driver {
                Some(d) => d.driver.discover(&dir).unwrap_or_default(),
                None => karta_driver_api::Discovery::default(),
            };
            Ok((project, driver.map(|d| d.name.clone()), discovery))
        })
        .await
        .map_err(|e| RuntimeError::Store(StoreError::Task(e.to_string())))?
    }

    /// The app a new session of the project runs: the preview `release` when asked for, else
    /// the active release; the project's folder while it has never been released. A project
    /// with releases but none active is a conflict.
    async fn app_dir_of(
        &self,
        project: &models::Project,
        release: Option<i64>,
    ) -> Result<PathBuf, RuntimeError> {
        let (pid, want) = (project.id.clone(), release);
        let (chosen, released) = self
            .store
            .read_async(move |c| match want {
                Some(v) => Ok((
                    crate::store::releases::live_preview(c, &pid, v, store::now())?,
                    true,
                )),
                None => Ok((
                    crate::store::releases::active(c, &pid)?,
                    crate::store::releases::has_production(c, &pid)?,
                )),
            })
            .await?;
        match (chosen, released) {
            (Some(r), _) => Ok(PathBuf::from(r.path)),
            (None, false) if !project.source_path.is_empty() => {
                Ok(PathBuf::from(&project.source_path))
            }
            (None, false) => Err(RuntimeError::Conflict(
                "the project has no release yet: deploy one first".into(),
            )),
            (None, true) => Err(RuntimeError::Conflict(match release {
                Some(v) => format!("the project has no live preview v{v} (it may have expired)"),
                None => "the project has releases but none is active: roll back to one".into(),
            })),
        }
    }

    /// Checks an app folder the way a session on it would be served (its driver, `karta.jsonc`,
    /// agents): nothing, or what is wrong.
    pub async fn validate_app(&self, project: &models::Project, dir: &Path) -> Result<(), String> {
        self.resolve_driver(project, dir)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Picks the driver for a project and the app's default agent.
    async fn resolve_driver(
        &self,
        project: &models::Project,
        app_dir: &Path,
    ) -> Result<(String, String), RuntimeError> {
        let drivers = self.drivers.clone();
        let harness = project.harness.clone();
        let dir = app_dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
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
            AppSettings::load(&dir).map_err(|e| super::app_problem(&dir, &e))?;
            let discovery = driver
                .driver
                .discover(&dir)
                .map_err(|e| super::app_problem(&dir, &e))?;
            Ok::<_, RuntimeError>((
                driver.name.clone(),
                discovery.default_agent.unwrap_or_else(|| "default".into()),
            ))
        })
        .await
        .map_err(|e| RuntimeError::Store(StoreError::Task(e.to_string())))?
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

    /// Resolves a project reference (slug or id) of the org to its id.
    pub async fn project_id(&self, org_id: &str, reference: &str) -> Result<String, RuntimeError> {
        let (org, r) = (org_id.to_string(), reference.to_string());
        self.store
            .read_async(move |c| projects::get_enabled(c, &org, &r))
            .await
            .map(|p| p.id)
            .map_err(|e| match e {
                StoreError::NotFound => RuntimeError::NotFound("project"),
                other => RuntimeError::Store(other),
            })
    }

    /// An enabled project of the org, by slug or id.
    pub async fn project(
        &self,
        org_id: &str,
        reference: &str,
    ) -> Result<models::Project, RuntimeError> {
        let (org, r) = (org_id.to_string(), reference.to_string());
        self.store
            .read_async(move |c| projects::get_enabled(c, &org, &r))
            .await
            .map_err(|e| match e {
                StoreError::NotFound => RuntimeError::NotFound("project"),
                other => RuntimeError::Store(other),
            })
    }

    /// The project of the org's session, if there is such a session.
    pub async fn session_project(&self, org_id: &str, id: &str) -> Option<String> {
        let (org, id) = (org_id.to_string(), id.to_string());
        self.store
            .read_async(move |c| sessions::get(c, &org, &id))
            .await
            .ok()
            .map(|s| s.project_id)
    }

    /// A session of the caller's org (and project, when scoped).
    pub async fn get_session(
        &self,
        org_id: &str,
        scope: Option<&str>,
        id: &str,
    ) -> Result<SessionView, RuntimeError> {
        let (org, id, scope) = (
            org_id.to_string(),
            id.to_string(),
            scope.map(str::to_string),
        );
        self.store
            .read_async(move |c| {
                let (s, p) = load(c, &org, &id, scope.as_deref())?;
                Ok(view(&s, &p))
            })
            .await
            .map_err(Into::into)
    }

    /// The org's sessions, newest first, filtered and paged.
    pub async fn list_sessions(
        &self,
        org_id: &str,
        q: ListSessions,
    ) -> Result<SessionPage, RuntimeError> {
        let limit = q.limit.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            return Err(RuntimeError::Invalid(
                vec!["query".into(), "limit".into()],
                "must be between 1 and 100".into(),
            ));
        }
        let before = match &q.cursor {
            Some(c) => Some(decode_cursor(c).ok_or_else(|| {
                RuntimeError::Invalid(
                    vec!["query".into(), "cursor".into()],
                    "is not a cursor this API returned".into(),
                )
            })?),
            None => None,
        };
        let project_id = match &q.project {
            Some(r) => Some(self.project_id(org_id, r).await?),
            None => None,
        };
        let org = org_id.to_string();
        let (status, wanted) = (q.status.clone(), q.metadata.clone());
        self.store
            .read_async(move |c| {
                let projects: HashMap<String, models::Project> = projects::list_all(c, &org)?
                    .into_iter()
                    .map(|p| (p.id.clone(), p))
                    .collect();
                let mut filter = SessionFilter {
                    project_id,
                    status,
                    before,
                };
                let mut data = Vec::new();
                // Metadata is filtered here, not in SQL (JSON operators differ per backend), so
                // read batches until the page is full or the sessions run out.
                loop {
                    let batch = sessions::list(c, &org, &filter, (limit * 2) as i64)?;
                    let exhausted = batch.len() < limit * 2;
                    for s in &batch {
                        filter.before = Some((s.created_at, s.id.clone()));
                        if !metadata_matches(s, &wanted) {
                            continue;
                        }
                        if let Some(p) = projects.get(&s.project_id) {
                            data.push((encode_cursor(s), view(s, p)));
                        }
                        if data.len() == limit + 1 {
                            break;
                        }
                    }
                    if data.len() > limit || exhausted {
                        break;
                    }
                }
                let next_cursor = if data.len() > limit {
                    data.truncate(limit);
                    data.last().map(|(c, _)| c.clone())
                } else {
                    None
                };
                Ok(SessionPage {
                    data: data.into_iter().map(|(_, v)| v).collect(),
                    next_cursor,
                })
            })
            .await
            .map_err(Into::into)
    }

    /// Adds a participant (201 semantics: `true`) or updates an existing one's display name.
    pub async fn add_participant(
        &self,
        org_id: &str,
        scope: Option<&str>,
        id: &str,
        name: &str,
        kind: &str,
        display_name: Option<String>,
    ) -> Result<(SessionView, bool), RuntimeError> {
        if name.trim().is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        if kind != "human" && kind != "ai" {
            return Err(invalid(
                "type",
                format!("must be `human` or `ai`, got `{kind}`"),
            ));
        }
        let (org, id, scope) = (
            org_id.to_string(),
            id.to_string(),
            scope.map(str::to_string),
        );
        let (name, kind) = (name.to_string(), kind.to_string());
        self.store
            .write_async(move |c| {
                sessions::lock_row(c, &org, &id)?;
                let (s, _) = load(c, &org, &id, scope.as_deref())?;
                let mut list: Vec<Value> =
                    serde_json::from_str(&s.participants).unwrap_or_default();
                let added = match list.iter_mut().find(|p| p["name"] == name.as_str()) {
                    Some(p) => {
                        if display_name.is_some() {
                            p["display_name"] = json!(display_name);
                        }
                        false
                    }
                    None => {
                        list.push(participant(&name, &kind, display_name));
                        true
                    }
                };
                let patch = SessionPatch {
                    participants: Some(Value::Array(list).to_string()),
                    ..Default::default()
                };
                sessions::update(c, &org, &id, patch)?;
                let (s, p) = load(c, &org, &id, None)?;
                Ok((view(&s, &p), added))
            })
            .await
            .map_err(Into::into)
    }

    /// Closes a session: a running turn is cancelled, the harness is told, and later sends are
    /// refused with 409. Closing a closed session changes nothing.
    pub async fn close_session(
        &self,
        org_id: &str,
        scope: Option<&str>,
        id: &str,
    ) -> Result<SessionView, RuntimeError> {
        let (org, sid, sc) = (
            org_id.to_string(),
            id.to_string(),
            scope.map(str::to_string),
        );
        let (s, _) = self
            .store
            .read_async(move |c| load(c, &org, &sid, sc.as_deref()))
            .await?;
        if s.status != "closed" {
            self.cancel_running(id);
            let (org, sid) = (org_id.to_string(), id.to_string());
            self.store
                .write_async(move |c| {
                    let patch = SessionPatch {
                        status: Some("closed".into()),
                        pending_input: Some(None),
                        ..Default::default()
                    };
                    sessions::update(c, &org, &sid, patch)
                })
                .await?;
            if let Some(d) = self.drivers.get(&s.driver) {
                self.end_harness(&d, id).await;
            }
            // The token dies with the session even when its driver is gone.
            self.confinement.gateway.grants.revoke(id);
            self.confinement.gateway.tally.forget(id);
            self.warm.forget(id);
            // A closed session never runs again: its workspace (and the harness's home beside
            // it) goes, so closed sessions do not fill the disk.
            let ws = self.workspace_dir(org_id, id);
            let _ = tokio::task::spawn_blocking(move || {
                let mut home = ws.clone().into_os_string();
                home.push(".home");
                for dir in [ws, PathBuf::from(home)] {
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            tracing::warn!(dir = %dir.display(), error = %e, "workspace not removed");
                        }
                    }
                }
            })
            .await;
        }
        self.get_session(org_id, scope, id).await
    }

    /// Removes workspaces that belong to no open session (closed while Karta was down, or
    /// left by a crash) and returns how many went. Blocking; run at start.
    pub fn sweep_workspaces(&self) -> Result<usize, StoreError> {
        let root = self.settings().data_dir.join("workspaces");
        let mut found: Vec<(String, PathBuf)> = Vec::new();
        let Ok(orgs) = std::fs::read_dir(&root) else {
            return Ok(0);
        };
        for org in orgs.flatten() {
            let Ok(entries) = std::fs::read_dir(org.path()) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                // `<session>.home` belongs to `<session>`.
                let id = name.strip_suffix(".home").unwrap_or(&name).to_string();
                found.push((id, e.path()));
            }
        }
        let ids: Vec<String> = found.iter().map(|(id, _)| id.clone()).collect();
        let open = self.store.read(|c| sessions::open_among(c, &ids))?;
        let mut removed = 0;
        for (id, path) in found {
            if open.contains(&id) {
                continue;
            }
            match std::fs::remove_dir_all(&path) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(dir = %path.display(), error = %e, "stray workspace not removed")
                }
            }
        }
        Ok(removed)
    }

    pub(crate) fn workspace_dir(&self, org_id: &str, session_id: &str) -> PathBuf {
        self.settings()
            .data_dir
            .join("workspaces")
            .join(org_id)
            .join(session_id)
    }
}

/// A participant entry.
pub(crate) fn participant(name: &str, kind: &str, display_name: Option<String>) -> Value {
    json!({
        "name": name,
        "type": kind,
        "display_name": display_name,
        "joined_at": iso(store::now()),
        "turns": 0,
        "last_turn_at": null,
    })
}

/// The session's participants list (JSON) after a turn sent by `name` at `at`: its entry
/// (added, as of `at`, if it is new) counts one more turn. An unreadable list starts over.
pub(crate) fn count_participant_turn(
    list: &str,
    name: &str,
    kind: &str,
    at: NaiveDateTime,
) -> String {
    let mut list: Vec<Value> = serde_json::from_str(list).unwrap_or_default();
    let idx = match list.iter().position(|p| p["name"] == name) {
        Some(i) => i,
        None => {
            let mut p = participant(name, kind, None);
            p["joined_at"] = json!(iso(at));
            list.push(p);
            list.len() - 1
        }
    };
    let turns = list[idx]["turns"].as_u64().unwrap_or(0) + 1;
    list[idx]["turns"] = json!(turns);
    list[idx]["last_turn_at"] = json!(iso(at));
    Value::Array(list).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    #[test]
    fn a_turn_counts_for_its_sender_who_joins_on_the_first() {
        let once = count_participant_turn("[]", "ann", "human", at("2026-12-07 10:00:00"));
        let list: Vec<Value> = serde_json::from_str(&once).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["name"], "ann");
        assert_eq!(list[0]["type"], "human");
        assert_eq!(list[0]["turns"], 1);
        assert_eq!(list[0]["joined_at"], list[0]["last_turn_at"]);

        let bob = count_participant_turn(&once, "bob", "ai", at("2026-12-07 10:01:00"));
        let twice = count_participant_turn(&bob, "ann", "human", at("2026-12-07 10:02:00"));
        let list: Vec<Value> = serde_json::from_str(&twice).unwrap();
        let names: Vec<(&str, u64)> = list
            .iter()
            .map(|p| (p["name"].as_str().unwrap(), p["turns"].as_u64().unwrap()))
            .collect();
        assert_eq!(names, vec![("ann", 2), ("bob", 1)]);
        // Joined at the first turn; the last one moved on.
        assert_ne!(list[0]["joined_at"], list[0]["last_turn_at"]);
        // A list that does not parse starts over rather than failing the turn's commit.
        let fresh = count_participant_turn("not json", "ann", "human", at("2026-12-07 10:03:00"));
        assert_eq!(serde_json::from_str::<Vec<Value>>(&fresh).unwrap().len(), 1);
    }
}

//! The Managed Agents adapter in Anthropic's own wire shape, so the official Anthropic SDK
//! drives it unchanged with `base_url = "<karta>/v1/projects/<project>/managed-agents"`: the
//! SDK's `/v1/sessions...` paths, `x-api-key`, batches of events (`{"events": [...]}` answered
//! `{"data": [...]}`), `user.message` content blocks, and a tool confirmation naming the
//! `agent.tool_use` entry by its `id` (`tool_use_id`). The session and its log are the same as
//! the Karta-shaped routes' (`super::managed`).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::gate;
use super::managed::{self as karta, apply, bad, session_of, store_err, SessionPath, UserEvent};
use crate::app::App;
use crate::config::Adapter;
use crate::http::auth::Access;
use crate::http::error::{ApiError, ErrorBody};
use crate::platform::keys::Scope;

/// Registers the routes under `base` (`/v1/projects/{project_ref}/managed-agents`).
pub fn configure(cfg: &mut web::ServiceConfig, base: &str) {
    cfg.route(&format!("{base}/v1/sessions"), web::post().to(create))
        .route(
            &format!("{base}/v1/sessions/{{session_id}}"),
            web::get().to(state),
        )
        .route(
            &format!("{base}/v1/sessions/{{session_id}}/events"),
            web::post().to(send),
        )
        .route(
            &format!("{base}/v1/sessions/{{session_id}}/events"),
            web::get().to(list),
        )
        .route(
            &format!("{base}/v1/sessions/{{session_id}}/events/stream"),
            web::get().to(stream),
        );
}

/// The session's state and its log so far (as the Karta-shaped route).
#[utoipa::path(
    get,
    path = "/v1/projects/{project_ref}/managed-agents/v1/sessions/{session_id}",
    tag = "adapters",
    params(("project_ref" = String, Path, description = "Project slug or id"), ("session_id" = String, Path, description = "`sess_...`")),
    responses(
        (status = 200, description = "The session (Anthropic SDK path)", body = Object),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 404, description = "No such session in the project", body = ErrorBody),
    ),
    security(("bearer" = []), ("x-api-key" = []))
)]
pub async fn state(
    app: web::Data<App>,
    access: Access,
    path: web::Path<SessionPath>,
) -> Result<HttpResponse, ApiError> {
    karta::state(app, access, path).await
}

/// Streams the session's log from `after` on (as the Karta-shaped route).
#[utoipa::path(
    get,
    path = "/v1/projects/{project_ref}/managed-agents/v1/sessions/{session_id}/events/stream",
    tag = "adapters",
    params(("project_ref" = String, Path, description = "Project slug or id"), ("session_id" = String, Path, description = "`sess_...`"), karta::StreamQuery),
    responses(
        (status = 200, description = "Entries as server-sent events, then live ones (Anthropic SDK path)", content_type = "text/event-stream"),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 404, description = "No such session in the project", body = ErrorBody),
    ),
    security(("bearer" = []), ("x-api-key" = []))
)]
pub async fn stream(
    app: web::Data<App>,
    access: Access,
    req: HttpRequest,
    path: web::Path<SessionPath>,
    query: web::Query<karta::StreamQuery>,
) -> Result<HttpResponse, ApiError> {
    karta::stream(app, access, req, path, query).await
}

/// `POST .../v1/sessions`: `agent` and `environment_id` are accepted and ignored (the project's
/// app is the agent); `metadata` tags the session.
#[utoipa::path(
    post,
    path = "/v1/projects/{project_ref}/managed-agents/v1/sessions",
    tag = "adapters",
    params(("project_ref" = String, Path, description = "Project slug or id")),
    request_body(content = Option<Object>, description = "`{\"agent\", \"environment_id\", \"title\", \"metadata\"}` (Anthropic SDK shape)"),
    responses(
        (status = 200, description = "`{\"id\", \"type\": \"session\", \"status\": \"idle\", ...}`", body = Object),
        (status = 400, description = "The body is not a JSON object", body = ErrorBody),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 404, description = "No such project, or the adapter is not enabled", body = ErrorBody),
    ),
    security(("bearer" = []), ("x-api-key" = []))
)]
pub async fn create(
    app: web::Data<App>,
    access: Access,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    gate(&app, &access, Adapter::ManagedAgents, Scope::Write)?;
    let body = karta::json_object(&bytes)?;
    let metadata = match &body["metadata"] {
        Value::Null => None,
        Value::Object(m) => Some(m.clone()),
        _ => return Err(bad("metadata: must be an object")),
    };
    let id = super::new_session(&app, &access, "anthropic.managed_agents", metadata).await?;
    let s = session_of(&app, &access, &id).await?;
    Ok(HttpResponse::Ok().json(json!({
        "id": s.id, "type": "session", "status": "idle", "title": body["title"],
        "metadata": s.metadata, "created_at": s.created_at, "updated_at": s.updated_at,
        "environment_id": body["environment_id"],
    })))
}

/// One upstream event of a batch.
#[derive(Deserialize)]
struct UpstreamEvent {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    content: Value,
    tool_use_id: Option<String>,
    result: Option<String>,
}

/// The text of `content`: a string, or the text blocks of a list.
fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(blocks) => {
            let t: String = blocks
                .iter()
                .filter(|b| b["type"] == "text")
                .filter_map(|b| b["text"].as_str())
                .collect();
            Some(t)
        }
        _ => None,
    }
    .filter(|t| !t.trim().is_empty())
}

/// `POST .../v1/sessions/{id}/events`: a batch of user events, carried out in order.
#[utoipa::path(
    post,
    path = "/v1/projects/{project_ref}/managed-agents/v1/sessions/{session_id}/events",
    tag = "adapters",
    params(("project_ref" = String, Path, description = "Project slug or id"), ("session_id" = String, Path, description = "`sess_...`")),
    request_body(content = Object, description = "`{\"events\": [...]}`: `user.message`, `user.tool_confirmation`, `user.interrupt`"),
    responses(
        (status = 200, description = "`{\"data\": [...]}`: the events as received", body = Object),
        (status = 400, description = "A field is missing or invalid, or the type is unknown", body = ErrorBody),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 404, description = "No such session in the project", body = ErrorBody),
        (status = 409, description = "A turn runs, or nothing waits for this confirmation", body = ErrorBody),
    ),
    security(("bearer" = []), ("x-api-key" = []))
)]
pub async fn send(
    app: web::Data<App>,
    access: Access,
    path: web::Path<SessionPath>,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    gate(&app, &access, Adapter::ManagedAgents, Scope::Write)?;
    let body = karta::json_object(&bytes)?;
    let events: Vec<UpstreamEvent> =
        serde_json::from_value(body["events"].clone()).map_err(|e| bad(format!("events: {e}")))?;
    if events.is_empty() {
        return Err(bad("events: must hold at least one event"));
    }
    let sid = path.session_id.as_str();
    let mut sent = Vec::new();
    for (i, e) in events.into_iter().enumerate() {
        let at = |f: &str| format!("events.{i}.{f}");
        let event = match e.kind.as_deref() {
            Some("user.message") => UserEvent::Message(
                text_of(&e.content)
                    .ok_or_else(|| bad(format!("{}: text content required", at("content"))))?,
            ),
            Some("user.tool_confirmation") => {
                let tool_use_id = e
                    .tool_use_id
                    .clone()
                    .ok_or_else(|| bad(format!("{}: required", at("tool_use_id"))))?;
                let request_id = request_of(&app, &access, sid, &tool_use_id).await?;
                UserEvent::Confirm {
                    request_id,
                    result: e.result.clone().unwrap_or_default(),
                    tool_use_id: Some(tool_use_id),
                }
            }
            Some("user.interrupt") => UserEvent::Interrupt,
            Some(other) => {
                return Err(bad(format!(
                    "{}: unsupported event type `{other}`",
                    at("type")
                )))
            }
            None => return Err(bad(format!("{}: required", at("type")))),
        };
        apply(&app, &access, sid, event).await?;
        let mut echo = json!({
            "id": crate::store::new_id("sevt"),
            "type": e.kind,
            "processed_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        for (k, v) in [
            ("content", &e.content),
            ("tool_use_id", &json!(e.tool_use_id)),
            ("result", &json!(e.result)),
        ] {
            if !v.is_null() {
                echo[k] = v.clone();
            }
        }
        sent.push(echo);
    }
    Ok(HttpResponse::Ok().json(json!({ "data": sent })))
}

/// The approval an `agent.tool_use` entry asks for, by the entry's id (`evt_<session>_<seq>`).
async fn request_of(
    app: &App,
    access: &Access,
    sid: &str,
    entry_id: &str,
) -> Result<String, ApiError> {
    let seq: i64 = entry_id
        .rsplit('_')
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| bad("tool_use_id: not an event id of this session"))?;
    let rows = app
        .managed_log
        .after(access.org(), sid, seq - 1, 1)
        .await
        .map_err(store_err)?;
    let entry: Option<Value> = rows
        .first()
        .filter(|(s, _, _)| *s == seq)
        .and_then(|(_, _, body)| serde_json::from_str(body).ok());
    match entry {
        Some(e) if e["id"] == entry_id => {
            e["request_id"].as_str().map(str::to_string).ok_or_else(|| {
                ApiError::Conflict("that tool use does not wait for a confirmation".into())
            })
        }
        _ => Err(ApiError::Conflict(format!(
            "no event `{entry_id}` waits for a confirmation"
        ))),
    }
}

/// `GET .../v1/sessions/{id}/events`: the log, oldest first (one page of up to 1000).
#[utoipa::path(
    get,
    path = "/v1/projects/{project_ref}/managed-agents/v1/sessions/{session_id}/events",
    tag = "adapters",
    params(("project_ref" = String, Path, description = "Project slug or id"), ("session_id" = String, Path, description = "`sess_...`")),
    responses(
        (status = 200, description = "`{\"data\": [...], \"next_page\": null}`", body = Object),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 404, description = "No such session in the project", body = ErrorBody),
    ),
    security(("bearer" = []), ("x-api-key" = []))
)]
pub async fn list(
    app: web::Data<App>,
    access: Access,
    path: web::Path<SessionPath>,
) -> Result<HttpResponse, ApiError> {
    gate(&app, &access, Adapter::ManagedAgents, Scope::Read)?;
    let s = session_of(&app, &access, &path.session_id).await?;
    let data: Vec<Value> = app
        .managed_log
        .after(access.org(), &s.id, 0, 1000)
        .await
        .map_err(store_err)?
        .into_iter()
        .filter_map(|(_, _, body)| serde_json::from_str(&body).ok())
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "data": data, "next_page": null })))
}

//! `/v1/projects/{project_ref}/managed-agents/sessions...`: Anthropic Managed Agents over Karta
//! sessions (spec 03 §5). Posting a user event returns at once (202); what the turn does lands
//! in the session's log of `agent.*` and `session.*` entries, numbered from 1, which a client
//! streams from any point with `?after=<seq>` (or `Last-Event-ID`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use karta_driver_api::DecisionKind;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::time::{interval_at, Instant};
use utoipa::{IntoParams, ToSchema};

use super::{gate, new_session, start_turn};
use crate::adapters::managed::{self, Mapper};
use crate::adapters::TurnEvent;
use crate::app::App;
use crate::config::Adapter;
use crate::http::auth::Access;
use crate::http::error::{ApiError, ErrorBody};
use crate::platform::keys::Scope;
use crate::platform::managed_log::ManagedLog;
use crate::runtime::{Runtime, SessionView, Subscription};

/// Entries read from the log per query (a stream catching up reads page by page).
const PAGE: i64 = 500;
/// Entries a session-state answer holds at most (the stream has them all).
const STATE_EVENTS: i64 = 1000;
/// How often a waiting stream looks at the log even without a wake-up (another instance may
/// have written it).
const POLL: Duration = Duration::from_secs(2);

/// Path of one session.
#[derive(Deserialize)]
pub struct SessionPath {
    pub(super) session_id: String,
}

/// `?after=`
#[derive(Deserialize, IntoParams)]
pub struct StreamQuery {
    /// Replay entries after this sequence number (default 0: the whole log).
    after: Option<i64>,
}

/// `POST .../managed-agents/sessions` body (optional).
#[derive(Deserialize, ToSchema)]
pub struct CreateManagedBody {
    /// Tags for the session (the native metadata limits apply).
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
}

/// `POST .../events` body: one user event.
#[derive(Deserialize, ToSchema)]
pub struct UserEventBody {
    /// `user.message`, `user.tool_confirmation` or `user.interrupt`.
    #[serde(rename = "type")]
    kind: Option<String>,
    /// The message (`user.message`).
    text: Option<String>,
    /// The approval answered (`user.tool_confirmation`): the `request_id` of the
    /// `agent.tool_use` entry that asks.
    request_id: Option<String>,
    /// `allow` (approve once) or `deny` (`user.tool_confirmation`).
    result: Option<String>,
    /// The tool call it is about (recorded as given).
    tool_use_id: Option<String>,
}

pub(super) fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// A JSON object body, or an empty one; anything else is a 400.
pub(super) fn json_object(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    if !v.is_object() {
        return Err(bad("the body must be a JSON object"));
    }
    Ok(v)
}

/// The route's session, if the caller may see it (an end user's token: only its own).
pub(super) async fn session_of(
    app: &App,
    access: &Access,
    id: &str,
) -> Result<SessionView, ApiError> {
    let s = app
        .runtime
        .get_session(access.org(), access.scope(), id)
        .await?;
    if let Some(sub) = access.subject() {
        if s.metadata["user_id"] != sub {
            return Err(ApiError::NotFound("session not found".into()));
        }
    }
    Ok(s)
}

/// Creates a Managed Agents session: a Karta session of the project, idle.
#[utoipa::path(
    post,
    path = "/v1/projects/{project_ref}/managed-agents/sessions",
    tag = "adapters",
    params(("project_ref" = String, Path, description = "Project slug or id")),
    request_body(content = Option<CreateManagedBody>, description = "Optional"),
    responses(
        (status = 201, description = "`{\"id\", \"type\": \"session\", \"status\": \"idle\", \"metadata\", \"created_at\"}`", body = Object),
        (status = 400, description = "The body is not a JSON object", body = ErrorBody),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 404, description = "No such project, or the adapter is not enabled", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    app: web::Data<App>,
    access: Access,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    gate(&app, &access, Adapter::ManagedAgents, Scope::Write)?;
    let body: CreateManagedBody =
        serde_json::from_value(json_object(&bytes)?).map_err(|e| bad(e.to_string()))?;
    let id = new_session(&app, &access, "anthropic.managed_agents", body.metadata).await?;
    let s = session_of(&app, &access, &id).await?;
    Ok(HttpResponse::Created().json(json!({
        "id": s.id, "type": "session", "status": "idle",
        "metadata": s.metadata, "created_at": s.created_at,
    })))
}

/// Follows a turn to its end, writing its entries into the session's log.
async fn follow(
    log: Arc<ManagedLog>,
    runtime: Arc<Runtime>,
    org: String,
    session: String,
    mut sub: Subscription,
) {
    let mut mapper = Mapper::default();
    while let Some(f) = sub.next(&runtime).await {
        let ev = TurnEvent::from_parts(&f.event_type, f.data());
        if ev != TurnEvent::Other {
            let r = log
                .append(&org, &session, |next| mapper.on(&session, &ev, next))
                .await;
            if let Err(e) = r {
                tracing::error!(session = %session, error = %e, "managed-agents log entry not stored");
            }
        }
        if f.event_type == "done" {
            break;
        }
    }
}

/// Posts one user event: starts a turn, answers a tool confirmation, or interrupts.
#[utoipa::path(
    post,
    path = "/v1/projects/{project_ref}/managed-agents/sessions/{session_id}/events",
    tag = "adapters",
    params(("project_ref" = String, Path, description = "Project slug or id"), ("session_id" = String, Path, description = "`sess_...`")),
    request_body = UserEventBody,
    responses(
        (status = 202, description = "`{\"accepted\": true}`: the outcome goes to the session's log", body = Object),
        (status = 400, description = "A field is missing or invalid, or the type is unknown", body = ErrorBody),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 404, description = "No such session in the project", body = ErrorBody),
        (status = 409, description = "A turn runs or waits for an answer (`user.message`), or nothing waits for this answer", body = ErrorBody),
        (status = 422, description = "A message policy refused the message", body = ErrorBody),
        (status = 503, description = "The harness cannot run now (see Retry-After)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn post_event(
    app: web::Data<App>,
    access: Access,
    path: web::Path<SessionPath>,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    gate(&app, &access, Adapter::ManagedAgents, Scope::Write)?;
    let b: UserEventBody =
        serde_json::from_value(json_object(&bytes)?).map_err(|e| bad(e.to_string()))?;
    let event = match b.kind.as_deref() {
        Some("user.message") => UserEvent::Message(
            b.text
                .filter(|t| !t.trim().is_empty())
                .ok_or_else(|| bad("text: required for user.message"))?,
        ),
        Some("user.tool_confirmation") => UserEvent::Confirm {
            request_id: b
                .request_id
                .ok_or_else(|| bad("request_id: required for user.tool_confirmation"))?,
            result: b.result.unwrap_or_default(),
            tool_use_id: b.tool_use_id,
        },
        Some("user.interrupt") => UserEvent::Interrupt,
        Some(other) => {
            return Err(bad(format!(
                "type: unknown event type `{other}` (user.message, user.tool_confirmation, user.interrupt)"
            )))
        }
        None => return Err(bad("type: required")),
    };
    apply(&app, &access, &path.session_id, event).await?;
    Ok(HttpResponse::Accepted().json(json!({"accepted": true})))
}

/// A user event, in either surface's shape.
pub(super) enum UserEvent {
    /// Start a turn.
    Message(String),
    /// Answer an approval (`result`: `allow` or `deny`).
    Confirm {
        request_id: String,
        result: String,
        tool_use_id: Option<String>,
    },
    /// Cancel the running turn.
    Interrupt,
}

/// Carries out a user event on the route's session.
pub(super) async fn apply(
    app: &web::Data<App>,
    access: &Access,
    sid: &str,
    event: UserEvent,
) -> Result<(), ApiError> {
    let session = session_of(app, access, sid).await?;
    let org = access.org().to_string();
    let log = app.managed_log.clone();
    match event {
        UserEvent::Message(text) => {
            let running =
                managed::is_running(log.last_status(sid).await.map_err(store_err)?.as_deref());
            if running || !session.pending_input.as_ref().is_none_or(Value::is_null) {
                return Err(ApiError::Busy);
            }
            let held = log.hold(sid).await;
            let sub = start_turn(
                app,
                access,
                sid,
                text.clone(),
                None,
                super::TurnMode::default(),
            )
            .await?;
            log.append_held(&org, &held, |_| {
                vec![managed::user_message(&text), managed::running()]
            })
            .await
            .map_err(store_err)?;
            drop(held);
            let rt = app.runtime.clone();
            tokio::spawn(follow(log, rt, org, sid.to_string(), sub));
        }
        UserEvent::Confirm {
            request_id,
            result,
            tool_use_id,
        } => {
            let decision = match result.as_str() {
                "allow" => DecisionKind::ApproveOnce,
                "deny" => DecisionKind::Deny,
                _ => return Err(bad("result: must be `allow` or `deny`")),
            };
            // Held while answering: the turn's next entries come after the answer's.
            let held = log.hold(sid).await;
            let answered = app
                .runtime
                .resolve_input(
                    access.org(),
                    access.scope(),
                    sid,
                    &request_id,
                    decision,
                    None,
                )
                .await;
            match answered {
                Ok(_continuation) => {}
                Err(crate::runtime::RuntimeError::NotFound(_)) => {
                    return Err(ApiError::Conflict(format!(
                        "no tool confirmation `{request_id}` is pending"
                    )))
                }
                Err(e) => return Err(e.into()),
            }
            log.append_held(&org, &held, |_| {
                vec![
                    managed::tool_confirmation(&request_id, &result, tool_use_id.as_deref()),
                    managed::running(),
                ]
            })
            .await
            .map_err(store_err)?;
        }
        UserEvent::Interrupt => {
            app.runtime
                .interrupt(access.org(), access.scope(), sid)
                .await?;
        }
    }
    Ok(())
}

pub(super) fn store_err(e: crate::store::StoreError) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// The session's state and its log so far.
#[utoipa::path(
    get,
    path = "/v1/projects/{project_ref}/managed-agents/sessions/{session_id}",
    tag = "adapters",
    params(("project_ref" = String, Path, description = "Project slug or id"), ("session_id" = String, Path, description = "`sess_...`")),
    responses(
        (status = 200, description = "`{\"id\", \"type\": \"session\", \"status\": \"idle\" | \"running\", \"events\": [...], \"pending_input\", \"metadata\", \"created_at\"}` (the first 1000 entries; the stream has them all)", body = Object),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 404, description = "No such session in the project", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn state(
    app: web::Data<App>,
    access: Access,
    path: web::Path<SessionPath>,
) -> Result<HttpResponse, ApiError> {
    gate(&app, &access, Adapter::ManagedAgents, Scope::Read)?;
    let s = session_of(&app, &access, &path.session_id).await?;
    let log = &app.managed_log;
    let status =
        match managed::is_running(log.last_status(&s.id).await.map_err(store_err)?.as_deref()) {
            true => "running",
            false => "idle",
        };
    let events: Vec<Value> = log
        .after(access.org(), &s.id, 0, STATE_EVENTS)
        .await
        .map_err(store_err)?
        .into_iter()
        .filter_map(|(_, _, body)| serde_json::from_str(&body).ok())
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "id": s.id, "type": "session", "status": status, "events": events,
        "pending_input": s.pending_input, "metadata": s.metadata, "created_at": s.created_at,
    })))
}

struct Follower {
    app: web::Data<App>,
    org: String,
    session: String,
    after: i64,
    pending: VecDeque<Bytes>,
    heartbeat: tokio::time::Interval,
    _room: crate::runtime::StreamRoom,
}

/// Streams the session's log from `after` on, and stays open for later turns.
#[utoipa::path(
    get,
    path = "/v1/projects/{project_ref}/managed-agents/sessions/{session_id}/events/stream",
    tag = "adapters",
    params(("project_ref" = String, Path, description = "Project slug or id"), ("session_id" = String, Path, description = "`sess_...`"), StreamQuery, ("Last-Event-ID" = Option<i64>, Header, description = "Same as `after`")),
    responses(
        (status = 200, description = "Entries as `id: <seq>`, `event: <type>`, `data: <entry>`, then live ones; keep-alive comments while idle", content_type = "text/event-stream"),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 404, description = "No such session in the project", body = ErrorBody),
        (status = 429, description = "Too many streams follow the session, tenant or project", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn stream(
    app: web::Data<App>,
    access: Access,
    req: HttpRequest,
    path: web::Path<SessionPath>,
    query: web::Query<StreamQuery>,
) -> Result<HttpResponse, ApiError> {
    let project = gate(&app, &access, Adapter::ManagedAgents, Scope::Read)?;
    let s = session_of(&app, &access, &path.session_id).await?;
    let header = req
        .headers()
        .get("last-event-id")
        .map(|h| {
            h.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .ok_or_else(|| bad("Last-Event-ID: must be a sequence number"))
        })
        .transpose()?;
    let after = query.after.or(header).unwrap_or(0).max(0);
    let room = app.runtime.stream_room(access.org(), &project, &s.id)?;
    let period = Duration::from_secs(app.config().server.heartbeat_seconds.max(1));
    let state = Follower {
        app: app.clone(),
        org: access.org().to_string(),
        session: s.id,
        after,
        pending: VecDeque::new(),
        heartbeat: interval_at(Instant::now() + period, period),
        _room: room,
    };
    let body = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(b) = st.pending.pop_front() {
                st.heartbeat.reset();
                return Some((Ok::<_, actix_web::Error>(b), st));
            }
            // Armed before the read, so an append between the read and the wait wakes us.
            let chan = st.app.managed_log.channel(&st.session);
            let woken = chan.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match st
                .app
                .managed_log
                .after(&st.org, &st.session, st.after, PAGE)
                .await
            {
                Ok(rows) if !rows.is_empty() => {
                    for (seq, kind, body) in rows {
                        st.after = seq;
                        st.pending.push_back(Bytes::from(format!(
                            "id: {seq}\nevent: {kind}\ndata: {body}\n\n"
                        )));
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(session = %st.session, error = %e, "managed-agents log unreadable; ending the stream");
                    return None;
                }
            }
            tokio::select! {
                _ = &mut woken => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = st.heartbeat.tick() => {
                    return Some((Ok(Bytes::from_static(crate::http::sse::KEEPALIVE)), st));
                }
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

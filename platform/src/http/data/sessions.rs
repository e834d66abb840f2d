//! Session handlers: parse, authorize, call the runtime, map the result.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use karta_driver_api::DecisionKind;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use crate::app::App;
use crate::http::auth::Access;
use crate::http::body;
use crate::http::error::{ApiError, ErrorBody, ValidationErrorBody};
use crate::http::idempotency::{self, Begun};
use crate::http::sse;
use crate::platform::keys::Scope;
use crate::runtime::{
    CreateSession, ListSessions, SendMessage, SessionPage, SessionView, Subscription, TurnOutcome,
};
use crate::store;

/// Path of routes about one session.
#[derive(Deserialize)]
pub struct SessionPath {
    session_id: String,
}

/// Path of the input route.
#[derive(Deserialize)]
pub struct InputPath {
    session_id: String,
    request_id: String,
}

/// A session token bound to an end user reaches only that user's sessions (those whose
/// `metadata.user_id` is the token's subject); others are not found.
async fn check_subject(app: &App, access: &Access, session_id: &str) -> Result<(), ApiError> {
    if let Some(sub) = access.subject() {
        let s = app
            .runtime
            .get_session(access.org(), access.scope(), session_id)
            .await?;
        if s.metadata["user_id"] != sub {
            return Err(ApiError::NotFound("session not found".into()));
        }
    }
    Ok(())
}

/// `POST .../sessions` body.
#[derive(Deserialize, ToSchema)]
pub struct CreateBody {
    /// Free-form tags (at most 50 keys).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
    /// Resume this session instead of creating one.
    #[serde(default)]
    session_id: Option<String>,
    /// Project slug or id (flat route only); defaults to the org's only project.
    #[serde(default)]
    project: Option<String>,
    /// `interactive` or `autonomous`.
    #[serde(default)]
    permission_mode: Option<String>,
}

/// Create (201) or resume (200) a session.
#[utoipa::path(
    post,
    path = "/v1/sessions",
    tag = "sessions",
    request_body = CreateBody,
    responses((status = 201, description = "Created", body = SessionView), (status = 200, description = "Resumed (`session_id` given)", body = SessionView), (status = 400, description = "The body is not JSON", body = ErrorBody), (status = 401, description = "Missing or wrong credential", body = ErrorBody), (status = 403, description = "The credential lacks the scope", body = ErrorBody), (status = 404, description = "No such session in the caller's org (or project)", body = ErrorBody), (status = 422, description = "A field is invalid", body = ValidationErrorBody), (status = 503, description = "The harness cannot run now (see Retry-After)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn create(
    app: web::Data<App>,
    access: Access,
    req: HttpRequest,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    access.require(Scope::Write)?;
    let claim = match idempotency::begin(&app, access.org(), &req, &bytes).await? {
        Begun::Replay(status, body) => return Ok(idempotency::replay(status, body)),
        Begun::Fresh(c) => Some(c),
        Begun::Unkeyed => None,
    };
    let r = create_session(&app, &access, &bytes).await;
    match (r, claim) {
        (Ok((status, body)), claim) => {
            if let Some(c) = claim {
                c.answer(&app, status, &body).await;
            }
            Ok(json_answer(status, body))
        }
        (Err(e), Some(c)) => {
            c.release(&app).await;
            Err(e)
        }
        (Err(e), None) => Err(e),
    }
}

fn json_answer(status: u16, body: Value) -> HttpResponse {
    HttpResponse::build(
        actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::OK),
    )
    .json(body)
}

/// Creates or resumes; the status (201 or 200) and the session.
async fn create_session(
    app: &App,
    access: &Access,
    bytes: &[u8],
) -> Result<(u16, Value), ApiError> {
    let b: CreateBody = body::parse(bytes)?;
    if let Some(sub) = access.subject() {
        match &b.session_id {
            Some(id) => {
                check_subject(app, access, id).await?;
                // A resume must not hand the session to another end user.
                let user = b.metadata.as_ref().and_then(|m| m.get("user_id"));
                if user.is_some_and(|u| u.as_str() != Some(sub)) {
                    return Err(ApiError::Forbidden(
                        "metadata.user_id must equal the session token's subject".into(),
                    ));
                }
            }
            None => {
                let user = b.metadata.as_ref().and_then(|m| m.get("user_id"));
                if user.and_then(Value::as_str) != Some(sub) {
                    return Err(ApiError::Forbidden(
                        "metadata.user_id must equal the session token's subject".into(),
                    ));
                }
            }
        }
    }
    let (session, created) = app
        .runtime
        .create_session(
            access.org(),
            access.scope(),
            CreateSession {
                metadata: b.metadata,
                session_id: b.session_id,
                project: b.project,
                permission_mode: b.permission_mode,
                may_loosen_approvals: !access.is_session_token(),
                release: access.preview,
            },
        )
        .await?;
    let body = serde_json::to_value(&session).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((if created { 201 } else { 200 }, body))
}

/// List the org's sessions, newest first: `project`, `status`, `metadata.<key>=<value>`,
/// `limit` (1-100, default 20), `cursor`.
#[utoipa::path(
    get,
    path = "/v1/sessions",
    tag = "sessions",
    params(("project" = Option<String>, Query, description = "Project slug or id"), ("status" = Option<String>, Query, description = "`active` or `closed`"), ("limit" = Option<u32>, Query, description = "1 to 100, default 20"), ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses((status = 200, description = "A page of sessions, newest first", body = SessionPage), (status = 401, description = "Missing or wrong credential", body = ErrorBody), (status = 403, description = "The credential lacks the scope", body = ErrorBody), (status = 422, description = "A field is invalid", body = ValidationErrorBody)),
    security(("bearer" = []))
)]
pub async fn list(
    app: web::Data<App>,
    access: Access,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    access.require_key(Scope::Read)?;
    let pairs: Vec<(String, String)> =
        web::Query::<Vec<(String, String)>>::from_query(req.query_string())
            .map(|q| q.into_inner())
            .map_err(|e| ApiError::invalid(vec!["query".into()], e.to_string(), "value_error"))?;
    let mut q = ListSessions::default();
    for (k, v) in pairs {
        match k.as_str() {
            "project" => q.project = Some(v),
            "status" => q.status = Some(v),
            "cursor" => q.cursor = Some(v),
            "limit" => {
                q.limit = Some(v.parse().map_err(|_| {
                    ApiError::invalid(
                        vec!["query".into(), "limit".into()],
                        "must be an integer",
                        "type_error",
                    )
                })?)
            }
            other => {
                if let Some(key) = other.strip_prefix("metadata.") {
                    q.metadata.push((key.to_string(), v));
                }
            }
        }
    }
    if let Some(p) = access.scope() {
        q.project = Some(p.to_string());
    }
    let page = app.runtime.list_sessions(access.org(), q).await?;
    Ok(HttpResponse::Ok().json(page))
}

/// Fetch a session.
#[utoipa::path(
    get,
    path = "/v1/sessions/{session_id}",
    tag = "sessions",
    params(("session_id" = String, Path, description = "`sess_...`")),
    responses((status = 200, description = "The session", body = SessionView), (status = 401, description = "Missing or wrong credential", body = ErrorBody), (status = 403, description = "The credential lacks the scope", body = ErrorBody), (status = 404, description = "No such session in the caller's org (or project)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn fetch(
    app: web::Data<App>,
    access: Access,
    path: web::Path<SessionPath>,
) -> Result<HttpResponse, ApiError> {
    access.require(Scope::Read)?;
    check_subject(&app, &access, &path.session_id).await?;
    let session = app
        .runtime
        .get_session(access.org(), access.scope(), &path.session_id)
        .await?;
    Ok(HttpResponse::Ok().json(session))
}

/// Close a session: a running turn is cancelled and later sends get 409.
#[utoipa::path(
    delete,
    path = "/v1/sessions/{session_id}",
    tag = "sessions",
    params(("session_id" = String, Path, description = "`sess_...`")),
    responses((status = 200, description = "The closed session", body = SessionView), (status = 401, description = "Missing or wrong credential", body = ErrorBody), (status = 403, description = "The credential lacks the scope", body = ErrorBody), (status = 404, description = "No such session in the caller's org (or project)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn close(
    app: web::Data<App>,
    access: Access,
    path: web::Path<SessionPath>,
) -> Result<HttpResponse, ApiError> {
    access.require_key(Scope::Write)?;
    let session = app
        .runtime
        .close_session(access.org(), access.scope(), &path.session_id)
        .await?;
    Ok(HttpResponse::Ok().json(session))
}

/// `POST .../messages` body.
#[derive(Deserialize, ToSchema)]
pub struct SendBody {
    /// The message.
    #[serde(default)]
    text: Option<String>,
    /// Route the message to this agent; the session is handed off to it.
    #[serde(default)]
    agent: Option<String>,
    /// Who sends it (default `user`).
    #[serde(default)]
    participant_name: Option<String>,
    /// `human` (default) or `ai`.
    #[serde(default)]
    participant_type: Option<String>,
    /// Surface reasoning events.
    #[serde(default)]
    thinking: bool,
    /// Answer with server-sent events.
    #[serde(default)]
    stream: Option<bool>,
}

fn wants_sse(req: &HttpRequest) -> bool {
    req.headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

fn last_event_id(req: &HttpRequest) -> Result<Option<i64>, ApiError> {
    match req.headers().get("last-event-id") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(
                    vec!["header".into(), "Last-Event-ID".into()],
                    "must be an event id this API sent",
                    "value_error",
                )
            }),
    }
}

fn stream(app: &App, sub: Subscription) -> HttpResponse {
    let period = Duration::from_secs(app.config().server.heartbeat_seconds);
    sse::response(sub, app.runtime.clone(), period)
}

/// Run a turn. SSE when asked (`"stream": true` or `Accept: text/event-stream`), else the
/// accumulated turn as JSON. With `Last-Event-ID`, no turn starts: the stream resumes after that
/// event (replaying the log, then following a running turn).
#[utoipa::path(
    post,
    path = "/v1/sessions/{session_id}/messages",
    tag = "sessions",
    params(("session_id" = String, Path, description = "`sess_...`"), ("Last-Event-ID" = Option<i64>, Header, description = "Resume a stream after this event instead of starting a turn")),
    request_body = SendBody,
    responses((status = 200, description = "The accumulated turn (JSON), or its events (`text/event-stream`)", content((TurnAnswer = "application/json"), (String = "text/event-stream"))), (status = 400, description = "The body is not JSON", body = ErrorBody), (status = 401, description = "Missing or wrong credential", body = ErrorBody), (status = 403, description = "The credential lacks the scope", body = ErrorBody), (status = 404, description = "No such session in the caller's org (or project)", body = ErrorBody), (status = 409, description = "Busy, closed, or already resolved", body = ErrorBody), (status = 422, description = "A field is invalid", body = ValidationErrorBody), (status = 503, description = "The harness cannot run now (see Retry-After)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn send(
    app: web::Data<App>,
    access: Access,
    req: HttpRequest,
    path: web::Path<SessionPath>,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    access.require(Scope::Write)?;
    check_subject(&app, &access, &path.session_id).await?;
    if let Some(after) = last_event_id(&req)? {
        let sub = app
            .runtime
            .attach(access.org(), access.scope(), &path.session_id, after)
            .await?;
        return Ok(stream(&app, sub));
    }
    let claim = match idempotency::begin(&app, access.org(), &req, &bytes).await? {
        Begun::Replay(status, body) => {
            // A streamed turn is replayed as its events, from the log.
            if let Some(after) = body.get(STREAM_AFTER).and_then(Value::as_i64) {
                let sub = app
                    .runtime
                    .attach(access.org(), access.scope(), &path.session_id, after)
                    .await?;
                return Ok(stream(&app, sub));
            }
            return Ok(idempotency::replay(status, body));
        }
        Begun::Fresh(c) => Some(c),
        Begun::Unkeyed => None,
    };
    let r = send_turn(&app, &access, &req, &path.session_id, &bytes).await;
    match (r, claim) {
        (Ok(Sent::Stream(sub)), claim) => {
            if let Some(c) = claim {
                c.answer(&app, 200, &json!({ STREAM_AFTER: sub.after_seq() }))
                    .await;
            }
            Ok(stream(&app, *sub))
        }
        (Ok(Sent::Answer(body)), claim) => {
            // Printed once: the client gets these bytes and a keyed retry gets them again.
            let printed = json_text(&*body);
            match (&printed, claim) {
                (Ok(text), Some(c)) => c.answer_text(&app, 200, text.clone()).await,
                (Err(_), Some(c)) => c.release(&app).await,
                (_, None) => {}
            }
            printed.map(json_response)
        }
        (Err(e), Some(c)) => {
            c.release(&app).await;
            Err(e)
        }
        (Err(e), None) => Err(e),
    }
}

/// An answer printed as JSON (raw events are copied as they are, not parsed again).
fn json_text<T: Serialize>(body: &T) -> Result<String, ApiError> {
    serde_json::to_string(body).map_err(|e| {
        tracing::error!(error = %e, "an answer is not JSON");
        ApiError::Internal("the answer could not be printed".into())
    })
}

/// A 200 carrying JSON text.
fn json_response(text: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(actix_web::http::header::ContentType::json())
        .body(text)
}

/// The key a streamed send's stored answer keeps the turn's start in.
const STREAM_AFTER: &str = "__karta_stream_after";

/// A started turn: its stream, or (unary) its collected answer.
enum Sent {
    Stream(Box<crate::runtime::Subscription>),
    Answer(Box<TurnAnswer>),
}

async fn send_turn(
    app: &App,
    access: &Access,
    req: &HttpRequest,
    session_id: &str,
    bytes: &[u8],
) -> Result<Sent, ApiError> {
    let b: SendBody = body::parse(bytes)?;
    let text = b.text.ok_or_else(|| body::missing("text"))?;
    let as_stream = b.stream.unwrap_or_else(|| wants_sse(req));
    let sub = app
        .runtime
        .send_message(
            access.org(),
            access.scope(),
            session_id,
            SendMessage {
                text: text.clone(),
                agent: b.agent,
                participant_name: b.participant_name,
                participant_type: b.participant_type,
                thinking: b.thinking,
                stream: as_stream,
                prompts_hidden: false,
                api_key_id: access.key_id().map(str::to_string),
            },
        )
        .await?;
    if as_stream {
        return Ok(Sent::Stream(Box::new(sub)));
    }
    let out = sub.collect(&app.runtime).await;
    Ok(Sent::Answer(Box::new(unary_answer(session_id, &text, out))))
}

/// The unary answer of a turn.
#[derive(Serialize, ToSchema)]
pub struct TurnAnswer {
    /// The assistant's text.
    text: String,
    /// The session.
    session_id: String,
    /// The agent that answered.
    #[schema(value_type = String)]
    agent: Value,
    /// How the turn ended, as its `done` says (`completed`, `failed`, `cancelled`, ...), or
    /// `pending_input` when it paused.
    #[schema(value_type = String)]
    status: Value,
    /// Why the model stopped (`input_required` when the turn paused).
    #[schema(value_type = Option<String>, required = true)]
    stop_reason: Value,
    /// This turn's user and assistant messages.
    messages: [TurnMessage; 2],
    /// Tokens and cost of the turn.
    #[schema(value_type = Object)]
    usage: Value,
    /// The approval the turn waits for, when it paused.
    #[schema(value_type = Option<Object>, required = true)]
    pending_input: Option<Value>,
    /// Every event of the turn (the SSE `data:` envelopes).
    #[schema(value_type = Vec<Object>)]
    events: Vec<Box<RawValue>>,
    /// The turn's `error` payloads, when there were any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    errors: Vec<Value>,
}

/// A message of a turn's answer.
#[derive(Serialize, ToSchema)]
pub struct TurnMessage {
    /// `msg_...`
    id: String,
    /// `user` or `assistant`.
    role: &'static str,
    /// The message's text.
    text: String,
    /// Its parts (one `text` part).
    parts: [TextPart; 1],
}

/// A text part of a message.
#[derive(Serialize, ToSchema)]
pub struct TextPart {
    /// Always `text`.
    #[serde(rename = "type")]
    kind: &'static str,
    /// The text.
    text: String,
}

impl TurnMessage {
    fn new(role: &'static str, text: &str) -> Self {
        Self {
            id: store::new_id("msg"),
            role,
            text: text.to_string(),
            parts: [TextPart {
                kind: "text",
                text: text.to_string(),
            }],
        }
    }
}

/// The answer to an input: the turn's continuation and the session.
#[derive(Serialize, ToSchema)]
pub struct InputAnswer {
    /// Events after the decision, up to `done` or the next `input_required`.
    #[schema(value_type = Vec<Object>)]
    events: Vec<Box<RawValue>>,
    /// The session, `pending_input` cleared (or the next request).
    session: SessionView,
}

fn unary_answer(session_id: &str, text: &str, out: TurnOutcome) -> TurnAnswer {
    let done = out.done.clone().unwrap_or(Value::Null);
    let status = match (&out.done, &out.pending_input) {
        (Some(d), _) => d["status"].clone(),
        (None, Some(_)) => json!("pending_input"),
        (None, None) => json!("failed"),
    };
    // A paused turn has no `done` yet: the agent is the turn's, the usage so far is zero (the
    // harness reports it at the end) and the stop reason says why it stopped.
    let agent = match &done["message"]["agent"] {
        Value::Null => json!(out.agent),
        a => a.clone(),
    };
    let usage = match &done["usage"] {
        Value::Null => json!({
            "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0,
            "cache_write_tokens": 0, "total_tokens": 0, "cost_micro_cents": 0,
        }),
        u => u.clone(),
    };
    let stop_reason = match (&done["stop_reason"], &out.pending_input) {
        (Value::Null, Some(_)) => json!("input_required"),
        (r, _) => r.clone(),
    };
    TurnAnswer {
        messages: [
            TurnMessage::new("user", text),
            TurnMessage::new("assistant", &out.text),
        ],
        text: out.text,
        session_id: session_id.to_string(),
        agent,
        status,
        stop_reason,
        usage,
        pending_input: out.pending_input,
        events: out.events,
        errors: out.errors,
    }
}

/// Attach to a session's events (SSE): the log after `after` (or `Last-Event-ID`), then the
/// running turn, if any, to its end.
#[utoipa::path(
    get,
    path = "/v1/sessions/{session_id}/events",
    tag = "sessions",
    params(("session_id" = String, Path, description = "`sess_...`"), ("after" = Option<i64>, Query, description = "Replay events after this sequence number"), ("Last-Event-ID" = Option<i64>, Header, description = "Same as `after`")),
    responses((status = 200, description = "Logged events after `after`, then the running turn (`text/event-stream`)", content_type = "text/event-stream"), (status = 429, description = "Too many streams follow this session (see Retry-After)", body = ErrorBody), (status = 401, description = "Missing or wrong credential", body = ErrorBody), (status = 403, description = "The credential lacks the scope", body = ErrorBody), (status = 404, description = "No such session in the caller's org (or project)", body = ErrorBody), (status = 422, description = "A field is invalid", body = ValidationErrorBody)),
    security(("bearer" = []))
)]
pub async fn events(
    app: web::Data<App>,
    access: Access,
    req: HttpRequest,
    path: web::Path<SessionPath>,
) -> Result<HttpResponse, ApiError> {
    access.require(Scope::Read)?;
    check_subject(&app, &access, &path.session_id).await?;
    let from_query = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.iter().find(|(k, _)| k == "after").map(|(_, v)| v.clone()));
    let after = match from_query {
        Some(v) => v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::invalid(
                vec!["query".into(), "after".into()],
                "must be a non-negative integer",
                "type_error",
            )
        })?,
        None => last_event_id(&req)?.unwrap_or(0),
    };
    let sub = app
        .runtime
        .attach(access.org(), access.scope(), &path.session_id, after)
        .await?;
    Ok(stream(&app, sub))
}

/// `PUT .../inputs/{request_id}` body.
#[derive(Deserialize, ToSchema)]
pub struct InputBody {
    /// `approve_once`, `approve_session` or `deny`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    decision: Option<DecisionKind>,
    /// A note for the agent (e.g. why it was denied).
    #[serde(default)]
    message: Option<String>,
}

/// Answer a pending approval; the answer carries the turn's continuation up to its end (or its
/// next approval) and the session.
#[utoipa::path(
    put,
    path = "/v1/sessions/{session_id}/inputs/{request_id}",
    tag = "sessions",
    params(("session_id" = String, Path, description = "`sess_...`"), ("request_id" = String, Path, description = "`req_...` from `input_required`")),
    request_body = InputBody,
    responses((status = 200, description = "The continuation of the turn and the session", body = InputAnswer), (status = 401, description = "Missing or wrong credential", body = ErrorBody), (status = 403, description = "The credential lacks the scope", body = ErrorBody), (status = 404, description = "Unknown session or request", body = ErrorBody), (status = 409, description = "Already resolved, or the turn is gone", body = ErrorBody), (status = 422, description = "Missing decision, or one not offered", body = ValidationErrorBody)),
    security(("bearer" = []))
)]
pub async fn resolve_input(
    app: web::Data<App>,
    access: Access,
    path: web::Path<InputPath>,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    access.require(Scope::Write)?;
    check_subject(&app, &access, &path.session_id).await?;
    let b: InputBody = body::parse(&bytes)?;
    let decision = b.decision.ok_or_else(|| body::missing("decision"))?;
    let sub = app
        .runtime
        .resolve_input(
            access.org(),
            access.scope(),
            &path.session_id,
            &path.request_id,
            decision,
            b.message,
        )
        .await?;
    let out = sub.collect(&app.runtime).await;
    let session = app
        .runtime
        .get_session(access.org(), access.scope(), &path.session_id)
        .await?;
    let answer = InputAnswer {
        events: out.events,
        session,
    };
    Ok(json_response(json_text(&answer)?))
}

/// `POST .../participants` body.
#[derive(Deserialize, ToSchema)]
pub struct ParticipantBody {
    /// Stable name.
    #[serde(default)]
    name: Option<String>,
    /// `human` (default) or `ai`.
    #[serde(default, rename = "type")]
    kind: Option<String>,
    /// Name to show.
    #[serde(default)]
    display_name: Option<String>,
}

/// Add a participant (201), or update one's display name (200).
#[utoipa::path(
    post,
    path = "/v1/sessions/{session_id}/participants",
    tag = "sessions",
    params(("session_id" = String, Path, description = "`sess_...`")),
    request_body = ParticipantBody,
    responses((status = 201, description = "Joined", body = SessionView), (status = 200, description = "Already a participant (display name updated)", body = SessionView), (status = 401, description = "Missing or wrong credential", body = ErrorBody), (status = 403, description = "The credential lacks the scope", body = ErrorBody), (status = 404, description = "No such session in the caller's org (or project)", body = ErrorBody), (status = 422, description = "A field is invalid", body = ValidationErrorBody)),
    security(("bearer" = []))
)]
pub async fn add_participant(
    app: web::Data<App>,
    access: Access,
    path: web::Path<SessionPath>,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    access.require(Scope::Write)?;
    check_subject(&app, &access, &path.session_id).await?;
    let b: ParticipantBody = body::parse(&bytes)?;
    let name = b.name.ok_or_else(|| body::missing("name"))?;
    let (session, added) = app
        .runtime
        .add_participant(
            access.org(),
            access.scope(),
            &path.session_id,
            &name,
            b.kind.as_deref().unwrap_or("human"),
            b.display_name,
        )
        .await?;
    Ok(if added {
        HttpResponse::Created().json(session)
    } else {
        HttpResponse::Ok().json(session)
    })
}

//! The SDK-compatible adapter routes (spec 03): OpenAI Chat Completions and Responses, and
//! Anthropic Managed Agents. Thin handlers over the runtime's turn API. Each
//! request passes the native project routes' gates in the same order (credential and project,
//! the project's `adapters` list, scopes, message policies, busy sessions), then one turn runs
//! and its events go through the pure translators of [`crate::adapters`].

pub mod chat;
pub mod managed;
pub mod managed_upstream;
pub mod responses;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use serde_json::{json, Map, Value};
use tokio::time::{interval_at, Instant, Interval};

use crate::adapters::input::InputError;
use crate::adapters::TurnEvent;
use crate::app::App;
use crate::config::Adapter;
use crate::http::auth::Access;
use crate::http::error::ApiError;
use crate::platform::keys::Scope;
use crate::runtime::{CreateSession, Runtime, SendMessage, Subscription};

/// Registers the adapter routes (project family only: no flat adapter routes).
pub fn configure(cfg: &mut web::ServiceConfig) {
    const BASE: &str = "/v1/projects/{project_ref}";
    cfg.route(
        &format!("{BASE}/chat/completions"),
        web::post().to(chat::create),
    )
    .route(
        &format!("{BASE}/responses"),
        web::post().to(responses::create),
    )
    .route(
        &format!("{BASE}/responses/{{response_id}}"),
        web::get().to(responses::fetch),
    )
    .route(
        &format!("{BASE}/responses/{{response_id}}"),
        web::delete().to(responses::delete),
    )
    .route(
        &format!("{BASE}/managed-agents/sessions"),
        web::post().to(managed::create),
    )
    .route(
        &format!("{BASE}/managed-agents/sessions/{{session_id}}"),
        web::get().to(managed::state),
    )
    .route(
        &format!("{BASE}/managed-agents/sessions/{{session_id}}/events"),
        web::post().to(managed::post_event),
    )
    .route(
        &format!("{BASE}/managed-agents/sessions/{{session_id}}/events/stream"),
        web::get().to(managed::stream),
    );
    managed_upstream::configure(cfg, &format!("{BASE}/managed-agents"));
}

/// The project of an adapter route, once the caller may use `adapter` there.
fn gate(app: &App, access: &Access, adapter: Adapter, scope: Scope) -> Result<String, ApiError> {
    access.require(scope)?;
    let project = access
        .scope()
        .ok_or_else(|| ApiError::NotFound("project not found".into()))?;
    if !app.serves(project, adapter) {
        return Err(ApiError::NotFound(
            "this adapter is not enabled for the project".into(),
        ));
    }
    Ok(project.to_string())
}

/// A request the adapter cannot map, as a 422 naming its place in the body.
fn unmappable(e: InputError) -> ApiError {
    let mut loc = vec!["body".to_string()];
    loc.extend(e.loc);
    ApiError::invalid(loc, e.message, "value_error")
}

/// Starts a session on the route's project for one adapter call (tagged with the adapter; an
/// end user's session token owns it).
async fn new_session(
    app: &App,
    access: &Access,
    adapter: &str,
    metadata: Option<Map<String, Value>>,
) -> Result<String, ApiError> {
    let mut metadata = metadata.unwrap_or_default();
    metadata.insert("adapter".into(), json!(adapter));
    if let Some(sub) = access.subject() {
        metadata.insert("user_id".into(), json!(sub));
    }
    let (session, _) = app
        .runtime
        .create_session(
            access.org(),
            access.scope(),
            CreateSession {
                metadata: Some(metadata),
                session_id: None,
                project: None,
                permission_mode: None,
                may_loosen_approvals: false,
                release: access.preview,
            },
        )
        .await?;
    Ok(session.id)
}

/// How a turn is asked for.
#[derive(Clone, Copy, Default)]
struct TurnMode {
    /// Answer as a stream.
    stream: bool,
    /// Nobody can answer its approval prompts (the app's hidden-prompt policy does).
    prompts_hidden: bool,
    /// The caller asked for reasoning.
    thinking: bool,
}

/// Runs a turn.
async fn start_turn(
    app: &App,
    access: &Access,
    session_id: &str,
    text: String,
    user: Option<String>,
    mode: TurnMode,
) -> Result<Subscription, ApiError> {
    Ok(app
        .runtime
        .send_message(
            access.org(),
            access.scope(),
            session_id,
            SendMessage {
                text,
                agent: None,
                participant_name: user,
                participant_type: None,
                thinking: mode.thinking,
                stream: mode.stream,
                prompts_hidden: mode.prompts_hidden,
                api_key_id: access.key_id().map(str::to_string),
            },
        )
        .await?)
}

/// Seconds since the epoch.
fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A future the stream awaits once the turn is done, before its last frames go out.
pub(crate) type Finish = Pin<Box<dyn Future<Output = ()>>>;

/// One adapter's translation of a turn into its SSE frames.
pub(crate) trait Translate: 'static {
    /// The frames sent before any event.
    fn start(&mut self) -> Vec<Bytes>;
    /// The frames an event makes.
    fn on(&mut self, ev: &TurnEvent<'_>) -> Vec<Bytes>;
    /// Work to finish after `done` and before its frames are sent (storing the answer).
    fn finish(&mut self) -> Finish {
        Box::pin(async {})
    }
}

/// Runs the subscription to its `done` through `t` without sending anything (unary answers).
async fn drain<T: Translate>(mut sub: Subscription, runtime: &Runtime, t: &mut T) {
    t.start();
    while let Some(f) = sub.next(runtime).await {
        t.on(&TurnEvent::from_parts(&f.event_type, f.data()));
        if f.event_type == "done" {
            t.finish().await;
            break;
        }
    }
}

struct Streaming<T> {
    sub: Subscription,
    runtime: Arc<Runtime>,
    t: T,
    pending: VecDeque<Bytes>,
    heartbeat: Interval,
    period: Duration,
    ended: bool,
}

/// Streams the turn through `t` as `text/event-stream`, with keep-alive comments while idle.
fn stream<T: Translate>(app: &App, sub: Subscription, mut t: T) -> HttpResponse {
    let period = Duration::from_secs(app.config().server.heartbeat_seconds.max(1));
    let pending = t.start().into();
    let state = Streaming {
        sub,
        runtime: app.runtime.clone(),
        t,
        pending,
        heartbeat: interval_at(Instant::now() + period, period),
        period,
        ended: false,
    };
    let body = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(b) = st.pending.pop_front() {
                st.heartbeat.reset_after(st.period);
                return Some((Ok::<_, actix_web::Error>(b), st));
            }
            if st.ended {
                return None;
            }
            tokio::select! {
                f = st.sub.next(&st.runtime) => {
                    let Some(f) = f else {
                        st.ended = true;
                        continue;
                    };
                    let frames = st.t.on(&TurnEvent::from_parts(&f.event_type, f.data()));
                    if f.event_type == "done" {
                        st.t.finish().await;
                        st.ended = true;
                    }
                    st.pending.extend(frames);
                }
                _ = st.heartbeat.tick() => {
                    return Some((Ok(Bytes::from_static(crate::http::sse::KEEPALIVE)), st));
                }
            }
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

//! Session handlers: parse, authorize, call the runtime, map the result.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::app::App;
use crate::http::auth::ApiCaller;
use crate::http::body;
use crate::http::error::ApiError;
use crate::http::sse;
use crate::platform::keys::Scope;
use crate::runtime::{CreateSession, SendMessage};
use crate::store;

#[derive(Deserialize)]
struct CreateBody {
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    project: Option<String>,
}

/// `POST /v1/sessions`: 201 when created, 200 when resumed.
pub async fn create(
    app: web::Data<App>,
    caller: ApiCaller,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let who = caller.require(Scope::Write)?;
    let b: CreateBody = body::parse(&bytes)?;
    let (session, created) = app
        .runtime
        .create_session(
            &who.org_id,
            CreateSession {
                metadata: b.metadata,
                session_id: b.session_id,
                project: b.project,
            },
        )
        .await?;
    Ok(if created {
        HttpResponse::Created().json(session)
    } else {
        HttpResponse::Ok().json(session)
    })
}

/// `GET /v1/sessions/{id}`
pub async fn fetch(
    app: web::Data<App>,
    caller: ApiCaller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let who = caller.require(Scope::Read)?;
    let session = app.runtime.get_session(&who.org_id, &path).await?;
    Ok(HttpResponse::Ok().json(session))
}

#[derive(Deserialize)]
struct SendBody {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    participant_name: Option<String>,
    #[serde(default)]
    participant_type: Option<String>,
    #[serde(default)]
    thinking: bool,
    #[serde(default)]
    stream: Option<bool>,
}

fn wants_sse(req: &HttpRequest) -> bool {
    req.headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// `POST /v1/sessions/{id}/messages`: SSE when asked (`"stream": true` or
/// `Accept: text/event-stream`), else the accumulated turn as JSON.
pub async fn send(
    app: web::Data<App>,
    caller: ApiCaller,
    req: HttpRequest,
    path: web::Path<String>,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let who = caller.require(Scope::Write)?;
    let b: SendBody = body::parse(&bytes)?;
    let text = b.text.ok_or_else(|| body::missing("text"))?;
    let stream = b.stream.unwrap_or_else(|| wants_sse(&req));
    let session_id = path.into_inner();
    let runtime = app.runtime.clone();
    let sub = runtime
        .send_message(
            &who.org_id,
            &session_id,
            SendMessage {
                text: text.clone(),
                agent: b.agent,
                participant_name: b.participant_name,
                participant_type: b.participant_type,
                thinking: b.thinking,
            },
        )
        .await?;
    if stream {
        let period = Duration::from_secs(app.config().server.heartbeat_seconds);
        return Ok(sse::response(sub, runtime, period));
    }
    let out = sub.collect(&runtime).await?;
    let mut answer = json!({
        "text": out.text,
        "session_id": session_id,
        "agent": out.agent,
        "status": out.done["status"],
        "stop_reason": out.done["stop_reason"],
        "messages": [
            {"id": store::new_id("msg"), "role": "user", "text": text,
             "parts": [{"type": "text", "text": text}]},
            {"id": store::new_id("msg"), "role": "assistant", "text": out.text,
             "parts": [{"type": "text", "text": out.text}]},
        ],
        "usage": out.done["usage"],
    });
    if !out.errors.is_empty() {
        answer["errors"] = Value::Array(out.errors);
    }
    Ok(HttpResponse::Ok().json(answer))
}

//! `/v1/projects/{project_ref}/responses`: OpenAI Responses over Karta turns. A response is
//! one turn; `previous_response_id` runs the next turn on the same Karta session (the harness
//! holds the history). Stored responses (`store`, default true) can be fetched and deleted.

use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::{
    drain, gate, new_session, now_unix, start_turn, stream, unmappable, Finish, Translate,
};
use crate::adapters::input::{response_input, turn_text};
use crate::adapters::responses::{ResponseMeta, ResponseTurn};
use crate::adapters::{echoed_model, TurnEvent};
use crate::app::App;
use crate::config::Adapter;
use crate::http::auth::Access;
use crate::http::body;
use crate::http::error::{ApiError, ErrorBody, ValidationErrorBody};
use crate::platform::keys::Scope;
use crate::store::responses::{self as stored, StoredResponse};

/// The request (upstream fields not listed are accepted and ignored).
#[derive(Deserialize, ToSchema)]
pub struct ResponsesBody {
    /// A string, or a list of message items (`input_text` parts; earlier `output_text`
    /// assistant items are context).
    #[schema(value_type = Object)]
    #[serde(default)]
    input: Value,
    /// Echoed in the answer (`default` when absent).
    #[serde(default)]
    model: Option<String>,
    /// Instructions for this turn only (not carried over to a continuation).
    #[serde(default)]
    instructions: Option<String>,
    /// Continue the Karta session of this stored response.
    #[serde(default)]
    previous_response_id: Option<String>,
    /// Keep the response for `GET` and continuation (default true). When false the session
    /// is closed after the turn.
    #[serde(default)]
    store: Option<bool>,
    /// Answer as `response.*` server-sent events.
    #[serde(default)]
    stream: Option<bool>,
    /// Tags for a new session (echoed in the response).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
    /// The end user, recorded as the turn's participant.
    #[serde(default)]
    user: Option<String>,
    /// Any non-null value (`{"summary": "auto"}`, say) asks for the harness's reasoning, which
    /// comes back as a `reasoning` item ahead of the message.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    reasoning: Option<Value>,
    /// Unsupported: background mode.
    #[serde(default)]
    background: Option<bool>,
    /// Unsupported: the Conversations API.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    conversation: Option<Value>,
    /// Unsupported: stored prompts.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    prompt: Option<Value>,
}

/// Path of one stored response.
#[derive(Deserialize)]
pub struct ResponsePath {
    response_id: String,
}

/// The turn's translation, and what to keep once it is done.
struct ResponseStream {
    turn: ResponseTurn,
    app: web::Data<App>,
    org: String,
    project: String,
    session: String,
    store: bool,
    /// The session was made for this call (closed after it when nothing is stored).
    fresh: bool,
}

impl Translate for ResponseStream {
    fn start(&mut self) -> Vec<Bytes> {
        self.turn.start().into_iter().map(frame).collect()
    }

    fn on(&mut self, ev: &TurnEvent<'_>) -> Vec<Bytes> {
        self.turn.on(ev).into_iter().map(frame).collect()
    }

    fn finish(&mut self) -> Finish {
        let app = self.app.clone();
        let (org, session) = (self.org.clone(), self.session.clone());
        if !self.store {
            if self.fresh {
                tokio::spawn(async move {
                    let _ = app.runtime.close_session(&org, None, &session).await;
                });
            }
            return Box::pin(async {});
        }
        let row = StoredResponse {
            id: self.turn.response()["id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            org_id: org,
            project_id: self.project.clone(),
            session_id: session,
            body: self.turn.response().to_string(),
            created_at: crate::store::now(),
        };
        let keep = i64::from(app.config().adapters.stored_response_days.max(1));
        // Stored before `response.completed` goes out, so the client can continue from it.
        Box::pin(async move {
            let id = row.id.clone();
            if let Err(e) = app
                .store
                .write_async(move |c| stored::insert(c, &row, keep))
                .await
            {
                tracing::error!(response = %id, error = %e, "response not stored");
            }
        })
    }
}

/// One `event:` + `data:` frame.
fn frame((kind, data): (&'static str, Value)) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

/// A stored response of the route's project (404 for another org's or project's).
async fn find(
    app: &App,
    access: &Access,
    project: &str,
    id: &str,
) -> Result<StoredResponse, ApiError> {
    let (org, rid) = (access.org().to_string(), id.to_string());
    let found = app
        .store
        .read_async(move |c| stored::get(c, &org, &rid))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    match found {
        Some(r) if r.project_id == project => {
            // An end user's token reaches only that user's sessions.
            if let Some(sub) = access.subject() {
                let s = app
                    .runtime
                    .get_session(access.org(), access.scope(), &r.session_id)
                    .await?;
                if s.metadata["user_id"] != sub {
                    return Err(ApiError::NotFound("response not found".into()));
                }
            }
            Ok(r)
        }
        _ => Err(ApiError::NotFound("response not found".into())),
    }
}

fn unsupported(field: &str, why: &str) -> ApiError {
    ApiError::invalid(vec!["body".into(), field.into()], why, "value_error")
}

/// Runs one turn and answers as an OpenAI response (JSON or server-sent events).
#[utoipa::path(
    post,
    path = "/v1/projects/{project_ref}/responses",
    tag = "adapters",
    params(("project_ref" = String, Path, description = "Project slug or id")),
    request_body = ResponsesBody,
    responses(
        (status = 200, description = "A `response` object (JSON), or its `response.*` events from `response.created` to `response.completed` or `response.failed` (`text/event-stream`)", content((Object = "application/json"), (String = "text/event-stream"))),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 403, description = "The credential lacks the scope or is for another project", body = ErrorBody),
        (status = 404, description = "No such project or previous response, or the adapter is not enabled", body = ErrorBody),
        (status = 409, description = "The previous response's session is running a turn", body = ErrorBody),
        (status = 422, description = "A field is invalid or unsupported; or (unary) the model key was rejected", body = ValidationErrorBody),
        (status = 502, description = "(unary) the turn failed", body = ErrorBody),
        (status = 503, description = "The harness cannot run now (see Retry-After)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    app: web::Data<App>,
    access: Access,
    bytes: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let project = gate(&app, &access, Adapter::Responses, Scope::Write)?;
    let b: ResponsesBody = body::parse(&bytes)?;
    if b.background == Some(true) {
        return Err(unsupported(
            "background",
            "background responses are not supported",
        ));
    }
    if b.conversation.as_ref().is_some_and(|c| !c.is_null()) {
        return Err(unsupported(
            "conversation",
            "conversations are not supported: use previous_response_id",
        ));
    }
    if b.prompt.as_ref().is_some_and(|p| !p.is_null()) {
        return Err(unsupported("prompt", "stored prompts are not supported"));
    }
    let previous = match &b.previous_response_id {
        Some(id) => Some(find(&app, &access, &project, id).await?),
        None => None,
    };
    let messages = response_input(&b.input).map_err(unmappable)?;
    let text = turn_text(
        &messages,
        b.instructions.as_deref(),
        previous.is_none(),
        "input",
    )
    .map_err(unmappable)?;
    let store = b.store.unwrap_or(true);
    let metadata = b.metadata.clone().unwrap_or_default();
    let (session, fresh) = match &previous {
        Some(p) => (p.session_id.clone(), false),
        None => (
            new_session(&app, &access, "openai.responses", b.metadata).await?,
            true,
        ),
    };
    let as_stream = b.stream.unwrap_or(false);
    let sub = match start_turn(
        &app,
        &access,
        &session,
        text,
        b.user,
        super::TurnMode {
            stream: as_stream,
            prompts_hidden: true,
            // Any `reasoning` object asks for the harness's reasoning (spec 03 §4.3).
            thinking: b.reasoning.as_ref().is_some_and(|r| !r.is_null()),
        },
    )
    .await
    {
        Ok(sub) => sub,
        Err(e) => {
            if fresh {
                let _ = app
                    .runtime
                    .close_session(access.org(), None, &session)
                    .await;
            }
            return Err(e);
        }
    };
    let mut t = ResponseStream {
        turn: ResponseTurn::new(ResponseMeta {
            id: crate::store::new_id("resp"),
            created_at: now_unix(),
            model: echoed_model(b.model.as_deref()),
            instructions: b.instructions,
            previous_response_id: b.previous_response_id,
            store,
            metadata: Value::Object(metadata),
        }),
        app: app.clone(),
        org: access.org().to_string(),
        project,
        session,
        store,
        fresh,
    };
    if as_stream {
        return Ok(stream(&app, sub, t));
    }
    drain(sub, &app.runtime, &mut t).await;
    if let Some((code, message)) = t.turn.failure() {
        return Err(ApiError::TurnFailed {
            code: code.clone(),
            message: message.clone(),
            provider: None,
        });
    }
    Ok(HttpResponse::Ok().json(t.turn.response()))
}

/// A stored response, as it was when its turn ended.
#[utoipa::path(
    get,
    path = "/v1/projects/{project_ref}/responses/{response_id}",
    tag = "adapters",
    params(("project_ref" = String, Path, description = "Project slug or id"), ("response_id" = String, Path, description = "`resp_...`")),
    responses(
        (status = 200, description = "The `response` object", body = Object),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 404, description = "No such stored response in the project", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn fetch(
    app: web::Data<App>,
    access: Access,
    path: web::Path<ResponsePath>,
) -> Result<HttpResponse, ApiError> {
    let project = gate(&app, &access, Adapter::Responses, Scope::Read)?;
    let r = find(&app, &access, &project, &path.response_id).await?;
    let body: Value =
        serde_json::from_str(&r.body).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(body))
}

/// Forgets a stored response (its session stays; later turns cannot continue from it).
#[utoipa::path(
    delete,
    path = "/v1/projects/{project_ref}/responses/{response_id}",
    tag = "adapters",
    params(("project_ref" = String, Path, description = "Project slug or id"), ("response_id" = String, Path, description = "`resp_...`")),
    responses(
        (status = 200, description = "`{\"id\", \"object\": \"response\", \"deleted\": true}`", body = Object),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 404, description = "No such stored response in the project", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    app: web::Data<App>,
    access: Access,
    path: web::Path<ResponsePath>,
) -> Result<HttpResponse, ApiError> {
    let project = gate(&app, &access, Adapter::Responses, Scope::Write)?;
    let r = find(&app, &access, &project, &path.response_id).await?;
    let (org, id) = (access.org().to_string(), r.id.clone());
    app.store
        .write_async(move |c| stored::delete(c, &org, &id))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(json!({"id": r.id, "object": "response", "deleted": true})))
}

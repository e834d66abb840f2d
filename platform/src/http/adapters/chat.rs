//! `POST /v1/projects/{project_ref}/chat/completions`: OpenAI Chat Completions over one Karta
//! turn. Stateless like upstream: every call runs on a new session, closed after its turn.

use std::sync::Arc;

use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{
    drain, gate, new_session, now_unix, start_turn, stream, unmappable, Finish, Translate,
};
use crate::adapters::chat::ChatTurn;
use crate::adapters::input::{chat_messages, turn_text, ChatMessage};
use crate::adapters::{echoed_model, TurnEvent};
use crate::app::App;
use crate::config::Adapter;
use crate::http::auth::Access;
use crate::http::body;
use crate::http::error::{ApiError, ErrorBody, ValidationErrorBody};
use crate::platform::keys::Scope;
use crate::runtime::Runtime;

/// `stream_options`.
#[derive(Deserialize, ToSchema, Default)]
pub struct StreamOptions {
    /// Send a last chunk with the turn's usage (and `"usage": null` on the others).
    #[serde(default)]
    include_usage: Option<bool>,
}

/// The request (upstream fields not listed are accepted and ignored: the harness owns
/// sampling, tools and output format).
#[derive(Deserialize, ToSchema)]
pub struct ChatBody {
    /// The conversation: `system`/`developer`, `user` and `assistant` messages whose content is
    /// a string or text parts. The turn's input is the user text after the last assistant
    /// message; the rest is context.
    #[schema(value_type = Vec<Object>)]
    messages: Option<Vec<ChatMessage>>,
    /// Echoed in the answer (`default` when absent); the project's app chooses the model.
    #[serde(default)]
    model: Option<String>,
    /// Answer as `chat.completion.chunk` server-sent events.
    #[serde(default)]
    stream: Option<bool>,
    /// Streaming options.
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    /// Completions to make: only 1.
    #[serde(default)]
    n: Option<u32>,
    /// The end user, recorded as the turn's participant.
    #[serde(default)]
    user: Option<String>,
}

/// The turn's translation, and the session to close once it is done.
struct ChatStream {
    turn: ChatTurn,
    runtime: Arc<Runtime>,
    org: String,
    session: String,
}

impl Translate for ChatStream {
    fn start(&mut self) -> Vec<Bytes> {
        vec![frame(&self.turn.start())]
    }

    fn on(&mut self, ev: &TurnEvent<'_>) -> Vec<Bytes> {
        self.turn.on(ev).iter().map(|d| frame(d)).collect()
    }

    fn finish(&mut self) -> Finish {
        // Chat Completions keeps no state between calls: the session's harness and workspace
        // go now rather than when the warm-harness cap evicts them.
        let (rt, org, session) = (self.runtime.clone(), self.org.clone(), self.session.clone());
        tokio::spawn(async move {
            if let Err(e) = rt.close_session(&org, None, &session).await {
                tracing::warn!(session = %session, error = %e, "chat session not closed");
            }
        });
        Box::pin(async {})
    }
}

/// One `data:` frame (no `event:` line: the OpenAI SDKs need bare chunks).
fn frame(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// Runs one turn and answers as OpenAI Chat Completions (JSON or server-sent events).
#[utoipa::path(
    post,
    path = "/v1/projects/{project_ref}/chat/completions",
    tag = "adapters",
    params(("project_ref" = String, Path, description = "Project slug or id")),
    request_body = ChatBody,
    responses(
        (status = 200, description = "A `chat.completion` (JSON), or `chat.completion.chunk` frames ending in `data: [DONE]` (`text/event-stream`)", content((Object = "application/json"), (String = "text/event-stream"))),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 403, description = "The credential lacks the scope or is for another project", body = ErrorBody),
        (status = 404, description = "No such project, or the adapter is not enabled for it", body = ErrorBody),
        (status = 422, description = "A field is invalid or cannot be mapped onto a turn; or (unary) the model key was rejected", body = ValidationErrorBody),
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
    gate(&app, &access, Adapter::ChatCompletions, Scope::Write)?;
    let b: ChatBody = body::parse(&bytes)?;
    if b.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid(
            vec!["body".into(), "n".into()],
            "only one completion per request (n = 1)",
            "value_error",
        ));
    }
    let messages = b.messages.ok_or_else(|| body::missing("messages"))?;
    let messages = chat_messages(&messages).map_err(unmappable)?;
    let text = turn_text(&messages, None, true, "messages").map_err(unmappable)?;
    let as_stream = b.stream.unwrap_or(false);
    let include_usage = b
        .stream_options
        .unwrap_or_default()
        .include_usage
        .unwrap_or(false);

    let session = new_session(&app, &access, "openai.chat_completions", None).await?;
    let sub = match start_turn(
        &app,
        &access,
        &session,
        text,
        b.user,
        super::TurnMode {
            stream: as_stream,
            prompts_hidden: true,
            thinking: false,
        },
    )
    .await
    {
        Ok(sub) => sub,
        Err(e) => {
            // Nothing ran: the session is not kept.
            let _ = app
                .runtime
                .close_session(access.org(), None, &session)
                .await;
            return Err(e);
        }
    };
    let mut t = ChatStream {
        turn: ChatTurn::new(
            crate::store::new_id("chatcmpl"),
            now_unix(),
            echoed_model(b.model.as_deref()),
            include_usage,
        ),
        runtime: app.runtime.clone(),
        org: access.org().to_string(),
        session,
    };
    if as_stream {
        return Ok(stream(&app, sub, t));
    }
    drain(sub, &app.runtime, &mut t).await;
    if let Some(f) = t.turn.failure() {
        return Err(ApiError::TurnFailed {
            code: f.code.clone(),
            message: f.message.clone(),
            provider: f.provider.clone(),
        });
    }
    Ok(HttpResponse::Ok().json(t.turn.completion()))
}

//! The model gateway's listener: provider-shaped routes only, on a Unix socket sandboxes reach
//! and on a host loopback port for unsandboxed harnesses. The service is `crate::gateway`.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::gateway::{Call, Gateway, GatewayError, Provider, Route};

/// The gateway's routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/messages", web::post().to(messages))
        .route("/v1/messages/count_tokens", web::post().to(count_tokens))
        .route("/v1/chat/completions", web::post().to(chat_completions));
}

async fn messages(gw: web::Data<Gateway>, req: HttpRequest, body: web::Payload) -> HttpResponse {
    forward(gw.into_inner(), Route::Messages, req, body).await
}

async fn count_tokens(
    gw: web::Data<Gateway>,
    req: HttpRequest,
    body: web::Payload,
) -> HttpResponse {
    forward(gw.into_inner(), Route::CountTokens, req, body).await
}

async fn chat_completions(
    gw: web::Data<Gateway>,
    req: HttpRequest,
    body: web::Payload,
) -> HttpResponse {
    forward(gw.into_inner(), Route::ChatCompletions, req, body).await
}

/// How long a caller may take to send its body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Reads the body, at most `limit` bytes within [`BODY_TIMEOUT`].
async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::Bytes, GatewayError> {
    use futures_util::StreamExt;
    let read = async {
        let mut buf = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|e| GatewayError::BadRequest(format!("the body broke off: {e}")))?;
            if buf.len() + chunk.len() > limit {
                return Err(GatewayError::BadRequest(format!(
                    "the body is larger than {} MiB",
                    limit >> 20
                )));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .map_err(|_| GatewayError::BadRequest("the body was not sent in time".into()))?
}

/// The token a harness sends: `x-api-key` (Anthropic) or a bearer token (OpenAI).
fn token(req: &HttpRequest) -> Option<&str> {
    let h = req.headers();
    h.get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            h.get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .map(str::trim)
}

fn error(provider: Provider, e: &GatewayError) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(e.status())
        .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
    HttpResponse::build(status).json(e.body(provider))
}

async fn forward(
    gw: Arc<Gateway>,
    route: Route,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    // Nothing is read from a caller without a live token.
    if token(&req).and_then(|t| gw.grants.check(t)).is_none() {
        return error(route.provider(), &GatewayError::Unauthorized);
    }
    let body = match read_body(payload, gw.max_body()).await {
        Ok(b) => b,
        Err(e) => return error(route.provider(), &e),
    };
    let headers = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let call = Call {
        route,
        query: Some(req.query_string()),
        token: token(&req),
        headers,
        body,
    };
    match gw.forward(call).await {
        Ok(answer) => {
            let status = actix_web::http::StatusCode::from_u16(answer.status)
                .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
            let mut r = HttpResponse::build(status);
            for (k, v) in answer.headers {
                r.insert_header((k, v));
            }
            r.streaming(answer.body)
        }
        Err(e) => {
            tracing::info!(route = ?route, error = %e, "model call refused");
            error(route.provider(), &e)
        }
    }
}

/// Any other path: a 404 in Anthropic's shape (the harnesses read either).
pub async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(serde_json::json!({
        "type": "error",
        "error": {"type": "not_found_error", "message": "the model gateway serves only model calls"}
    }))
}

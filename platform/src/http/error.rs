//! API errors and their bodies, as the data-plane spec lists them.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::runtime::RuntimeError;

/// The body of most errors.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub detail: String,
}

/// One problem of a 422.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ValidationItem {
    /// Where: `["body", "text"]`, `["query", "limit"]`, ...
    pub loc: Vec<String>,
    /// What is wrong.
    pub msg: String,
    /// A machine-readable kind: `missing`, `type_error`, `value_error`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// The body of a 422.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ValidationErrorBody {
    /// Every problem found.
    pub detail: Vec<ValidationItem>,
}

/// An error answer of the HTTP API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// 400: the body is JSON but not a request this route takes (routes whose contract says
    /// 400, not 422, for a bad body).
    #[error("{0}")]
    BadRequest(String),
    /// 401.
    #[error("Unauthorized")]
    Unauthorized,
    /// 403.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409 `session busy`: retrying after the running turn ends can succeed.
    #[error("session busy")]
    Busy,
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 422: (loc, msg, type) per problem.
    #[error("validation failed")]
    Validation(Vec<(Vec<String>, String, String)>),
    /// 429 with `Retry-After` (seconds).
    #[error("Too Many Requests")]
    RateLimited(u64),
    /// 422: a message policy refused the message: (policy, detail).
    #[error("{1}")]
    PolicyViolation(String, String),
    /// 422 in the original control plane's shape (`{"error": "validation_failed", "message"}`),
    /// with the usual `detail` list beside it: (loc, message).
    #[error("{1}")]
    ValidationFailed(Vec<String>, String),
    /// 503 with `Retry-After`.
    #[error("{0}")]
    Unavailable(String),
    /// 429 with `Retry-After`: a bound on the caller was reached.
    #[error("{0}")]
    TooMany(String),
    /// The turn of a unary adapter call failed: 422 for a rejected model key (BYOK), else 502.
    #[error("{message}")]
    TurnFailed {
        /// Karta's error code.
        code: String,
        /// What went wrong.
        message: String,
        /// The model provider, when one was involved.
        provider: Option<String>,
    },
    /// 413: the body is larger than the route takes.
    #[error("{0}")]
    TooLarge(String),
    /// 402: a monthly budget is used up (`reason` names the cap).
    #[error("{0}")]
    BudgetExhausted(String),
    /// 500; the detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A single 422 problem.
    pub fn invalid(loc: Vec<String>, msg: impl Into<String>, kind: &str) -> Self {
        ApiError::Validation(vec![(loc, msg.into(), kind.to_string())])
    }
}

/// A list's `?limit=`: `default` when absent, else 1 to `max` (a 422 naming `limit` otherwise).
pub fn page_limit(v: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let l = v.unwrap_or(default);
    if !(1..=max).contains(&l) {
        return Err(ApiError::invalid(
            vec!["query".into(), "limit".into()],
            format!("must be between 1 and {max}, got {l}"),
            "value_error",
        ));
    }
    Ok(l)
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Busy | ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Validation(_)
            | ApiError::ValidationFailed(..)
            | ApiError::PolicyViolation(..) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooMany(_) | ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TurnFailed { code, .. } if code == "byok_key_rejected" => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::TurnFailed { .. } => StatusCode::BAD_GATEWAY,
            ApiError::BudgetExhausted(_) => StatusCode::PAYMENT_REQUIRED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        // Tell SDK clients not to retry what cannot succeed as it is.
        if !matches!(
            self,
            ApiError::Busy
                | ApiError::Unavailable(_)
                | ApiError::TooMany(_)
                | ApiError::RateLimited(_)
                | ApiError::Internal(_)
        ) {
            res.insert_header(("x-should-retry", "false"));
        }
        match self {
            ApiError::Validation(problems) => res.json(json!({
                "detail": problems
                    .iter()
                    .map(|(loc, msg, kind)| json!({"loc": loc, "msg": msg, "type": kind}))
                    .collect::<Vec<_>>()
            })),
            ApiError::RateLimited(secs) => res
                .insert_header(("Retry-After", secs.max(&1).to_string()))
                .json(json!({"detail": "Too Many Requests"})),
            ApiError::PolicyViolation(policy, detail) => res.json(json!({
                "error": "policy_violation",
                "policy": policy,
                "detail": detail,
            })),
            ApiError::ValidationFailed(loc, msg) => res.json(json!({
                "error": "validation_failed",
                "message": msg,
                "detail": [{"loc": loc, "msg": msg, "type": "value_error"}],
            })),
            ApiError::Unauthorized => res
                .insert_header(("WWW-Authenticate", "Bearer"))
                .json(json!({"detail": "Unauthorized"})),
            ApiError::Unavailable(m) => res
                .insert_header(("Retry-After", "5"))
                .json(json!({"detail": m})),
            // The same `detail` as a rate limit, with which limit it was in `message`.
            ApiError::TooMany(m) => res
                .insert_header(("Retry-After", "1"))
                .json(json!({"detail": "Too Many Requests", "message": m})),
            ApiError::TurnFailed {
                code,
                message,
                provider,
            } if code == "byok_key_rejected" => res.json(json!({
                "error": code, "provider": provider, "message": message,
            })),
            ApiError::TurnFailed { code, message, .. } => res.json(json!({
                "detail": message, "error": code,
            })),
            ApiError::BudgetExhausted(reason) => res.json(json!({
                "error": "budget_exhausted", "reason": reason,
            })),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                // The request-id middleware adds the request id to 500 bodies.
                res.json(json!({"detail": "internal error"}))
            }
            other => res.json(json!({"detail": other.to_string()})),
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            RuntimeError::Busy => ApiError::Busy,
            RuntimeError::Conflict(m) => ApiError::Conflict(m),
            RuntimeError::Invalid(loc, msg) => ApiError::invalid(loc, msg, "value_error"),
            RuntimeError::Unavailable(m) => ApiError::Unavailable(m),
            RuntimeError::TooMany(m) => ApiError::TooMany(m),
            RuntimeError::Forbidden(m) => ApiError::Forbidden(m),
            RuntimeError::Policy(v) => ApiError::PolicyViolation(v.policy, v.detail),
            RuntimeError::Budget(reason) => ApiError::BudgetExhausted(reason),
            RuntimeError::Store(e) => ApiError::Internal(e.to_string()),
        }
    }
}

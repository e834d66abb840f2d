//! `Idempotency-Key` on session create and message send: the same key with the same request
//! gets the first answer again (for 24 hours, marked `Idempotent-Replayed: true`); with another
//! request it is a 422; while the first is still running, a 409.

use std::sync::atomic::{AtomicI64, Ordering};

use actix_web::{HttpRequest, HttpResponse};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::http::error::ApiError;
use crate::store::idempotency::{self, Seen};

/// Longest key accepted.
const MAX_KEY: usize = 255;

/// A key claimed for this request: record its answer, or let it go.
pub struct Claim {
    org_id: String,
    key: String,
}

/// What to do with a request.
pub enum Begun {
    /// No key: proceed as usual.
    Unkeyed,
    /// A new key, claimed: proceed, then [`Claim::answer`] or [`Claim::release`].
    Fresh(Claim),
    /// Answered before: this is the stored answer.
    Replay(i32, Value),
}

fn key_of(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(v) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let k = v.to_str().unwrap_or_default();
    if k.is_empty() || k.len() > MAX_KEY || !k.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(ApiError::invalid(
            vec!["header".into(), "Idempotency-Key".into()],
            format!("must be 1 to {MAX_KEY} visible ASCII characters"),
            "value_error",
        ));
    }
    Ok(Some(k.to_string()))
}

/// Checks the request's key against what the org sent before.
pub async fn begin(
    app: &App,
    org_id: &str,
    req: &HttpRequest,
    body: &[u8],
) -> Result<Begun, ApiError> {
    let Some(key) = key_of(req)? else {
        return Ok(Begun::Unkeyed);
    };
    let mut h = Sha256::new();
    h.update(req.method().as_str());
    h.update(b" ");
    h.update(req.path());
    h.update(b"\n");
    h.update(body);
    let hash = format!("{:x}", h.finalize());
    prune_now_and_then(app);
    let (org, k) = (org_id.to_string(), key.clone());
    let seen = app
        .store
        .write_async(move |c| idempotency::claim(c, &org, &k, &hash))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    match seen {
        Seen::Claimed => Ok(Begun::Fresh(Claim {
            org_id: org_id.to_string(),
            key,
        })),
        Seen::InProgress => Err(ApiError::Conflict(
            "a request with this Idempotency-Key is still in progress".into(),
        )),
        Seen::Mismatch => Err(ApiError::invalid(
            vec!["header".into(), "Idempotency-Key".into()],
            "this Idempotency-Key was used for a different request",
            "idempotency_mismatch",
        )),
        Seen::Answered(status, body) => Ok(Begun::Replay(
            status,
            serde_json::from_str(&body).unwrap_or(Value::Null),
        )),
    }
}

impl Claim {
    /// Keeps the answer for replays.
    pub async fn answer(self, app: &App, status: u16, body: &Value) {
        self.answer_text(app, status, body.to_string()).await;
    }

    /// Keeps an answer already printed as JSON (the bytes the client was sent) for replays.
    pub async fn answer_text(self, app: &App, status: u16, text: String) {
        let r = app
            .store
            .write_async(move |c| {
                idempotency::answer(c, &self.org_id, &self.key, i32::from(status), &text)
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "idempotent answer not kept");
        }
    }

    /// Frees the key after an error a retry may fix (a 4xx or 5xx is not replayed).
    pub async fn release(self, app: &App) {
        let r = app
            .store
            .write_async(move |c| idempotency::release(c, &self.org_id, &self.key))
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "idempotency key not released");
        }
    }
}

/// A stored answer, sent again.
pub fn replay(status: i32, body: Value) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(u16::try_from(status).unwrap_or(200))
        .unwrap_or(actix_web::http::StatusCode::OK);
    HttpResponse::build(status)
        .insert_header(("Idempotent-Replayed", "true"))
        .json(body)
}

/// Deletes expired keys at most every ten minutes (on a request's way, off its critical path).
fn prune_now_and_then(app: &App) {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = chrono::Utc::now().timestamp();
    let last = LAST.load(Ordering::Relaxed);
    if now - last < 600
        || LAST
            .compare_exchange(last, now, Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = store.write(idempotency::prune) {
            tracing::warn!(error = %e, "expired idempotency keys not pruned");
        }
    });
}

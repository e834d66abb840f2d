//! `GET /v1/projects/{project_ref}/logs`: the project's recent runtime log lines (turns, their
//! errors, budget refusals), as server-sent events; with `follow=true`, new lines as they come.

use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

use crate::app::App;
use crate::http::auth::Access;
use crate::http::error::{ApiError, ErrorBody};
use crate::platform::keys::Scope;

/// How often an idle follow stream gets a keep-alive comment.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/projects/{project_ref}/logs", web::get().to(logs));
}

/// Query of `GET .../logs`.
#[derive(Deserialize, IntoParams)]
pub struct LogsQuery {
    /// Keep the stream open and send new lines as they are written.
    #[serde(default)]
    follow: bool,
}

fn line(text: &str) -> Bytes {
    // One `data:` line per log line (a log line never holds a newline of its own here).
    Bytes::from(format!("data: {}\n\n", text.replace(['\n', '\r'], " ")))
}

/// The project's recent log lines (the last 500), oldest first, each an SSE `data:` line.
#[utoipa::path(
    get,
    path = "/v1/projects/{project_ref}/logs",
    tag = "releases",
    params(("project_ref" = String, Path, description = "The project's slug or id"), LogsQuery),
    responses(
        (status = 200, description = "`text/event-stream` of log lines"),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 404, description = "No such project in the org", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn logs(
    _app: web::Data<App>,
    access: Access,
    q: web::Query<LogsQuery>,
) -> Result<HttpResponse, ApiError> {
    access.require_key(Scope::Read)?;
    let Some(project) = access.scope().map(str::to_string) else {
        return Err(ApiError::NotFound("project not found".into()));
    };
    let logs = crate::logs::global();
    // Subscribed before the backlog is read: nothing written in between is lost.
    let live = q.follow.then(|| logs.follow());
    let backlog: Vec<Bytes> = logs.recent(&project).iter().map(|t| line(t)).collect();
    let head = futures_util::stream::iter(backlog.into_iter().map(Ok::<_, actix_web::Error>));
    let res = HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .take();
    let Some(rx) = live else {
        let mut res = res;
        return Ok(res.streaming(head));
    };
    let project: Arc<str> = Arc::from(project);
    let tail = futures_util::stream::unfold(rx, move |mut rx| {
        let project = project.clone();
        async move {
            loop {
                match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
                    Err(_) => return Some((Ok(Bytes::from_static(b": keepalive\n\n")), rx)),
                    Ok(Ok(l)) if l.project == project => return Some((Ok(line(&l.text)), rx)),
                    Ok(Ok(_)) => continue,
                    Ok(Err(RecvError::Lagged(n))) => {
                        return Some((Ok(line(&format!("({n} lines skipped)"))), rx))
                    }
                    Ok(Err(RecvError::Closed)) => return None,
                }
            }
        }
    });
    use futures_util::StreamExt;
    let mut res = res;
    Ok(res.streaming(head.chain(tail)))
}

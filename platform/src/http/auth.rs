//! Credentials: org API keys on `/v1`, the operator token on `/admin/v1`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::app::App;
use crate::platform::keys::{Principal, Scope};
use crate::platform::tokens::{looks_like_jwt, Claims};

/// The credential: `Authorization: Bearer ...`, or `x-api-key` (what the Anthropic SDKs send).
fn bearer(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req.headers().get("authorization") {
        let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    let key = req.headers().get("x-api-key")?.to_str().ok()?.trim();
    (!key.is_empty()).then(|| key.to_string())
}

/// The credential behind a request.
pub enum Credential {
    /// An org API key.
    Key(Principal),
    /// A session token (project routes only).
    Token(Claims),
}

/// An authenticated caller and, on project routes, the project the route names.
pub struct Access {
    org_id: String,
    /// The credential.
    pub credential: Credential,
    /// `Some(project id)` on `/v1/projects/{project_ref}/...`.
    pub project_id: Option<String>,
    /// The preview the route names (`/v1/projects/<project>@v<N>/...`).
    pub preview: Option<i64>,
}

impl Access {
    /// The caller's org.
    pub fn org(&self) -> &str {
        &self.org_id
    }

    /// The project scope of the route.
    pub fn scope(&self) -> Option<&str> {
        self.project_id.as_deref()
    }

    /// The API key's id, when the caller is an API key.
    pub fn key_id(&self) -> Option<&str> {
        match &self.credential {
            Credential::Key(p) => Some(p.key_id.as_str()),
            Credential::Token(_) => None,
        }
    }

    /// Whether the caller is an end user's session token.
    pub fn is_session_token(&self) -> bool {
        matches!(self.credential, Credential::Token(_))
    }

    /// The end user a session token is bound to.
    pub fn subject(&self) -> Option<&str> {
        match &self.credential {
            Credential::Token(c) => c.sub.as_deref(),
            Credential::Key(_) => None,
        }
    }

    /// 403 unless the credential may do `scope`. Session tokens may read and write on their
    /// project (create, fetch, send, answer inputs, follow events), never administer.
    pub fn require(&self, scope: Scope) -> Result<&Self, ApiError> {
        let ok = match &self.credential {
            Credential::Key(p) => p.has(scope),
            Credential::Token(_) => scope != Scope::Admin,
        };
        if ok {
            Ok(self)
        } else {
            Err(ApiError::Forbidden(format!(
                "this credential lacks the `{}` scope",
                scope.as_str()
            )))
        }
    }

    /// 403 for session tokens: the operation needs an org API key with `scope`.
    pub fn require_key(&self, scope: Scope) -> Result<&Self, ApiError> {
        match &self.credential {
            Credential::Token(_) => Err(ApiError::Forbidden(
                "this operation needs an API key; session tokens cannot do it".into(),
            )),
            Credential::Key(_) => self.require(scope),
        }
    }
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

impl FromRequest for Access {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let app = req
            .app_data::<web::Data<App>>()
            .map(|d| d.clone().into_inner());
        let token = bearer(req);
        let project_ref = req.match_info().get("project_ref").map(str::to_string);
        let session_id = req.match_info().get("session_id").map(str::to_string);
        let ip = req.peer_addr().map(|a| a.ip());
        Box::pin(async move {
            let Some(app) = app else {
                return Err(ApiError::Unauthorized);
            };
            // A blocked address still gets through with a key verified lately (cheap to check):
            // only what would need a fresh verification waits.
            if let Some(wait) = ip.and_then(|ip| app.auth_throttle.blocked(ip)) {
                let cheap = token
                    .as_deref()
                    .is_some_and(|t| looks_like_jwt(t) || app.keys.is_cached(t));
                if !cheap {
                    return Err(ApiError::RateLimited(wait.as_secs() + 1));
                }
            }
            let r = authenticate(&app, token, project_ref).await;
            if matches!(r, Err(ApiError::Unauthorized)) {
                if let Some(ip) = ip {
                    app.auth_throttle.failed(ip);
                }
            }
            let access = r?;
            // The tenant's request rates, per credential and per address.
            let who = match &access.credential {
                Credential::Key(p) => p.key_id.clone(),
                Credential::Token(c) => {
                    format!("token:{}:{}", c.project_id, c.sub.as_deref().unwrap_or(""))
                }
            };
            let limited = |wait: std::time::Duration| ApiError::RateLimited(wait.as_secs() + 1);
            app.rate_limits
                .check(&access.org_id, &who, ip)
                .map_err(limited)?;
            // A project's rates, when some project sets any: the route's project, or the
            // session's (a flat session route reaches the same project).
            if app.rate_limits.any_project_rates() {
                let project = match (access.scope(), &session_id) {
                    (Some(p), _) => Some(p.to_string()),
                    (None, Some(sid)) => app.runtime.session_project(&access.org_id, sid).await,
                    (None, None) => None,
                };
                if let Some(p) = project {
                    app.rate_limits.check(&p, &who, ip).map_err(limited)?;
                }
            }
            Ok(access)
        })
    }
}

async fn authenticate(
    app: &Arc<App>,
    token: Option<String>,
    project_ref: Option<String>,
) -> Result<Access, ApiError> {
    let Some(token) = token else {
        return Err(ApiError::Unauthorized);
    };
    // `<project>@v<N>` names a preview release of the project.
    let (project_ref, preview) = match project_ref {
        Some(r) => match r.rsplit_once('@') {
            Some((base, v)) => {
                let n = v
                    .strip_prefix('v')
                    .and_then(|n| n.parse::<i64>().ok())
                    .ok_or_else(|| {
                        ApiError::NotFound(format!("`{r}`: a preview is named `<project>@v<N>`"))
                    })?;
                (Some(base.to_string()), Some(n))
            }
            None => (Some(r), None),
        },
        None => (None, None),
    };
    if looks_like_jwt(&token) {
        let claims = app
            .tokens
            .verify(&token, now_unix())
            .map_err(|_| ApiError::Unauthorized)?;
        let Some(r) = project_ref else {
            return Err(ApiError::Forbidden(
                "session tokens are valid only on project routes".into(),
            ));
        };
        if r != claims.project_slug && r != claims.project_id {
            return Err(ApiError::Forbidden(
                "this session token is for another project".into(),
            ));
        }
        let project_id = app.runtime.project_id(&claims.org_id, &r).await?;
        // A slug reused by a newer project does not inherit the old project's tokens.
        if project_id != claims.project_id {
            return Err(ApiError::Forbidden(
                "this session token is for another project".into(),
            ));
        }
        return Ok(Access {
            org_id: claims.org_id.clone(),
            credential: Credential::Token(claims),
            project_id: Some(project_id),
            preview,
        });
    }
    let principal = match app.keys.verify(&token).await {
        Ok(Some(p)) => p,
        Ok(None) => return Err(ApiError::Unauthorized),
        Err(e) => return Err(ApiError::Internal(e.to_string())),
    };
    let project_id = match project_ref {
        Some(r) => Some(app.runtime.project_id(&principal.org_id, &r).await?),
        None => None,
    };
    Ok(Access {
        org_id: principal.org_id.clone(),
        credential: Credential::Key(principal),
        project_id,
        preview,
    })
}

/// The operator, authenticated by `KARTA_ADMIN_TOKEN`.
pub struct Operator;

/// Compares the presented token with the configured one in constant time.
pub fn operator_ok(app: &Arc<App>, presented: Option<&str>) -> bool {
    match (&app.admin_token, presented) {
        (Some(expected), Some(given)) => expected.as_bytes().ct_eq(given.as_bytes()).into(),
        _ => false,
    }
}

impl FromRequest for Operator {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let ok = req
            .app_data::<web::Data<App>>()
            .map(|d| operator_ok(&d.clone().into_inner(), bearer(req).as_deref()))
            .unwrap_or(false);
        std::future::ready(if ok {
            Ok(Operator)
        } else {
            Err(ApiError::Unauthorized)
        })
    }
}

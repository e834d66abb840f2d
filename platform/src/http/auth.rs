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

fn bearer(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// A caller authenticated by an org API key.
pub struct ApiCaller(pub Principal);

impl ApiCaller {
    /// 403 unless the key holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<&Principal, ApiError> {
        if self.0.has(scope) {
            Ok(&self.0)
        } else {
            Err(ApiError::Forbidden(format!(
                "this key lacks the `{}` scope",
                scope.as_str()
            )))
        }
    }
}

impl FromRequest for ApiCaller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let app = req
            .app_data::<web::Data<App>>()
            .map(|d| d.clone().into_inner());
        let token = bearer(req);
        Box::pin(async move {
            let (Some(app), Some(token)) = (app, token) else {
                return Err(ApiError::Unauthorized);
            };
            match app.keys.verify(&token).await {
                Ok(Some(p)) => Ok(ApiCaller(p)),
                Ok(None) => Err(ApiError::Unauthorized),
                Err(e) => Err(ApiError::Internal(e.to_string())),
            }
        })
    }
}

/// An authenticated caller and, on project routes, the project the route names.
pub struct Access {
    /// Who is calling.
    pub principal: Principal,
    /// `Some(project id)` on `/v1/projects/{project_ref}/...`.
    pub project_id: Option<String>,
}

impl Access {
    /// The caller's org.
    pub fn org(&self) -> &str {
        &self.principal.org_id
    }

    /// The project scope of the route.
    pub fn scope(&self) -> Option<&str> {
        self.project_id.as_deref()
    }

    /// 403 unless the credential holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<&Self, ApiError> {
        if self.principal.has(scope) {
            Ok(self)
        } else {
            Err(ApiError::Forbidden(format!(
                "this key lacks the `{}` scope",
                scope.as_str()
            )))
        }
    }
}

impl FromRequest for Access {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let caller = ApiCaller::from_request(req, payload);
        let app = req
            .app_data::<web::Data<App>>()
            .map(|d| d.clone().into_inner());
        let project_ref = req.match_info().get("project_ref").map(str::to_string);
        Box::pin(async move {
            let ApiCaller(principal) = caller.await?;
            let project_id = match (project_ref, app) {
                (Some(r), Some(app)) => Some(app.runtime.project_id(&principal.org_id, &r).await?),
                _ => None,
            };
            Ok(Access {
                principal,
                project_id,
            })
        })
    }
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

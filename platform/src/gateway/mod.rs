//! The model gateway: a harness's only path to a model provider.
//!
//! A harness gets the gateway's address and a per-session capability token ([`grants`]) where
//! it would have had a provider's URL and key. The gateway checks the token, asks the budget
//! hook ([`CallGate`]) whether the call may run, swaps in the real credential, forwards the
//! request to the configured provider and streams the answer back as it comes, reading the
//! token counts off it ([`usage`]) and recording every call in `model_calls`. Provider keys and
//! the provider's address never reach the harness: only the status, the body and a few neutral
//! headers are passed back, and upstream errors are reported without the upstream URL.
//!
//! This module is the service; the HTTP listener is `http::gateway`.

pub mod grants;
pub mod tally;
pub mod usage;

use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use grants::{Grant, Grants};
pub use usage::{Provider, Tokens, UsageTap};

use crate::config::{GatewayConfig, PlatformConfig};
use crate::store::models::ModelCall;
use crate::store::Store;

/// A route the gateway forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/messages` (Anthropic).
    Messages,
    /// `POST /v1/messages/count_tokens` (Anthropic).
    CountTokens,
    /// `POST /v1/chat/completions` (OpenAI).
    ChatCompletions,
}

impl Route {
    /// Whose API it is.
    pub fn provider(self) -> Provider {
        match self {
            Route::Messages | Route::CountTokens => Provider::Anthropic,
            Route::ChatCompletions => Provider::OpenAi,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Route::Messages => "/v1/messages",
            Route::CountTokens => "/v1/messages/count_tokens",
            Route::ChatCompletions => "/v1/chat/completions",
        }
    }

    /// Whether the call produces tokens to record.
    fn metered(self) -> bool {
        !matches!(self, Route::CountTokens)
    }
}

/// Decides whether a session may call a model now (the meter's budget hook).
pub trait CallGate: Send + Sync {
    /// `Err(reason)` refuses the call; the harness sees the reason.
    fn admit(&self, grant: &Grant) -> Result<(), String>;
}

/// Why a call was not forwarded (or failed upstream).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GatewayError {
    /// No live token.
    #[error("invalid or expired session credential")]
    Unauthorized,
    /// The platform has no such provider.
    #[error("the platform has no {0} provider configured")]
    NotConfigured(&'static str),
    /// The request is not what the route takes.
    #[error("{0}")]
    BadRequest(String),
    /// The budget hook refused it.
    #[error("{0}")]
    Refused(String),
    /// The provider could not be reached.
    #[error("the model provider could not be reached: {0}")]
    Upstream(String),
}

impl GatewayError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::Unauthorized => 401,
            GatewayError::NotConfigured(_) => 503,
            GatewayError::BadRequest(_) => 400,
            GatewayError::Refused(_) => 402,
            GatewayError::Upstream(_) => 502,
        }
    }

    /// The body, in the provider's own error shape so the harness reports it as it would the
    /// provider's.
    pub fn body(&self, provider: Provider) -> Value {
        let message = self.to_string();
        match provider {
            Provider::Anthropic => {
                let kind = match self {
                    GatewayError::Unauthorized => "authentication_error",
                    GatewayError::NotConfigured(_) | GatewayError::Upstream(_) => "api_error",
                    GatewayError::BadRequest(_) => "invalid_request_error",
                    GatewayError::Refused(_) => "billing_error",
                };
                json!({"type": "error", "error": {"type": kind, "message": message}})
            }
            Provider::OpenAi => {
                let (kind, code) = match self {
                    GatewayError::Unauthorized => ("invalid_request_error", "invalid_api_key"),
                    GatewayError::NotConfigured(_) | GatewayError::Upstream(_) => {
                        ("server_error", "upstream_error")
                    }
                    GatewayError::BadRequest(_) => ("invalid_request_error", "invalid_request"),
                    GatewayError::Refused(_) => ("insufficient_quota", "insufficient_quota"),
                };
                json!({"error": {"message": message, "type": kind, "code": code}})
            }
        }
    }
}

/// One configured provider.
#[derive(Clone, Debug, PartialEq)]
struct Upstream {
    /// Base URL without a trailing `/v1`.
    base: String,
    key: Option<String>,
}

#[derive(Clone, Debug, Default)]
struct Providers {
    anthropic: Option<Upstream>,
    openai: Option<Upstream>,
}

fn providers(cfg: &PlatformConfig) -> Providers {
    let upstream = |name: &str, default: &str| {
        let p = cfg.providers.get(name)?;
        let key = match &p.api_key {
            Some(secret) => match secret.resolve() {
                Ok(k) => Some(k),
                Err(e) => {
                    tracing::warn!(provider = name, error = %e, "provider key unavailable");
                    None
                }
            },
            None => None,
        };
        let base = p.base_url.clone().unwrap_or_else(|| default.to_string());
        let base = base.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base).to_string();
        Some(Upstream { base, key })
    };
    Providers {
        anthropic: upstream("anthropic", "https://api.anthropic.com"),
        openai: upstream("openai", "https://api.openai.com"),
    }
}

/// Request headers passed on to the provider; everything else (credentials, hop-by-hop,
/// encodings) is dropped.
const PASSED_REQUEST_HEADERS: &[&str] = &[
    "content-type",
    "accept",
    "anthropic-version",
    "anthropic-beta",
];

/// Response headers passed back to the harness.
pub const PASSED_RESPONSE_HEADERS: &[&str] = &["content-type", "retry-after", "x-should-retry"];

/// The gateway.
pub struct Gateway {
    /// Live capability tokens.
    pub grants: Arc<Grants>,
    /// What each session's calls counted, for metering.
    pub tally: Arc<tally::Tally>,
    store: Store,
    providers: RwLock<Arc<Providers>>,
    client: reqwest::Client,
    permits: Arc<Semaphore>,
    max_body: usize,
    tcp_port: OnceLock<u16>,
    gate: RwLock<Option<Arc<dyn CallGate>>>,
    /// Orgs' own provider keys (BYOK), used instead of the platform's.
    model_keys: RwLock<Option<Arc<crate::platform::byok::ModelKeys>>>,
    /// `[gateway] settle_ms`.
    settle_wait: Duration,
}

/// One request to forward.
pub struct Call<'a> {
    /// The route.
    pub route: Route,
    /// The query string, if any (`beta=true`).
    pub query: Option<&'a str>,
    /// The token the harness sent.
    pub token: Option<&'a str>,
    /// The request's headers (only [`PASSED_REQUEST_HEADERS`] are used).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

/// The provider's answer, streaming.
pub struct Answer {
    /// Its status.
    pub status: u16,
    /// Its passed-on headers.
    pub headers: Vec<(&'static str, String)>,
    /// Its body; usage is recorded when it ends or is dropped.
    pub body: TappedBody,
}

impl Gateway {
    /// A gateway for the configured providers.
    pub fn new(store: Store, cfg: &PlatformConfig) -> Result<Self, String> {
        let g = &cfg.gateway;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(g.upstream_timeout_seconds.max(1)))
            .connect_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            grants: Arc::new(Grants::default()),
            tally: Arc::default(),
            store,
            providers: RwLock::new(Arc::new(providers(cfg))),
            client,
            permits: Arc::new(Semaphore::new(g.max_concurrent_calls.max(1))),
            max_body: max_body(g),
            tcp_port: OnceLock::new(),
            gate: RwLock::new(None),
            model_keys: RwLock::new(None),
            settle_wait: Duration::from_millis(g.settle_ms),
        })
    }

    /// Takes new provider settings (a reload).
    pub fn update(&self, cfg: &PlatformConfig) {
        *self.providers.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(providers(cfg));
    }

    /// Installs the budget hook.
    pub fn set_gate(&self, gate: Arc<dyn CallGate>) {
        *self.gate.write().unwrap_or_else(|p| p.into_inner()) = Some(gate);
    }

    /// The session's counted calls, once those in flight have ended (`[gateway] settle_ms` at
    /// most), and whether some were still in flight.
    pub async fn settle(&self, session_id: &str) -> (Vec<tally::CountedCall>, bool) {
        self.tally.settle(session_id, self.settle_wait).await
    }

    /// Largest request body.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Uses the orgs' own provider keys where they have one.
    pub fn set_model_keys(&self, keys: Arc<crate::platform::byok::ModelKeys>) {
        *self.model_keys.write().unwrap_or_else(|p| p.into_inner()) = Some(keys);
    }

    /// Whether the org pays for its model calls with its own key (any provider).
    pub async fn org_has_own_key(&self, org_id: &str) -> bool {
        let keys = self
            .model_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(keys) = keys.filter(|k| k.enabled()) else {
            return false;
        };
        for provider in crate::platform::byok::PROVIDERS {
            if matches!(keys.resolve(org_id, provider).await, Ok(Some(_))) {
                return true;
            }
        }
        false
    }

    /// Records the host loopback port the gateway listens on (for unsandboxed harnesses).
    pub fn set_tcp_port(&self, port: u16) {
        let _ = self.tcp_port.set(port);
    }

    /// The host loopback port, once listening.
    pub fn tcp_port(&self) -> Option<u16> {
        self.tcp_port.get().copied()
    }

    /// Checks, forwards and starts streaming one call.
    pub async fn forward(&self, call: Call<'_>) -> Result<Answer, GatewayError> {
        let provider = call.route.provider();
        let grant = call
            .token
            .and_then(|t| self.grants.check(t))
            .ok_or(GatewayError::Unauthorized)?;
        let gate = self.gate.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(gate) = gate {
            gate.admit(&grant).map_err(|why| {
                self.grants.mark_refused(
                    &grant.session_id,
                    grants::Refusal {
                        code: "budget_exhausted",
                        provider: None,
                        message: why.clone(),
                    },
                );
                GatewayError::Refused(why)
            })?;
        }
        let providers = self
            .providers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let upstream = match provider {
            Provider::Anthropic => providers.anthropic.as_ref(),
            Provider::OpenAi => providers.openai.as_ref(),
        }
        .ok_or(GatewayError::NotConfigured(provider.name()))?;

        let mut body: Value = serde_json::from_slice(&call.body)
            .map_err(|e| GatewayError::BadRequest(format!("the body is not JSON: {e}")))?;
        if !body.is_object() {
            return Err(GatewayError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        }
        let model = body["model"].as_str().unwrap_or_default().to_string();
        let streamed = body["stream"].as_bool().unwrap_or(false);
        let mut raw = call.body;
        let mut changed = false;
        if provider == Provider::OpenAi && streamed {
            // Usage is only sent in a stream when asked for, and the meter needs it.
            if !body["stream_options"].is_object() {
                body["stream_options"] = json!({});
            }
            if body["stream_options"]["include_usage"] != json!(true) {
                body["stream_options"]["include_usage"] = json!(true);
                changed = true;
            }
        }
        if grant.network != karta_driver_kit::sandbox::NetworkMode::Full {
            changed |= strip_provider_egress(&mut body);
        }
        if changed {
            raw = Bytes::from(body.to_string());
        }

        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| GatewayError::Upstream("the gateway is shutting down".into()))?;
        let mut url = format!("{}{}", upstream.base, call.route.path());
        if let Some(q) = call.query.filter(|q| !q.is_empty()) {
            url.push('?');
            url.push_str(q);
        }
        let mut req = self
            .client
            .post(url)
            .header("accept-encoding", "identity")
            .body(raw);
        for (k, v) in &call.headers {
            if PASSED_REQUEST_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
                req = req.header(k.as_str(), v.as_str());
            }
        }
        let keys = self
            .model_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let own = match keys {
            Some(k) => k.resolve(&grant.org_id, provider.name()).await.map_err(|e| {
                tracing::error!(org = %grant.org_id, error = %e, "the org's model key cannot be used");
                GatewayError::Upstream("the organization's model key cannot be used".into())
            })?,
            None => None,
        };
        let byok = own.is_some();
        if let Some(key) = own.as_deref().or(upstream.key.as_deref()) {
            req = match provider {
                Provider::Anthropic => req.header("x-api-key", key),
                Provider::OpenAi => req.bearer_auth(key),
            };
        }
        let started = Instant::now();
        self.tally.begin(&grant.session_id);
        let mut recorder = Recorder {
            tally: self.tally.clone(),
            byok,
            store: self.store.clone(),
            grant,
            provider,
            model,
            streamed,
            status: 0,
            started,
            tap: Some(UsageTap::new(provider, streamed)),
            metered: call.route.metered(),
            _permit: permit,
        };
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                recorder.status = 502;
                // Never the upstream URL: the harness must not learn where models live.
                return Err(GatewayError::Upstream(e.without_url().to_string()));
            }
        };
        recorder.status = i32::from(resp.status().as_u16());
        if byok && matches!(resp.status().as_u16(), 401 | 403) {
            tracing::warn!(org = %recorder.grant.org_id, provider = provider.name(), "the provider refused the organization's own key");
            self.grants.mark_refused(
                &recorder.grant.session_id,
                grants::Refusal {
                    code: "byok_key_rejected",
                    provider: Some(provider.name().into()),
                    message: format!(
                        "{} refused the organization's API key (HTTP {})",
                        provider.name(),
                        resp.status().as_u16()
                    ),
                },
            );
        }
        let headers = PASSED_RESPONSE_HEADERS
            .iter()
            .filter_map(|h| {
                let v = resp.headers().get(*h)?.to_str().ok()?;
                Some((*h, v.to_string()))
            })
            .collect();
        Ok(Answer {
            status: resp.status().as_u16(),
            headers,
            body: TappedBody {
                inner: Box::pin(resp.bytes_stream()),
                recorder: Some(recorder),
            },
        })
    }
}

/// Removes what would make the provider reach out on the sandbox's behalf (server tools such as
/// web search or fetch, MCP servers, code-execution containers): a sandbox without internet must
/// not get it through its model. Says whether anything was removed.
pub fn strip_provider_egress(body: &mut Value) -> bool {
    let mut changed = false;
    let Some(obj) = body.as_object_mut() else {
        return false;
    };
    for key in ["mcp_servers", "container", "web_search_options"] {
        changed |= obj.remove(key).is_some();
    }
    if let Some(tools) = obj.get_mut("tools").and_then(Value::as_array_mut) {
        let before = tools.len();
        // Client tools have no type (Anthropic) or `custom`/`function`; typed ones run at the
        // provider.
        tools.retain(|t| match t.get("type").and_then(Value::as_str) {
            None | Some("custom") | Some("function") => true,
            Some(_) => false,
        });
        changed |= tools.len() != before;
    }
    if changed {
        tracing::info!(
            "provider-side tools removed from a model call (no internet for this sandbox)"
        );
    }
    changed
}

fn max_body(g: &GatewayConfig) -> usize {
    g.max_body_mb.max(1) * 1024 * 1024
}

/// Records a call once its answer has ended (or was abandoned).
struct Recorder {
    /// Told when the call ends (exactly once).
    tally: Arc<tally::Tally>,
    byok: bool,
    store: Store,
    grant: Grant,
    provider: Provider,
    model: String,
    streamed: bool,
    status: i32,
    started: Instant,
    tap: Option<UsageTap>,
    metered: bool,
    /// Holds the call's place among the concurrent calls until it ends.
    _permit: OwnedSemaphorePermit,
}

impl Recorder {
    fn feed(&mut self, chunk: &[u8]) {
        if let Some(t) = &mut self.tap {
            t.feed(chunk);
        }
    }

    fn finish(&mut self) {
        let Some(tap) = self.tap.take() else { return };
        if !self.metered {
            self.tally.end(&self.grant.session_id, None);
            return;
        }
        let (tokens, answered_model) = tap.finish();
        let call = ModelCall {
            id: crate::store::new_id("mc"),
            org_id: self.grant.org_id.clone(),
            project_id: self.grant.project_id.clone(),
            session_id: self.grant.session_id.clone(),
            provider: self.provider.name().into(),
            model: if self.model.is_empty() {
                answered_model.unwrap_or_default()
            } else {
                self.model.clone()
            },
            status: self.status,
            streamed: self.streamed,
            input_tokens: tokens.input,
            output_tokens: tokens.output,
            cache_read_tokens: tokens.cache_read,
            cache_creation_tokens: tokens.cache_creation,
            latency_ms: i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX),
            created_at: crate::store::now(),
        };
        // A failed call (no answer, an error status) counts what the provider reported, if any.
        self.tally.end(
            &call.session_id,
            Some(tally::CountedCall {
                provider: call.provider.clone(),
                model: call.model.clone(),
                tokens,
                byok: self.byok,
            }),
        );
        crate::metrics::get()
            .model_calls
            .get_or_create(&crate::metrics::ModelLabels {
                provider: call.provider.clone(),
                status: u16::try_from(call.status).unwrap_or(0),
            })
            .inc();
        tracing::info!(
            session = %call.session_id,
            provider = %call.provider,
            model = %call.model,
            status = call.status,
            input_tokens = call.input_tokens,
            output_tokens = call.output_tokens,
            latency_ms = call.latency_ms,
            "model call"
        );
        let store = self.store.clone();
        let write = move || {
            if let Err(e) = store.write(|c| crate::store::model_calls::insert(c, &call)) {
                tracing::warn!(error = %e, "model call not recorded");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(write);
            }
            Err(_) => write(),
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A provider's body on its way to the harness, read for usage as it passes.
pub struct TappedBody {
    inner: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    recorder: Option<Recorder>,
}

impl Stream for TappedBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(r) = &mut self.recorder {
                    r.feed(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.recorder.take();
                Poll::Ready(Some(Err(std::io::Error::other(e.without_url()))))
            }
            Poll::Ready(None) => {
                self.recorder.take();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderConfig;

    fn gateway(dir: &std::path::Path, base_url: Option<&str>) -> Gateway {
        let store = Store::open(&format!("sqlite://{}", dir.join("k.db").display())).unwrap();
        let mut cfg = PlatformConfig::default();
        cfg.providers.insert(
            "anthropic".into(),
            ProviderConfig {
                api_key: None,
                base_url: base_url.map(str::to_string),
            },
        );
        Gateway::new(store, &cfg).unwrap()
    }

    fn call<'a>(route: Route, token: Option<&'a str>, body: &str) -> Call<'a> {
        Call {
            route,
            query: None,
            token,
            headers: vec![],
            body: Bytes::from(body.to_string()),
        }
    }

    fn grant(g: &Gateway) -> String {
        g.grants.grant(Grant {
            org_id: "org_1".into(),
            project_id: "prj_1".into(),
            session_id: "sess_1".into(),
            network: Default::default(),
        })
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    struct Broke;
    impl CallGate for Broke {
        fn admit(&self, grant: &Grant) -> Result<(), String> {
            Err(format!("{} has spent its budget", grant.org_id))
        }
    }

    #[test]
    fn refuses_without_a_live_token_a_bad_body_an_unknown_provider_and_a_spent_budget() {
        let dir = tempfile::tempdir().unwrap();
        let g = gateway(dir.path(), Some("http://127.0.0.1:1"));
        let body = r#"{"model":"m","messages":[]}"#;
        let err = |c| run(g.forward(c)).err().unwrap();
        assert_eq!(
            err(call(Route::Messages, None, body)),
            GatewayError::Unauthorized
        );
        assert_eq!(
            err(call(Route::Messages, Some("kgw_guess"), body)),
            GatewayError::Unauthorized
        );
        let token = grant(&g);
        assert!(matches!(
            err(call(Route::Messages, Some(&token), "not json")),
            GatewayError::BadRequest(_)
        ));
        assert_eq!(
            err(call(Route::ChatCompletions, Some(&token), body)),
            GatewayError::NotConfigured("openai")
        );
        g.set_gate(Arc::new(Broke));
        let refused = err(call(Route::Messages, Some(&token), body));
        assert_eq!(refused.status(), 402);
        assert_eq!(
            refused.body(Provider::Anthropic)["error"]["type"],
            "billing_error"
        );
        assert!(refused.to_string().contains("org_1 has spent its budget"));
        g.grants.revoke("sess_1");
        assert_eq!(
            err(call(Route::Messages, Some(&token), body)),
            GatewayError::Unauthorized
        );
    }

    #[test]
    fn an_unreachable_provider_is_a_502_that_does_not_name_its_address() {
        let dir = tempfile::tempdir().unwrap();
        let g = gateway(dir.path(), Some("http://127.0.0.1:1/v1"));
        let token = grant(&g);
        let e = run(g.forward(call(
            Route::Messages,
            Some(&token),
            r#"{"model":"m","messages":[]}"#,
        )))
        .err()
        .unwrap();
        assert_eq!(e.status(), 502);
        let shown = e.body(Provider::Anthropic).to_string();
        assert!(!shown.contains("127.0.0.1"), "{shown}");
        assert!(
            !e.body(Provider::OpenAi).to_string().contains(":1/"),
            "{shown}"
        );
    }

    #[test]
    fn provider_side_tools_are_removed_and_client_tools_kept() {
        let mut body = json!({
            "model": "m",
            "tools": [
                {"name": "Bash", "input_schema": {}},
                {"type": "custom", "name": "Edit", "input_schema": {}},
                {"type": "function", "function": {"name": "bash"}},
                {"type": "web_search_20250305", "name": "web_search"},
                {"type": "web_fetch_20250910", "name": "web_fetch"},
            ],
            "mcp_servers": [{"url": "https://evil.example"}],
        });
        assert!(strip_provider_egress(&mut body));
        let names: Vec<&str> = body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                t["name"]
                    .as_str()
                    .or(t["function"]["name"].as_str())
                    .unwrap()
            })
            .collect();
        assert_eq!(names, vec!["Bash", "Edit", "bash"]);
        assert!(body.get("mcp_servers").is_none());
        assert!(!strip_provider_egress(&mut body));
    }

    #[test]
    fn errors_take_each_providers_shape() {
        let e = GatewayError::Unauthorized;
        assert_eq!(e.body(Provider::Anthropic)["type"], "error");
        assert_eq!(
            e.body(Provider::Anthropic)["error"]["type"],
            "authentication_error"
        );
        assert_eq!(e.body(Provider::OpenAi)["error"]["code"], "invalid_api_key");
    }

    #[test]
    fn provider_base_urls_are_normalised() {
        let mut cfg = PlatformConfig::default();
        cfg.providers.insert(
            "openai".into(),
            ProviderConfig {
                api_key: None,
                base_url: Some("http://h:9/v1/".into()),
            },
        );
        let p = providers(&cfg);
        assert_eq!(p.openai.unwrap().base, "http://h:9");
        assert!(p.anthropic.is_none());
    }
}

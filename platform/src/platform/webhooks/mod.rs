//! Outbound webhooks: endpoints (declared in `[[webhooks]]` or made through the API), and the
//! delivery of org events to them.
//!
//! An event is written to the outbox (`org_events`) in the transaction of the change it reports.
//! Workers (one loop per Karta instance) turn new events into one delivery per subscribed
//! endpoint, claim due deliveries with a lease in the shared database (so several instances
//! never send the same attempt twice, and a crashed worker's claims are retried once their lease
//! expires), sign and POST them, and retry failures with exponential backoff and full jitter
//! until `[webhook_delivery] give_up_hours`, when the endpoint is disabled and a
//! `webhook_endpoint.disabled` event recorded.

pub mod sign;
pub mod target;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use rand::Rng;
use serde_json::{json, Value};
use sha2::Digest;

use crate::config::{PlatformConfig, Secret, WebhookDeliveryConfig};
use crate::platform::byok::ModelKeys;
use crate::store::audit::{self, Actor};
use crate::store::org_events::{self, OrgEvent};
use crate::store::webhooks::{self as wh, Attempt, Delivery, Endpoint};
use crate::store::{self, Store, StoreError};

/// What the audit log keeps of an endpoint (never its secret).
fn endpoint_view(e: &Endpoint) -> Value {
    json!({"name": e.name, "url": e.url, "events": e.event_types, "enabled": e.enabled})
}

/// Event types an endpoint can subscribe to.
pub const EVENT_TYPES: [&str; 12] = [
    "session.created",
    "turn.completed",
    "turn.failed",
    "input.required",
    "release.activated",
    "release.rolled_back",
    "budget.threshold_reached",
    "budget.exhausted",
    "api_key.created",
    "api_key.revoked",
    "webhook_endpoint.disabled",
    "*",
];

/// The envelope's `api_version`.
pub const API_VERSION: &str = "2026-01-01";

/// Largest part of a receiver's answer that is read.
const MAX_ANSWER: usize = 64 * 1024;

/// What can go wrong with an endpoint change.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A field is invalid: (field, why).
    #[error("{0}: {1}")]
    Invalid(&'static str, String),
    /// No such endpoint.
    #[error("no such webhook endpoint")]
    NotFound,
    /// Declared in configuration.
    #[error("this endpoint is declared in the platform configuration; change it there")]
    ConfigOwned,
    /// No master key to seal the secret with.
    #[error("webhook secrets are sealed with the master key: set KARTA_MASTER_KEY (32 random bytes, base64)")]
    NoMasterKey,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An event in the envelope it is delivered in.
pub fn envelope(e: &OrgEvent) -> Value {
    let object: Value = serde_json::from_str(&e.payload).unwrap_or(Value::Null);
    json!({
        "id": e.id,
        "type": e.event_type,
        "created": e.created_at.and_utc().timestamp(),
        "org": e.org_id,
        "org_id": e.org_id,
        "api_version": API_VERSION,
        "data": {"object": object},
    })
}

/// Checks a list of event types.
pub fn check_event_types(types: &[String]) -> Result<(), WebhookError> {
    if types.is_empty() {
        return Err(WebhookError::Invalid(
            "event_types",
            "must name at least one event type (or `*`)".into(),
        ));
    }
    for t in types {
        if !EVENT_TYPES.contains(&t.as_str()) {
            return Err(WebhookError::Invalid(
                "event_types",
                format!(
                    "unknown event type `{t}`; known: {}",
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn new_secret() -> String {
    format!("whsec_{}", store::random_base62(32))
}

fn purpose(endpoint_id: &str) -> String {
    format!("webhook:{endpoint_id}")
}

/// The orgs with an enabled endpoint, as last read (every delivery round, and at once after a
/// change on this instance).
#[derive(Default)]
pub struct Subscribed {
    orgs: RwLock<std::collections::HashSet<String>>,
}

impl Subscribed {
    /// Whether the org has an enabled endpoint.
    pub fn contains(&self, org_id: &str) -> bool {
        self.orgs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(org_id)
    }

    fn replace(&self, orgs: Vec<String>) {
        *self.orgs.write().unwrap_or_else(|p| p.into_inner()) = orgs.into_iter().collect();
    }
}

/// The webhook service.
pub struct Webhooks {
    /// Orgs with an enabled endpoint.
    pub subscribed: Arc<Subscribed>,
    store: Store,
    keys: Arc<ModelKeys>,
    cfg: RwLock<WebhookDeliveryConfig>,
    /// Secrets of endpoints declared in configuration, by endpoint id.
    config_secrets: RwLock<HashMap<String, Secret>>,
    /// This instance's name in leases.
    holder: String,
}

/// The id of a declared endpoint: stable across restarts and instances.
fn config_id(org_id: &str, name: &str) -> String {
    let h = sha2::Sha256::digest(format!("{org_id}/{name}").as_bytes());
    let hex: String = h[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("whe_cfg_{hex}")
}

impl Webhooks {
    /// The service over `store`; secrets sealed with the master keys of `keys`.
    pub fn new(store: Store, keys: Arc<ModelKeys>, cfg: &PlatformConfig) -> Self {
        Self {
            store,
            keys,
            cfg: RwLock::new(cfg.webhook_delivery.clone()),
            config_secrets: RwLock::new(HashMap::new()),
            holder: store::new_id("inst"),
            subscribed: Arc::default(),
        }
    }

    fn delivery_cfg(&self) -> WebhookDeliveryConfig {
        self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether plain http and private addresses are allowed.
    pub fn development(&self) -> bool {
        self.delivery_cfg().development
    }

    /// Makes the declared endpoints (`[[webhooks]]`) the config-owned rows: new ones created,
    /// changed ones updated, removed ones deleted. Run at start and on reload (blocking).
    /// Each change is audited as `actor`, in the transaction that makes it.
    pub fn apply_config(&self, cfg: &PlatformConfig, actor: &audit::Actor) -> Result<(), String> {
        *self.cfg.write().unwrap_or_else(|p| p.into_inner()) = cfg.webhook_delivery.clone();
        let dev = cfg.webhook_delivery.development;
        let mut declared = Vec::new();
        let mut secrets = HashMap::new();
        for (i, w) in cfg.webhooks.iter().enumerate() {
            let at = |f: &str| format!("webhooks[{i}].{f}");
            target::check_url(&w.url, dev).map_err(|e| format!("{}: {e}", at("url")))?;
            check_event_types(&w.events).map_err(|e| format!("{}: {e}", at("events")))?;
            let secret = w
                .secret
                .clone()
                .ok_or_else(|| format!("{}: is required", at("secret")))?;
            declared.push((w.clone(), secret));
        }
        let rows = self
            .store
            .write(|c| {
                let mut keep = Vec::new();
                // One entry per declared endpoint (none when its tenant is unknown), so the
                // secrets below pair with the right ids.
                let mut ids = Vec::new();
                for (w, _) in &declared {
                    let Some(org) = crate::store::orgs::find_by_slug(c, &w.tenant)? else {
                        ids.push(None);
                        continue;
                    };
                    let id = config_id(&org.id, &w.name);
                    let now = store::now();
                    let events = serde_json::to_string(&w.events).unwrap_or_else(|_| "[]".into());
                    let row = Endpoint {
                        id: id.clone(),
                        org_id: org.id.clone(),
                        name: w.name.clone(),
                        url: w.url.clone(),
                        event_types: events,
                        enabled: w.enabled.unwrap_or(true),
                        disabled_reason: None,
                        secret_sealed: None,
                        previous_secret_sealed: None,
                        previous_secret_until: None,
                        managed_by: "config".into(),
                        created_at: now,
                        updated_at: now,
                    };
                    match wh::get_any(c, &id)? {
                        None => {
                            wh::insert(c, &row)?;
                            audit::record_by(
                                c,
                                Some(&org.id),
                                actor,
                                "config.webhook_endpoint.create",
                                &id,
                                &endpoint_view(&row),
                            )?;
                        }
                        // A reload also re-enables a declared endpoint Karta disabled.
                        Some(old)
                            if old.url != row.url
                                || old.event_types != row.event_types
                                || old.enabled != row.enabled =>
                        {
                            wh::update(
                                c,
                                &Endpoint {
                                    created_at: old.created_at,
                                    ..row.clone()
                                },
                            )?;
                            audit::record_change(
                                c,
                                Some(&org.id),
                                actor,
                                "config.webhook_endpoint.update",
                                &id,
                                Some(&endpoint_view(&old)),
                                &endpoint_view(&row),
                            )?;
                        }
                        Some(_) => {}
                    }
                    keep.push(id.clone());
                    ids.push(Some(id));
                }
                for old in wh::list_config(c)? {
                    if !keep.contains(&old.id) {
                        wh::delete(c, &old.id)?;
                        audit::record_by(
                            c,
                            Some(&old.org_id),
                            actor,
                            "config.webhook_endpoint.delete",
                            &old.id,
                            &json!({"name": old.name}),
                        )?;
                    }
                }
                Ok(ids)
            })
            .map_err(|e| e.to_string())?;
        for (id, (_, secret)) in rows.into_iter().zip(&declared) {
            if let Some(id) = id {
                secrets.insert(id, secret.clone());
            }
        }
        *self
            .config_secrets
            .write()
            .unwrap_or_else(|p| p.into_inner()) = secrets;
        self.subscribed.replace(
            self.store
                .read(wh::orgs_with_endpoints)
                .map_err(|e| e.to_string())?,
        );
        Ok(())
    }

    /// Reads again which orgs have an enabled endpoint.
    pub async fn refresh_subscribed(&self) -> Result<(), StoreError> {
        let orgs = self.store.read_async(wh::orgs_with_endpoints).await?;
        self.subscribed.replace(orgs);
        Ok(())
    }

    /// Creates an API endpoint, audited in the same transaction; its secret is answered once.
    pub async fn create(
        &self,
        org_id: &str,
        url: &str,
        event_types: Vec<String>,
        enabled: bool,
        actor: Actor,
    ) -> Result<(Endpoint, String), WebhookError> {
        target::check_url(url, self.development()).map_err(|e| WebhookError::Invalid("url", e))?;
        check_event_types(&event_types)?;
        let id = store::new_id("whe");
        let secret = new_secret();
        let sealed = self
            .keys
            .seal_other(org_id, &purpose(&id), &secret)
            .map_err(|_| WebhookError::NoMasterKey)?;
        let now = store::now();
        let row = Endpoint {
            name: id.clone(),
            id,
            org_id: org_id.to_string(),
            url: url.to_string(),
            event_types: serde_json::to_string(&event_types).unwrap_or_else(|_| "[]".into()),
            enabled,
            disabled_reason: None,
            secret_sealed: Some(sealed),
            previous_secret_sealed: None,
            previous_secret_until: None,
            managed_by: "api".into(),
            created_at: now,
            updated_at: now,
        };
        let r = row.clone();
        self.store
            .write_async(move |c| {
                wh::insert(c, &r)?;
                audit::record_by(
                    c,
                    Some(&r.org_id),
                    &actor,
                    "webhook_endpoint.created",
                    &r.id,
                    &json!({}),
                )
            })
            .await?;
        self.refresh_subscribed().await?;
        Ok((row, secret))
    }

    /// Applies `apply` to an API endpoint (a configuration endpoint is refused) and audits it
    /// as `action`, in one transaction; the endpoint after (none when deleted).
    async fn change<F>(
        &self,
        org_id: &str,
        id: &str,
        actor: Actor,
        action: &'static str,
        apply: F,
    ) -> Result<Option<Endpoint>, WebhookError>
    where
        F: FnOnce(&mut store::Conn, Endpoint) -> Result<Option<Endpoint>, StoreError>
            + Send
            + 'static,
    {
        let (org, id) = (org_id.to_string(), id.to_string());
        let after = self
            .store
            .write_async(move |c| {
                let e = wh::get(c, &org, &id)?;
                if e.managed_by == "config" {
                    return Ok(Err(WebhookError::ConfigOwned));
                }
                let before = endpoint_view(&e);
                let after = apply(c, e)?;
                let after_view = after.as_ref().map(endpoint_view).unwrap_or(json!({}));
                audit::record_change(
                    c,
                    Some(&org),
                    &actor,
                    action,
                    &id,
                    Some(&before),
                    &after_view,
                )?;
                Ok(Ok(after))
            })
            .await
            .map_err(not_found)??;
        self.refresh_subscribed().await?;
        Ok(after)
    }

    /// Changes an API endpoint.
    pub async fn update(
        &self,
        org_id: &str,
        id: &str,
        url: Option<String>,
        event_types: Option<Vec<String>>,
        enabled: Option<bool>,
        actor: Actor,
    ) -> Result<Endpoint, WebhookError> {
        if let Some(u) = &url {
            target::check_url(u, self.development())
                .map_err(|e| WebhookError::Invalid("url", e))?;
        }
        if let Some(t) = &event_types {
            check_event_types(t)?;
        }
        self.change(
            org_id,
            id,
            actor,
            "webhook_endpoint.updated",
            move |c, mut e| {
                if let Some(u) = url {
                    e.url = u;
                }
                if let Some(t) = event_types {
                    e.event_types = serde_json::to_string(&t).unwrap_or_else(|_| "[]".into());
                }
                if let Some(en) = enabled {
                    e.enabled = en;
                    if en {
                        e.disabled_reason = None;
                    }
                }
                e.updated_at = store::now();
                wh::update(c, &e)?;
                Ok(Some(e))
            },
        )
        .await?
        .ok_or(WebhookError::NotFound)
    }

    /// Deletes an API endpoint.
    pub async fn delete(&self, org_id: &str, id: &str, actor: Actor) -> Result<(), WebhookError> {
        self.change(org_id, id, actor, "webhook_endpoint.deleted", |c, e| {
            wh::delete(c, &e.id)?;
            Ok(None)
        })
        .await
        .map(|_| ())
    }

    /// A new secret for an API endpoint; the old one keeps signing (a second `v1`) for
    /// `overlap`.
    pub async fn rotate(
        &self,
        org_id: &str,
        id: &str,
        overlap: Duration,
        actor: Actor,
    ) -> Result<(Endpoint, String), WebhookError> {
        let secret = new_secret();
        let sealed = self
            .keys
            .seal_other(org_id, &purpose(id), &secret)
            .map_err(|_| WebhookError::NoMasterKey)?;
        let until = store::now()
            + chrono::Duration::from_std(overlap).unwrap_or(chrono::Duration::hours(24));
        let e = self
            .change(
                org_id,
                id,
                actor,
                "webhook_endpoint.secret_rotated",
                move |c, mut e| {
                    e.previous_secret_sealed = e.secret_sealed.take();
                    e.previous_secret_until = Some(until);
                    e.secret_sealed = Some(sealed);
                    e.updated_at = store::now();
                    wh::update(c, &e)?;
                    Ok(Some(e))
                },
            )
            .await?
            .ok_or(WebhookError::NotFound)?;
        Ok((e, secret))
    }

    /// The secrets that sign for the endpoint now (the current first).
    fn secrets(&self, e: &Endpoint, now: NaiveDateTime) -> Vec<String> {
        if e.managed_by == "config" {
            let secrets = self
                .config_secrets
                .read()
                .unwrap_or_else(|p| p.into_inner());
            return secrets
                .get(&e.id)
                .and_then(|s| s.resolve().ok())
                .into_iter()
                .collect();
        }
        let p = purpose(&e.id);
        let mut out: Vec<String> = e
            .secret_sealed
            .iter()
            .filter_map(|s| self.keys.open_other(&e.org_id, &p, s))
            .collect();
        if e.previous_secret_until.is_some_and(|u| u > now) {
            out.extend(
                e.previous_secret_sealed
                    .iter()
                    .filter_map(|s| self.keys.open_other(&e.org_id, &p, s)),
            );
        }
        out
    }

    /// Delivers forever: every `[webhook_delivery] poll_ms`, new events become deliveries and
    /// due deliveries are sent; every few minutes, what is older than `keep_days` is removed.
    pub async fn run(self: Arc<Self>) {
        let mut last_prune = Instant::now();
        loop {
            let cfg = self.delivery_cfg();
            if let Err(e) = self.round(&cfg).await {
                tracing::warn!(error = %e, "webhook delivery round failed");
            }
            if last_prune.elapsed() > Duration::from_secs(300) {
                last_prune = Instant::now();
                let days = i64::try_from(cfg.keep_days.max(1)).unwrap_or(30);
                let before = store::now() - chrono::Duration::days(days);
                match self
                    .store
                    .write_async(move |c| wh::prune(c, before, 10_000))
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "old events and deliveries removed"),
                    Err(e) => tracing::warn!(error = %e, "old events not removed"),
                }
            }
            tokio::time::sleep(Duration::from_millis(cfg.poll_ms.max(10))).await;
        }
    }

    /// One round: fan out, claim, deliver. How many attempts were made.
    pub async fn round(&self, cfg: &WebhookDeliveryConfig) -> Result<usize, StoreError> {
        // Endpoints made on another instance are known here within a round.
        self.refresh_subscribed().await?;
        self.store.write_async(fan_out).await?;
        // A round claims what it sends at once, and the lease outlasts name resolution and the
        // attempt (each bounded by `timeout_seconds`), so a claim cannot expire mid-send.
        let lease_s = cfg.lease_seconds.max(cfg.timeout_seconds * 2 + 5);
        let claim = i64::try_from(cfg.concurrency.max(1)).unwrap_or(8);
        let (holder, lease) = (
            self.holder.clone(),
            chrono::Duration::seconds(i64::try_from(lease_s).unwrap_or(60)),
        );
        let claimed = self
            .store
            .write_async(move |c| {
                let now = store::now();
                wh::claim(c, &holder, now, now + lease, claim)
            })
            .await?;
        let n = claimed.len();
        use futures_util::StreamExt;
        futures_util::stream::iter(claimed)
            .for_each_concurrent(cfg.concurrency.max(1), |d| async move {
                if let Err(e) = self.deliver(cfg, d).await {
                    tracing::warn!(error = %e, "webhook attempt not recorded");
                }
            })
            .await;
        Ok(n)
    }

    async fn deliver(&self, cfg: &WebhookDeliveryConfig, d: Delivery) -> Result<(), StoreError> {
        let (org, event_id, endpoint_id) =
            (d.org_id.clone(), d.event_id.clone(), d.endpoint_id.clone());
        let (event, endpoint) = self
            .store
            .read_async(move |c| {
                let event = match org_events::get(c, &org, &event_id) {
                    Ok(e) => Some(e),
                    Err(StoreError::NotFound) => None,
                    Err(e) => return Err(e),
                };
                Ok((event, wh::get_any(c, &endpoint_id)?))
            })
            .await?;
        let attempt_no = d.attempts + 1;
        let started = Instant::now();
        let outcome = match (&event, &endpoint) {
            (Some(ev), Some(ep)) if ep.enabled => self.post(cfg, ev, ep).await,
            _ => Err((
                None,
                "the event or its endpoint is gone or disabled".to_string(),
            )),
        };
        let now = store::now();
        let latency = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let (status_code, error) = match &outcome {
            Ok(code) => (Some(i64::from(*code)), None),
            Err((code, e)) => (code.map(i64::from), Some(e.clone())),
        };
        let gone = endpoint.as_ref().is_none_or(|e| !e.enabled) || event.is_none();
        let give_up = now - d.created_at
            > chrono::Duration::hours(i64::try_from(cfg.give_up_hours).unwrap_or(72));
        let (status, next) = match (&outcome, gone, give_up) {
            (Ok(_), _, _) => ("delivered", now),
            (Err(_), true, _) | (Err(_), _, true) => ("failed", now),
            (Err(_), false, false) => ("pending", now + backoff(cfg, attempt_no)),
        };
        let attempt = Attempt {
            id: store::new_id("wha"),
            delivery_id: d.id.clone(),
            org_id: d.org_id.clone(),
            attempt: attempt_no,
            status_code,
            latency_ms: latency,
            error: error.clone(),
            created_at: now,
        };
        tracing::info!(
            event = %d.event_id,
            endpoint = %d.endpoint_id,
            attempt = attempt_no,
            status = ?status_code,
            error = error.as_deref().unwrap_or(""),
            outcome = status,
            "webhook attempt"
        );
        let disable = status == "failed" && give_up && !gone;
        let endpoint_id = d.endpoint_id.clone();
        let org_id = d.org_id.clone();
        let holder = self.holder.clone();
        self.store
            .write_async(move |c| {
                let recorded = wh::record_attempt(
                    c,
                    &attempt,
                    &holder,
                    status,
                    next,
                    (status == "delivered").then_some(now),
                )?;
                if recorded && disable {
                    if let Some(mut e) = wh::get_any(c, &endpoint_id)? {
                        e.enabled = false;
                        e.disabled_reason =
                            Some("deliveries failed for longer than the retry window".into());
                        e.updated_at = now;
                        wh::update(c, &e)?;
                        org_events::insert(
                            c,
                            &org_events::new_event(
                                &org_id,
                                "webhook_endpoint.disabled",
                                &json!({"id": e.id, "url": e.url,
                                    "reason": e.disabled_reason}),
                            ),
                        )?;
                    }
                }
                Ok(())
            })
            .await
    }

    /// Signs and POSTs one event; the receiver's status, or (status, what went wrong).
    async fn post(
        &self,
        cfg: &WebhookDeliveryConfig,
        ev: &OrgEvent,
        ep: &Endpoint,
    ) -> Result<u16, (Option<u16>, String)> {
        let url = target::check_url(&ep.url, cfg.development).map_err(|e| (None, e))?;
        let limit = Duration::from_secs(cfg.timeout_seconds.max(1));
        let addr = tokio::time::timeout(limit, target::resolve(&url, cfg.development))
            .await
            .map_err(|_| (None, "name resolution timed out".to_string()))?
            .map_err(|e| (None, format!("refused: {e}")))?;
        let host = url.host_str().unwrap_or_default().to_string();
        // Pinned: the connection goes to the address just checked, whatever DNS says next.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(cfg.timeout_seconds.max(1)))
            // No proxy from the environment: it would resolve the name again, elsewhere.
            .no_proxy()
            .resolve(&host, addr)
            .build()
            .map_err(|e| (None, e.to_string()))?;
        let body = envelope(ev).to_string();
        let secrets = self.secrets(ep, store::now());
        if secrets.is_empty() {
            return Err((None, "the endpoint's secret cannot be read".into()));
        }
        let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let t = chrono::Utc::now().timestamp();
        let resp = client
            .post(url)
            .header("content-type", "application/json")
            .header("user-agent", "Karta-Webhooks/1")
            .header("Karta-Event-Id", &ev.id)
            .header("Karta-Event-Type", &ev.event_type)
            .header(sign::HEADER, sign::header_value(t, body.as_bytes(), &refs))
            .body(body)
            .send()
            .await
            .map_err(|e| (None, e.without_url().to_string()))?;
        let code = resp.status().as_u16();
        // Read a bounded part of the answer (to let the connection be reused), ignore the rest.
        let mut stream = resp.bytes_stream();
        let mut read = 0usize;
        use futures_util::StreamExt;
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len();
            if read > MAX_ANSWER {
                break;
            }
        }
        match code {
            200..=299 => Ok(code),
            300..=399 => Err((Some(code), "redirects are not followed".into())),
            _ => Err((Some(code), format!("the receiver answered {code}"))),
        }
    }
}

fn not_found(e: StoreError) -> WebhookError {
    match e {
        StoreError::NotFound => WebhookError::NotFound,
        other => WebhookError::Store(other),
    }
}

/// Turns new events into deliveries for the endpoints that want them. Run in a write
/// transaction.
fn fan_out(c: &mut crate::store::Conn) -> Result<(), StoreError> {
    let events = org_events::pending_fan_out(c, 500)?;
    if events.is_empty() {
        return Ok(());
    }
    let mut by_org: HashMap<String, Vec<Endpoint>> = HashMap::new();
    for ev in &events {
        if !by_org.contains_key(&ev.org_id) {
            let eps = wh::list(c, &ev.org_id)?;
            by_org.insert(ev.org_id.clone(), eps);
        }
        for ep in by_org.get(&ev.org_id).into_iter().flatten() {
            // Only events from after the endpoint was made (no backlog of history).
            if ep.enabled && ep.wants(&ev.event_type) && ev.created_at >= ep.created_at {
                wh::queue(
                    c,
                    &Delivery::pending(&ev.org_id, &ev.id, &ep.id, ev.created_at),
                )?;
            }
        }
    }
    let ids: Vec<String> = events.into_iter().map(|e| e.id).collect();
    org_events::mark_fanned_out(c, &ids)
}

/// The delay before attempt `n + 1`: anything up to `retry_base_ms * 2^(n-1)` (capped), full
/// jitter, so receivers coming back are not hit by every sender at once.
fn backoff(cfg: &WebhookDeliveryConfig, n: i64) -> chrono::Duration {
    let exp = u32::try_from(n.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    let cap = cfg.retry_max_seconds.saturating_mul(1000).max(1);
    let ceiling = cfg
        .retry_base_ms
        .max(1)
        .saturating_mul(1u64 << exp)
        .min(cap);
    let ms = rand::thread_rng().gen_range(0..=ceiling);
    chrono::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let cfg = WebhookDeliveryConfig {
            retry_base_ms: 1000,
            retry_max_seconds: 10,
            ..Default::default()
        };
        let most = |n: i64| (0..200).map(|_| backoff(&cfg, n).num_milliseconds()).max();
        let least = |n: i64| (0..200).map(|_| backoff(&cfg, n).num_milliseconds()).min();
        assert!(most(1).unwrap() <= 1000);
        assert!(most(3).unwrap() <= 4000 && most(3).unwrap() > 2000);
        assert!(most(20).unwrap() <= 10_000 && most(20).unwrap() > 5000);
        assert!(least(20).unwrap() < 5000, "full jitter reaches low");
        assert!(check_event_types(&["turn.completed".into()]).is_ok());
        assert!(check_event_types(&[]).is_err());
        assert!(check_event_types(&["turn.exploded".into()]).is_err());
    }
}

//! API keys: `kt_live_` + 32 base62 characters, shown once, stored as an argon2id hash behind a
//! lookup prefix, verified with a short cache so the hash is not recomputed on every request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sha2::{Digest, Sha256};

use crate::store::{self, keys, models::ApiKey, orgs, Store, StoreError};

/// Every key starts with this.
pub const KEY_PREFIX: &str = "kt_live_";
const RANDOM_LEN: usize = 32;
/// Characters of the key kept in clear for lookup: `kt_live_` and the first 6 of the random
/// body, 14 in all (spec 05 §3.2). The column is unique: a new key whose prefix is taken is drawn
/// again.
pub const LOOKUP_LEN: usize = KEY_PREFIX.len() + 6;
/// The lookup prefix length before 14 (kept by keys whose first 14 characters collide).
const LEGACY_LOOKUP_LEN: usize = KEY_PREFIX.len() + 8;

/// The lookup prefix of a key, or of a longer prefix declared before it was 14 characters.
pub fn lookup_prefix(key_or_prefix: &str) -> &str {
    key_or_prefix.get(..LOOKUP_LEN).unwrap_or(key_or_prefix)
}

/// A new random key whose lookup prefix no key uses yet.
fn fresh_key(store: &Store) -> Result<String, StoreError> {
    // 62^6 prefixes: a second draw is already rare, a fourth never needed in practice.
    for _ in 0..4 {
        let key = format!("{KEY_PREFIX}{}", store::random_base62(RANDOM_LEN));
        if !store.read(|c| keys::prefix_taken(c, lookup_prefix(&key)))? {
            return Ok(key);
        }
    }
    Err(StoreError::Conflict(
        "no free key prefix after four draws; try again".into(),
    ))
}
const CACHE_TTL: Duration = Duration::from_secs(5);

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// GET routes.
    Read,
    /// Create, send, inputs.
    Write,
    /// Keys, BYOK, webhooks, releases.
    Admin,
}

impl Scope {
    /// Parses `read`, `write` or `admin`.
    pub fn parse(s: &str) -> Option<Scope> {
        match s.trim() {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The org the credential belongs to.
    pub org_id: String,
    /// The key's id (`key_...`).
    pub key_id: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
}

impl Principal {
    /// Whether the principal holds `scope`: scopes nest, `admin` ⊇ `write` ⊇ `read`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|s| *s >= scope)
    }
}

/// A freshly created key; `plaintext` exists only here.
pub struct IssuedKey {
    /// `key_...`
    pub id: String,
    /// The key itself, to show once.
    pub plaintext: String,
    /// Its scopes.
    pub scopes: Vec<Scope>,
}

/// Key management failures.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No enabled tenant with that slug.
    #[error("no tenant `{0}` in the store (declare it in the configuration and run `karta config apply`)")]
    UnknownTenant(String),
    /// No such key in the org.
    #[error("key not found")]
    NotFound,
    /// The name is empty or too long.
    #[error("{0}")]
    BadName(&'static str),
    /// The key is declared in configuration.
    #[error(
        "this key is declared in configuration ([[api_keys]] `{0}`); remove it there and reload"
    )]
    ConfigOwned(String),
    /// Hashing failed.
    #[error("cannot hash key: {0}")]
    Hash(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn hasher() -> Argon2<'static> {
    Argon2::default()
}

/// Longest key name.
const MAX_NAME: usize = 200;

/// Which org a new key is for.
pub enum OrgRef<'a> {
    /// By slug (the CLI).
    Slug(&'a str),
    /// By id (the org API).
    Id(&'a str),
}

/// Creates a key for the tenant (blocking; hashing takes a few tens of milliseconds). `actor`
/// names who did it in the audit log.
pub fn create(
    store: &Store,
    org: OrgRef<'_>,
    name: &str,
    scopes: &[Scope],
    actor: &store::audit::Actor,
) -> Result<(IssuedKey, ApiKey), KeyError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(KeyError::BadName("Name is required"));
    }
    if name.len() > MAX_NAME {
        return Err(KeyError::BadName("Name is longer than 200 characters"));
    }
    let plaintext = fresh_key(store)?;
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let hash = hasher()
        .hash_password(plaintext.as_bytes(), &salt)
        .map_err(|e| KeyError::Hash(e.to_string()))?
        .to_string();
    let id = store::new_id("key");
    let scope_list = scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let unknown = match &org {
        OrgRef::Slug(s) => KeyError::UnknownTenant(s.to_string()),
        OrgRef::Id(_) => KeyError::NotFound,
    };
    let (slug, org_id) = match org {
        OrgRef::Slug(s) => (Some(s.to_string()), None),
        OrgRef::Id(i) => (None, Some(i.to_string())),
    };
    let row = ApiKey {
        id: id.clone(),
        org_id: String::new(),
        name: name.to_string(),
        lookup_prefix: plaintext[..LOOKUP_LEN].to_string(),
        key_hash: hash,
        scopes: scope_list.clone(),
        created_at: store::now(),
        last_used_at: None,
        revoked_at: None,
        last4: plaintext[plaintext.len() - 4..].to_string(),
        managed_by: "api".into(),
    };
    let actor = actor.clone();
    let stored = store
        .write(move |c| {
            let org_id = match (slug, org_id) {
                (Some(s), _) => orgs::get_enabled_by_slug(c, &s)?.id,
                (_, Some(i)) => i,
                _ => return Err(StoreError::NotFound),
            };
            let row = ApiKey { org_id, ..row };
            keys::insert(c, &row)?;
            store::audit::record_by(
                c,
                Some(&row.org_id),
                &actor,
                "api_key.created",
                &row.id,
                &serde_json::json!({
                    "name": row.name, "scopes": scope_list, "prefix": row.lookup_prefix,
                }),
            )?;
            store::org_events::insert(
                c,
                &store::org_events::new_event(
                    &row.org_id,
                    "api_key.created",
                    &serde_json::json!({"id": row.id, "name": row.name, "scopes": scope_list,
                        "prefix": row.lookup_prefix}),
                ),
            )?;
            Ok(row)
        })
        .map_err(|e| match e {
            StoreError::NotFound => unknown,
            other => KeyError::Store(other),
        })?;
    Ok((
        IssuedKey {
            id,
            plaintext,
            scopes: scopes.to_vec(),
        },
        stored,
    ))
}

/// A new key for `[[api_keys]]`: the key (shown once), its prefix and its SHA-256, written
/// nowhere (minted away from any store: a prefix taken already is refused when applied).
pub fn mint() -> (String, String, String) {
    let key = format!("{KEY_PREFIX}{}", store::random_base62(RANDOM_LEN));
    let prefix = key[..LOOKUP_LEN].to_string();
    let hash = format!("sha256:{:x}", Sha256::digest(key.as_bytes()));
    (key, prefix, hash)
}

/// Revokes a key of the org for good (blocking) and writes the audit row in the same
/// transaction. Revoking a revoked key changes nothing and answers the key as it is.
pub fn revoke(
    store: &Store,
    org_id: &str,
    id: &str,
    actor: &store::audit::Actor,
) -> Result<ApiKey, KeyError> {
    let (org, id, actor) = (org_id.to_string(), id.to_string(), actor.clone());
    let (o, i) = (org.clone(), id.clone());
    let row = store
        .read(move |c| keys::get(c, &o, &i))
        .map_err(|e| match e {
            StoreError::NotFound => KeyError::NotFound,
            other => KeyError::Store(other),
        })?;
    if row.managed_by == "config" {
        return Err(KeyError::ConfigOwned(row.name));
    }
    store
        .write(move |c| {
            if keys::revoke(c, &org, &id)? {
                store::audit::record_by(
                    c,
                    Some(&org),
                    &actor,
                    "api_key.revoked",
                    &id,
                    &serde_json::json!({}),
                )?;
                store::org_events::insert(
                    c,
                    &store::org_events::new_event(
                        &org,
                        "api_key.revoked",
                        &serde_json::json!({ "id": id }),
                    ),
                )?;
            }
            keys::get(c, &org, &id)
        })
        .map_err(|e| match e {
            StoreError::NotFound => KeyError::NotFound,
            other => KeyError::Store(other),
        })
}

/// The scopes stored on a key row.
pub fn stored_scopes(row: &ApiKey) -> Vec<Scope> {
    row.scopes.split(',').filter_map(Scope::parse).collect()
}

/// Checks presented keys against the store, caching successes for a few seconds.
///
/// Verification is single-flight per key: while one argon2 check of a key runs, other requests
/// with the same key wait for its answer instead of hashing again. A cached answer is refreshed in
/// the background during the last part of its lifetime, so a busy key never makes its callers
/// wait when the entry expires. At most `VERIFY_CONCURRENCY` argon2 checks run at once.
pub struct KeyVerifier {
    store: Store,
    // Keyed by SHA-256 of the key, so the cache never holds a plaintext key.
    cache: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
    inflight: Mutex<HashMap<[u8; 32], Flight>>,
    /// Keys that failed recently (by SHA-256): refused without another lookup or hash.
    failed: Mutex<HashMap<[u8; 32], Instant>>,
    hashing: Arc<tokio::sync::Semaphore>,
    checks: std::sync::atomic::AtomicU64,
}

/// How long a failed key is refused without a check.
const FAILED_TTL: Duration = Duration::from_secs(30);
/// Failed keys remembered at most (a flood of distinct wrong keys cannot grow memory past it).
const MAX_FAILED: usize = 65_536;

/// One verification in progress; every waiter shares its answer.
type Flight = Arc<tokio::sync::OnceCell<Result<Option<Principal>, String>>>;

/// argon2 checks running at once (each takes tens of MiB and milliseconds of CPU).
const VERIFY_CONCURRENCY: usize = 4;
/// Age after which a cached answer is refreshed in the background.
const REFRESH_AFTER: Duration = Duration::from_secs(4);

fn well_formed(key: &str) -> bool {
    key.len() == KEY_PREFIX.len() + RANDOM_LEN
        && key.starts_with(KEY_PREFIX)
        && key[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
}

impl KeyVerifier {
    /// A verifier over `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            hashing: Arc::new(tokio::sync::Semaphore::new(VERIFY_CONCURRENCY)),
            checks: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The principal behind `presented`, or `None` for a wrong, revoked or malformed key.
    pub async fn verify(
        self: &Arc<Self>,
        presented: &str,
    ) -> Result<Option<Principal>, StoreError> {
        if !well_formed(presented) {
            return Ok(None);
        }
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if let Some((p, age)) = self.cached(&digest) {
            if age >= REFRESH_AFTER {
                let me = self.clone();
                let key = presented.to_string();
                tokio::spawn(async move {
                    if let Err(e) = me.verify_once(&key, digest).await {
                        tracing::warn!(error = %e, "background key refresh failed");
                    }
                });
            }
            return Ok(Some(p));
        }
        if self.failed_recently(&digest) {
            return Ok(None);
        }
        self.verify_once(presented, digest).await
    }

    /// Whether `presented` was verified lately (answered from the cache without a check).
    pub fn is_cached(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.cached(&digest).is_some()
    }

    fn failed_recently(&self, digest: &[u8; 32]) -> bool {
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed
            .get(digest)
            .is_some_and(|at| at.elapsed() < FAILED_TTL)
    }

    fn remember_failure(&self, digest: [u8; 32]) {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if failed.len() >= MAX_FAILED {
            failed.retain(|_, at| at.elapsed() < FAILED_TTL);
            if failed.len() >= MAX_FAILED {
                failed.clear();
            }
        }
        failed.insert(digest, Instant::now());
    }

    /// Runs (or joins) the one verification of this key in flight.
    async fn verify_once(
        &self,
        presented: &str,
        digest: [u8; 32],
    ) -> Result<Option<Principal>, StoreError> {
        let flight = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight.get(&digest) {
                // An answered flight left behind by a cancelled caller is stale: start anew.
                Some(f) if !f.initialized() => f.clone(),
                _ => {
                    let f = Flight::default();
                    inflight.insert(digest, f.clone());
                    f
                }
            }
        };
        let answer = flight
            .get_or_init(|| async {
                let r = self.check(presented).await.map_err(|e| e.to_string());
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                match &r {
                    Ok(Some(p)) => {
                        cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
                        cache.insert(digest, (p.clone(), Instant::now()));
                    }
                    // Revoked or gone: a cached answer must not outlive the key.
                    Ok(None) => {
                        cache.remove(&digest);
                        self.remember_failure(digest);
                    }
                    Err(_) => {}
                }
                r
            })
            .await
            .clone();
        // Whoever sees the answer first retires the flight (if it is still this one).
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if inflight
            .get(&digest)
            .is_some_and(|f| Arc::ptr_eq(f, &flight))
        {
            inflight.remove(&digest);
        }
        drop(inflight);
        answer.map_err(StoreError::Task)
    }

    /// How many key checks against the store have run (each is one lookup and, for a known
    /// prefix, one argon2 verification).
    pub fn checks_run(&self) -> u64 {
        self.checks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Looks the key up and checks its hash (on the blocking pool, bounded).
    async fn check(&self, presented: &str) -> Result<Option<Principal>, StoreError> {
        self.checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _permit = self
            .hashing
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?;
        let store = self.store.clone();
        let key = presented.to_string();
        tokio::task::spawn_blocking(move || -> Result<Option<Principal>, StoreError> {
            let row = store.read(|c| {
                match keys::find_active_by_prefix(c, &key[..LOOKUP_LEN])? {
                    // A key made when prefixes were 16 characters whose first 14 another key
                    // shared kept its 16 (the migration to 14).
                    None if key.len() >= LEGACY_LOOKUP_LEN => {
                        keys::find_active_by_prefix(c, &key[..LEGACY_LOOKUP_LEN])
                    }
                    found => Ok(found),
                }
            })?;
            let Some(row) = row else { return Ok(None) };
            if let Some(hex) = row.key_hash.strip_prefix("sha256:") {
                // A key declared in configuration by its SHA-256 (compared in constant time).
                let digest = format!("{:x}", Sha256::digest(key.as_bytes()));
                let same: bool = subtle::ConstantTimeEq::ct_eq(
                    digest.as_bytes(),
                    hex.to_ascii_lowercase().as_bytes(),
                )
                .into();
                if !same {
                    return Ok(None);
                }
            } else {
                let Ok(parsed) = PasswordHash::new(&row.key_hash) else {
                    return Ok(None);
                };
                // argon2's verifier compares the hashes in constant time.
                if hasher().verify_password(key.as_bytes(), &parsed).is_err() {
                    return Ok(None);
                }
            }
            // At most one write a minute per key: verification stays read-mostly.
            let stale = store::now() - chrono::Duration::seconds(60);
            if row.last_used_at.is_none_or(|t| t < stale) {
                store.write(|c| keys::touch(c, &row.org_id, &row.id))?;
            }
            Ok(Some(Principal {
                org_id: row.org_id,
                key_id: row.id,
                scopes: row.scopes.split(',').filter_map(Scope::parse).collect(),
            }))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// A live cached answer and its age.
    fn cached(&self, digest: &[u8; 32]) -> Option<(Principal, Duration)> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let (p, at) = cache.get(digest)?;
        let age = at.elapsed();
        (age < CACHE_TTL).then(|| (p.clone(), age))
    }

    /// Drops every cached verification (after a revocation on this instance).
    pub fn invalidate_all(&self) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Forgets failures (a tenant was enabled again: its keys work at once).
    pub fn forget_failures(&self) {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_shape_is_checked_before_any_lookup() {
        assert!(well_formed(&format!("{KEY_PREFIX}{}", "a".repeat(32))));
        assert!(!well_formed(&format!("{KEY_PREFIX}{}", "a".repeat(31))));
        assert!(!well_formed(&format!("kt_test_{}", "a".repeat(32))));
        assert!(!well_formed(&format!("{KEY_PREFIX}{}!", "a".repeat(31))));
    }
}

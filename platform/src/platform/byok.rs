//! Bring your own key: an org's model-provider keys, sealed with AES-256-GCM under a master key
//! from the environment (`KARTA_MASTER_KEY`: 32 bytes, base64), opened only by the model
//! gateway when it forwards that org's call. A key never enters a harness process, a log line
//! or the database in clear; only its last four characters are ever shown.
//!
//! Sealed form: `v1.<master key id>.<base64(nonce ‖ ciphertext ‖ tag)>`, with the org and
//! provider as associated data (a sealed key copied to another row does not open).
//! Rotation: start with the new key in `KARTA_MASTER_KEY` and the old in
//! `KARTA_MASTER_KEY_PREVIOUS`, run `karta byok rotate-master`, then drop the old one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use sha2::Digest;

use crate::store::model_keys::{self, ModelKey};
use crate::store::{Store, StoreError};

/// How long an opened key is kept in memory before it is read and opened again.
const CACHE_TTL: Duration = Duration::from_secs(30);
/// Opened keys kept at most.
const CACHE_MAX: usize = 10_000;

/// The providers a key can be set for.
pub const PROVIDERS: [&str; 2] = ["anthropic", "openai"];

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum ByokError {
    /// No master key is configured.
    #[error("BYOK needs a master key: set KARTA_MASTER_KEY (32 random bytes, base64)")]
    NoMasterKey,
    /// A master key is malformed.
    #[error("{0} must be 32 bytes, base64-encoded")]
    BadMasterKey(&'static str),
    /// A sealed key does not open (wrong master key, or tampered).
    #[error("a stored model key does not open with master key {0}")]
    Unsealable(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A master key and its id (the first 8 bytes of its SHA-256, hex).
pub struct MasterKey {
    id: String,
    key: LessSafeKey,
}

impl MasterKey {
    /// A master key from its base64 text.
    pub fn parse(var: &'static str, text: &str) -> Result<Self, ByokError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| ByokError::BadMasterKey(var))?;
        if raw.len() != 32 {
            return Err(ByokError::BadMasterKey(var));
        }
        let id = hex(&sha2::Sha256::digest(&raw)[..8]);
        let key = UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| ByokError::BadMasterKey(var))?;
        Ok(MasterKey {
            id,
            key: LessSafeKey::new(key),
        })
    }

    /// The id stored beside what it seals.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `secret` for the org's provider.
    pub fn seal(&self, org_id: &str, provider: &str, secret: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::Rng::fill(&mut rand::thread_rng(), &mut nonce);
        let mut buf = secret.as_bytes().to_vec();
        let aad = format!("{org_id}\n{provider}");
        // Sealing with a valid key and a fresh nonce does not fail.
        let _ = self.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_bytes()),
            &mut buf,
        );
        let mut out = nonce.to_vec();
        out.extend(buf);
        format!(
            "v1.{}.{}",
            self.id,
            base64::engine::general_purpose::STANDARD.encode(out)
        )
    }

    /// Opens what [`MasterKey::seal`] made for the same org and provider.
    pub fn open(&self, org_id: &str, provider: &str, sealed: &str) -> Option<String> {
        let mut parts = sealed.splitn(3, '.');
        let (Some("v1"), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return None;
        };
        if id != self.id {
            return None;
        }
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = ct.to_vec();
        let aad = format!("{org_id}\n{provider}");
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
            .ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

/// The last four characters of a secret: all that is ever shown of it.
pub fn last4(secret: &str) -> String {
    let n = secret.chars().count();
    secret.chars().skip(n.saturating_sub(4)).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The master keys from the environment: the current one, and the previous one during a
/// rotation.
pub fn master_keys_from_env() -> Result<(Option<MasterKey>, Option<MasterKey>), ByokError> {
    let read = |var: &'static str| -> Result<Option<MasterKey>, ByokError> {
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => MasterKey::parse(var, &v).map(Some),
            _ => Ok(None),
        }
    };
    Ok((
        read("KARTA_MASTER_KEY")?,
        read("KARTA_MASTER_KEY_PREVIOUS")?,
    ))
}

/// What the API shows of a key.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyInfo {
    /// The provider.
    pub provider: String,
    /// The last four characters.
    pub last4: String,
    /// When first set.
    pub created_at: chrono::NaiveDateTime,
    /// When last replaced.
    pub updated_at: chrono::NaiveDateTime,
}

impl From<&ModelKey> for KeyInfo {
    fn from(k: &ModelKey) -> Self {
        KeyInfo {
            provider: k.provider.clone(),
            last4: k.last4.clone(),
            created_at: k.created_at,
            updated_at: k.updated_at,
        }
    }
}

/// An opened key (or the knowledge that there is none) and when it was read.
type Opened = (Option<String>, Instant);

/// The orgs' keys: sealing on write, opening (with a short cache) on use.
pub struct ModelKeys {
    store: Store,
    current: Option<MasterKey>,
    previous: Option<MasterKey>,
    cache: Mutex<HashMap<(String, String), Opened>>,
}

impl ModelKeys {
    /// Over `store`, with the master keys given.
    pub fn new(store: Store, current: Option<MasterKey>, previous: Option<MasterKey>) -> Self {
        ModelKeys {
            store,
            current,
            previous,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether BYOK can be used (a master key is configured).
    pub fn enabled(&self) -> bool {
        self.current.is_some()
    }

    /// Seals another kind of secret of the org (a webhook's signing secret) under the current
    /// master key, bound to `purpose`.
    pub fn seal_other(
        &self,
        org_id: &str,
        purpose: &str,
        secret: &str,
    ) -> Result<String, ByokError> {
        let key = self.current.as_ref().ok_or(ByokError::NoMasterKey)?;
        Ok(key.seal(org_id, purpose, secret))
    }

    /// Opens what [`ModelKeys::seal_other`] sealed (under the current or the previous master
    /// key).
    pub fn open_other(&self, org_id: &str, purpose: &str, sealed: &str) -> Option<String> {
        [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .find_map(|k| k.open(org_id, purpose, sealed))
    }

    fn forget(&self, org_id: &str, provider: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(org_id.to_string(), provider.to_string()));
    }

    /// Seals and stores the org's key for the provider, in a transaction with `audit`;
    /// whether it replaced one.
    pub async fn put(
        &self,
        org_id: &str,
        provider: &str,
        secret: &str,
        audit: impl Fn(&mut crate::store::Conn, bool) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(bool, KeyInfo), ByokError> {
        let master = self.current.as_ref().ok_or(ByokError::NoMasterKey)?;
        let now = crate::store::now();
        let row = ModelKey {
            org_id: org_id.to_string(),
            provider: provider.to_string(),
            sealed: master.seal(org_id, provider, secret),
            master_key_id: master.id.clone(),
            last4: last4(secret),
            created_at: now,
            updated_at: now,
        };
        let info = KeyInfo::from(&row);
        let replaced = self
            .store
            .write_async(move |c| {
                let replaced = model_keys::put(c, &row)?;
                audit(c, replaced)?;
                Ok(replaced)
            })
            .await?;
        self.forget(org_id, provider);
        Ok((replaced, info))
    }

    /// What is shown of the org's key for the provider.
    pub async fn info(&self, org_id: &str, provider: &str) -> Result<Option<KeyInfo>, ByokError> {
        let (o, p) = (org_id.to_string(), provider.to_string());
        let row = self
            .store
            .read_async(move |c| model_keys::get(c, &o, &p))
            .await?;
        Ok(row.as_ref().map(KeyInfo::from))
    }

    /// Removes the org's key for the provider (with `audit`); whether there was one.
    pub async fn delete(
        &self,
        org_id: &str,
        provider: &str,
        audit: impl Fn(&mut crate::store::Conn) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<bool, ByokError> {
        let (o, p) = (org_id.to_string(), provider.to_string());
        let gone = self
            .store
            .write_async(move |c| {
                let gone = model_keys::delete(c, &o, &p)?;
                if gone {
                    audit(c)?;
                }
                Ok(gone)
            })
            .await?;
        self.forget(org_id, provider);
        Ok(gone)
    }

    /// The org's key for the provider, opened, if it has one (cached for a short while).
    pub async fn resolve(&self, org_id: &str, provider: &str) -> Result<Option<String>, ByokError> {
        if self.current.is_none() && self.previous.is_none() {
            return Ok(None);
        }
        let k = (org_id.to_string(), provider.to_string());
        if let Some((v, at)) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&k) {
            if at.elapsed() < CACHE_TTL {
                return Ok(v.clone());
            }
        }
        let (o, p) = k.clone();
        let row = self
            .store
            .read_async(move |c| model_keys::get(c, &o, &p))
            .await?;
        let opened = match row {
            None => None,
            Some(r) => Some(self.open(&r)?),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(k, (opened.clone(), Instant::now()));
        Ok(opened)
    }

    fn open(&self, r: &ModelKey) -> Result<String, ByokError> {
        [self.current.as_ref(), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|m| m.id == r.master_key_id)
            .and_then(|m| m.open(&r.org_id, &r.provider, &r.sealed))
            .ok_or_else(|| ByokError::Unsealable(r.master_key_id.clone()))
    }

    /// Re-seals every key under the current master key; how many changed.
    pub fn rotate(&self) -> Result<usize, ByokError> {
        let master = self.current.as_ref().ok_or(ByokError::NoMasterKey)?;
        let rows = self.store.read(model_keys::all)?;
        let mut changed = 0;
        for r in rows.iter().filter(|r| r.master_key_id != master.id) {
            let secret = self.open(r)?;
            let row = ModelKey {
                sealed: master.seal(&r.org_id, &r.provider, &secret),
                master_key_id: master.id.clone(),
                updated_at: crate::store::now(),
                ..r.clone()
            };
            self.store.write(move |c| {
                model_keys::put(c, &row)?;
                crate::store::audit::record(
                    c,
                    Some(&row.org_id),
                    "cli",
                    "model_key.resealed",
                    &row.provider,
                    &serde_json::json!({"master_key_id": row.master_key_id}),
                )
            })?;
            changed += 1;
        }
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> MasterKey {
        MasterKey::parse(
            "KARTA_MASTER_KEY",
            &base64::engine::general_purpose::STANDARD.encode([byte; 32]),
        )
        .unwrap()
    }

    #[test]
    fn a_sealed_key_opens_only_for_its_row_and_master_key() {
        let m = key(7);
        let sealed = m.seal("org_a", "anthropic", "sk-ant-secret-1234");
        assert!(!sealed.contains("secret"));
        assert_eq!(
            m.open("org_a", "anthropic", &sealed).as_deref(),
            Some("sk-ant-secret-1234")
        );
        assert_eq!(m.open("org_b", "anthropic", &sealed), None);
        assert_eq!(m.open("org_a", "openai", &sealed), None);
        assert_eq!(key(8).open("org_a", "anthropic", &sealed), None);
        // Two seals of one secret differ (fresh nonces).
        assert_ne!(sealed, m.seal("org_a", "anthropic", "sk-ant-secret-1234"));
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push('A');
        assert_eq!(m.open("org_a", "anthropic", &tampered), None);
        assert!(MasterKey::parse("X", "c2hvcnQ=").is_err());
    }

    #[tokio::test]
    async fn rotation_reseals_every_key_and_the_old_master_key_can_then_go() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("k.db").display());
        let store = Store::open(&url).unwrap();
        let audit = |_: &mut crate::store::Conn, _: bool| Ok(());
        let old = ModelKeys::new(store.clone(), Some(key(1)), None);
        old.put("org_a", "openai", "sk-proj-abcd", audit)
            .await
            .unwrap();
        assert_eq!(
            old.info("org_a", "openai").await.unwrap().unwrap().last4,
            "abcd"
        );
        // The new key alone cannot open what the old one sealed.
        let only_new = ModelKeys::new(store.clone(), Some(key(2)), None);
        assert!(only_new.resolve("org_a", "openai").await.is_err());
        let rotating = ModelKeys::new(store.clone(), Some(key(2)), Some(key(1)));
        assert_eq!(
            rotating
                .resolve("org_a", "openai")
                .await
                .unwrap()
                .as_deref(),
            Some("sk-proj-abcd")
        );
        assert_eq!(rotating.rotate().unwrap(), 1);
        assert_eq!(rotating.rotate().unwrap(), 0, "nothing left to re-seal");
        let after = ModelKeys::new(store, Some(key(2)), None);
        assert_eq!(
            after.resolve("org_a", "openai").await.unwrap().as_deref(),
            Some("sk-proj-abcd")
        );
        assert_eq!(after.resolve("org_b", "openai").await.unwrap(), None);
    }
}

//! Per-session capability tokens: what a harness holds instead of a provider key.
//!
//! A token is minted when a session's harness is given its environment, is the same for every
//! turn while that harness may still be running (a warm harness keeps its environment), and is
//! revoked when the session closes or its harness is stopped. It is valid only at the gateway.
//! Tokens live in memory: harness processes do not outlive the Karta process that started them.

use std::collections::HashMap;
use std::sync::Mutex;

use rand::distributions::{Alphanumeric, DistString};

/// Who a token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The session's org.
    pub org_id: String,
    /// The session's project.
    pub project_id: String,
    /// The session.
    pub session_id: String,
    /// The sandbox's network: outside `full`, calls may not make the provider reach out.
    pub network: karta_driver_kit::sandbox::NetworkMode,
}

#[derive(Default)]
struct Inner {
    by_token: HashMap<String, Grant>,
    by_session: HashMap<String, String>,
    /// Sessions whose last model call was refused for a reason the turn's error should name.
    refusals: HashMap<String, Refusal>,
}

/// Why the gateway refused (or the provider rejected) a session's model call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The error code the turn reports: `byok_key_rejected`, `budget_exhausted`.
    pub code: &'static str,
    /// The provider involved, if any.
    pub provider: Option<String>,
    /// What the client is told.
    pub message: String,
}

/// The live tokens.
#[derive(Default)]
pub struct Grants {
    inner: Mutex<Inner>,
}

/// Prefix of gateway tokens (so a leaked one is recognisable).
pub const TOKEN_PREFIX: &str = "kgw_";

impl Grants {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session's token, minted if it has none.
    pub fn grant(&self, grant: Grant) -> String {
        let mut inner = self.lock();
        if let Some(t) = inner.by_session.get(&grant.session_id) {
            return t.clone();
        }
        let token = format!(
            "{TOKEN_PREFIX}{}",
            Alphanumeric.sample_string(&mut rand::thread_rng(), 40)
        );
        inner
            .by_session
            .insert(grant.session_id.clone(), token.clone());
        inner.by_token.insert(token.clone(), grant);
        token
    }

    /// Ends the session's token, if it has one.
    pub fn revoke(&self, session_id: &str) {
        let mut inner = self.lock();
        if let Some(t) = inner.by_session.remove(session_id) {
            inner.by_token.remove(&t);
        }
        inner.refusals.remove(session_id);
    }

    /// Notes why a model call of the session was refused (the turn's error will say so).
    pub fn mark_refused(&self, session_id: &str, refusal: Refusal) {
        let mut inner = self.lock();
        if inner.by_session.contains_key(session_id) {
            inner.refusals.insert(session_id.to_string(), refusal);
        }
    }

    /// Why a model call of the session was refused since last asked, if one was.
    pub fn take_refusal(&self, session_id: &str) -> Option<Refusal> {
        self.lock().refusals.remove(session_id)
    }

    /// Whom a token speaks for, while it is live.
    pub fn check(&self, token: &str) -> Option<Grant> {
        self.lock().by_token.get(token).cloned()
    }

    /// Live tokens (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().by_token.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> Grant {
        Grant {
            org_id: "org_1".into(),
            project_id: "prj_1".into(),
            session_id: s.into(),
            network: Default::default(),
        }
    }

    #[test]
    fn a_session_keeps_its_token_until_revoked_and_tokens_are_not_shared() {
        let grants = Grants::default();
        let a = grants.grant(g("sess_a"));
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 40);
        assert_eq!(grants.grant(g("sess_a")), a);
        let b = grants.grant(g("sess_b"));
        assert_ne!(a, b);
        assert_eq!(grants.check(&a).unwrap().session_id, "sess_a");
        grants.revoke("sess_a");
        assert!(grants.check(&a).is_none());
        assert_eq!(grants.check(&b).unwrap().session_id, "sess_b");
        assert!(grants.check("kgw_guess").is_none());
        let again = grants.grant(g("sess_a"));
        assert_ne!(again, a, "a revoked token never comes back");
        assert_eq!(grants.len(), 2);
    }
}

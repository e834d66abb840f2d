//! Request rates of tenants and projects (`limits` of `[[tenants]]` and `[[projects]]`): GCRA
//! limiters (`governor`) per API key and per client address, rebuilt only when a scope's quota
//! changes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

type Keyed<K> = RateLimiter<K, HashMapStateStore<K>, DefaultClock>;

/// A scope's request rates per minute: (per key, per address).
pub type Rates = (Option<u32>, Option<u32>);

struct ScopeRates {
    rates: Rates,
    per_key: Option<Keyed<String>>,
    per_ip: Option<Keyed<IpAddr>>,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(per_minute: Option<u32>) -> Option<Keyed<K>> {
    let n = NonZeroU32::new(per_minute?)?;
    Some(RateLimiter::hashmap(Quota::per_minute(n)))
}

/// The limiters of every scope (an org id or a project id) that sets a rate.
#[derive(Default)]
pub struct RateLimits {
    by_scope: RwLock<HashMap<String, Arc<ScopeRates>>>,
    /// Some project sets a rate (so requests look their project up).
    projects: std::sync::atomic::AtomicBool,
}

impl RateLimits {
    /// Takes the scopes' rates (by org id and project id); limiters whose rates did not change
    /// keep their state.
    pub fn configure(&self, wanted: HashMap<String, Rates>) {
        // Project ids are `prj_...` (`store::new_id`).
        let projects = wanted
            .iter()
            .any(|(id, r)| id.starts_with("prj_") && *r != (None, None));
        self.projects
            .store(projects, std::sync::atomic::Ordering::Relaxed);
        let mut by_scope = self.by_scope.write().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::take(&mut *by_scope);
        for (org, rates) in wanted {
            if rates == (None, None) {
                continue;
            }
            let kept = old.get(&org).filter(|o| o.rates == rates).cloned();
            let entry = kept.unwrap_or_else(|| {
                Arc::new(ScopeRates {
                    rates,
                    per_key: limiter(rates.0),
                    per_ip: limiter(rates.1),
                })
            });
            by_scope.insert(org, entry);
        }
    }

    /// Whether any project sets a rate.
    pub fn any_project_rates(&self) -> bool {
        self.projects.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts a request of `key` from `ip` to `scope`; `Err(wait)` when a rate is exceeded.
    pub fn check(&self, scope: &str, key: &str, ip: Option<IpAddr>) -> Result<(), Duration> {
        let Some(o) = self
            .by_scope
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(scope)
            .cloned()
        else {
            return Ok(());
        };
        let clock = DefaultClock::default();
        if let Some(l) = &o.per_key {
            l.check_key(&key.to_string())
                .map_err(|n| n.wait_time_from(clock.now()))?;
        }
        if let (Some(l), Some(ip)) = (&o.per_ip, ip) {
            l.check_key(&ip)
                .map_err(|n| n.wait_time_from(clock.now()))?;
        }
        Ok(())
    }

    /// Drops state of keys and addresses not seen lately.
    pub fn prune(&self) {
        for o in self
            .by_scope
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            if let Some(l) = &o.per_key {
                l.retain_recent();
            }
            if let Some(l) = &o.per_ip {
                l.retain_recent();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_has_its_own_rate_and_unlimited_orgs_pass() {
        let r = RateLimits::default();
        r.configure(HashMap::from([("org_a".to_string(), (Some(2), None))]));
        assert!(r.check("org_a", "k1", None).is_ok());
        assert!(r.check("org_a", "k1", None).is_ok());
        let wait = r.check("org_a", "k1", None).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(30));
        assert!(r.check("org_a", "k2", None).is_ok());
        for _ in 0..100 {
            assert!(r.check("org_b", "k1", None).is_ok());
        }
        // Same rates: the state survives a reload; new rates start afresh.
        r.configure(HashMap::from([("org_a".to_string(), (Some(2), None))]));
        assert!(r.check("org_a", "k1", None).is_err());
        r.configure(HashMap::from([("org_a".to_string(), (Some(3), None))]));
        assert!(r.check("org_a", "k1", None).is_ok());
    }
}

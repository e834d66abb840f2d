//! Addresses that keep presenting wrong credentials are slowed down: after
//! `[server] auth_failures_per_minute` failures, their requests get 429 until the rate allows
//! another try. The limiter is GCRA (`governor`); state is per address and pruned.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

/// Addresses remembered as blocked at most.
const MAX_BLOCKED: usize = 65_536;

/// Failed authentications per address.
pub struct AuthThrottle {
    limiter: RateLimiter<IpAddr, HashMapStateStore<IpAddr>, DefaultClock>,
    clock: DefaultClock,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl AuthThrottle {
    /// A throttle allowing `per_minute` failures per address (with that much burst).
    pub fn new(per_minute: u32) -> Self {
        let n = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        let clock = DefaultClock::default();
        Self {
            limiter: RateLimiter::hashmap_with_clock(Quota::per_minute(n), clock.clone()),
            clock,
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// How long `ip` must still wait, when it is blocked.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        let until = *blocked.get(&ip)?;
        until.checked_duration_since(Instant::now())
    }

    /// Counts a failed authentication from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        if let Err(not_until) = self.limiter.check_key(&ip) {
            let wait = not_until.wait_time_from(self.clock.now());
            let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
            if blocked.len() >= MAX_BLOCKED {
                let now = Instant::now();
                blocked.retain(|_, until| *until > now);
            }
            blocked.insert(ip, Instant::now() + wait);
        }
    }

    /// Drops state of addresses that have not failed lately (call now and then).
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        let now = Instant::now();
        self.blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_blocked_past_its_failures_and_others_are_not() {
        let t = AuthThrottle::new(3);
        let bad: IpAddr = "10.0.0.1".parse().unwrap();
        let good: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(t.blocked(bad).is_none());
            t.failed(bad);
        }
        t.failed(bad);
        let wait = t.blocked(bad).expect("blocked after its burst");
        assert!(
            wait <= Duration::from_secs(20) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(t.blocked(good).is_none());
        t.prune();
        assert!(t.blocked(bad).is_some(), "still blocked after a prune");
    }
}

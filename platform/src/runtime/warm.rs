//! The cap on warm harnesses: sessions whose harness process may still be running (a real one
//! costs hundreds of MB). Every session that runs a turn is counted, globally and per tenant;
//! past a cap the least recently used idle session's harness is stopped (the driver's
//! `end_session`), and when every counted session is busy the new turn is refused (503).
//!
//! A harness the driver stopped by itself (its idle timeout) stays counted until it is evicted
//! here, which costs an `end_session` that does nothing: the count errs high, never low.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// Caps from `[runtime]`.
#[derive(Clone, Copy, Debug)]
pub struct WarmLimits {
    /// Warm harnesses at most (`runtime.max_warm_harnesses`).
    pub total: usize,
    /// Warm harnesses of one tenant at most (`runtime.max_warm_harnesses_per_tenant`).
    pub per_tenant: usize,
}

struct Entry {
    /// The scopes (org id, project id) the session counts in.
    scopes: Vec<String>,
    driver: String,
    last_used: u64,
}

/// A session to stop, with its turn lock held so no turn starts on it meanwhile.
pub(crate) struct Eviction {
    pub(crate) session_id: String,
    pub(crate) driver: String,
    pub(crate) _guard: OwnedMutexGuard<()>,
}

/// The counted sessions.
#[derive(Default)]
pub(crate) struct WarmSet {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    clock: u64,
    entries: HashMap<String, Entry>,
}

impl WarmSet {
    /// Counts `session_id` (served by `driver`) as warm in each of its `scopes` (an org id, a
    /// project id, each with its cap) and overall (`total`). Returns the sessions to stop to
    /// stay within the caps, each with its turn lock; `None` when nothing can make room.
    /// `lock_idle` try-locks a session's turn lock, and succeeds only for an idle session.
    pub(crate) fn admit(
        &self,
        session_id: &str,
        driver: &str,
        scopes: &[(&str, usize)],
        total: usize,
        lock_idle: impl Fn(&str) -> Option<OwnedMutexGuard<()>>,
    ) -> Option<Vec<Eviction>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.clock += 1;
        let now = inner.clock;
        if let Some(e) = inner.entries.get_mut(session_id) {
            e.last_used = now;
            return Some(Vec::new());
        }
        let mut evict: Vec<Eviction> = Vec::new();
        // `None` is every session; `Some(scope)` the sessions counted in that scope.
        let checks = scopes
            .iter()
            .map(|(scope, cap)| (Some(*scope), *cap))
            .chain([(None, total)]);
        for (scope, cap) in checks {
            let within = |e: &Entry| scope.is_none_or(|s| e.scopes.iter().any(|x| x == s));
            loop {
                let gone = |sid: &str| evict.iter().any(|e| e.session_id == sid);
                let count = inner
                    .entries
                    .iter()
                    .filter(|(sid, e)| !gone(sid) && within(e))
                    .count();
                if count < cap {
                    break;
                }
                // Least recently used first, among sessions no turn holds.
                let mut candidates: Vec<(&String, &Entry)> = inner
                    .entries
                    .iter()
                    .filter(|(sid, e)| within(e) && !gone(sid))
                    .collect();
                candidates.sort_by_key(|(_, e)| e.last_used);
                let picked = candidates.into_iter().find_map(|(sid, e)| {
                    lock_idle(sid).map(|g| Eviction {
                        session_id: sid.clone(),
                        driver: e.driver.clone(),
                        _guard: g,
                    })
                });
                match picked {
                    Some(e) => evict.push(e),
                    // Every counted session is running a turn; the guards taken so far drop.
                    None => return None,
                }
            }
        }
        for e in &evict {
            inner.entries.remove(&e.session_id);
        }
        inner.entries.insert(
            session_id.to_string(),
            Entry {
                scopes: scopes.iter().map(|(s, _)| s.to_string()).collect(),
                driver: driver.to_string(),
                last_used: now,
            },
        );
        Some(evict)
    }

    /// Stops counting a session (closed).
    pub(crate) fn forget(&self, session_id: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .remove(session_id);
    }

    /// Sessions counted now.
    pub(crate) fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
    }
}

/// Try-locks a turn lock: `Some` only when no turn holds it.
pub(crate) fn try_idle(lock: &Arc<tokio::sync::Mutex<()>>) -> Option<OwnedMutexGuard<()>> {
    lock.clone().try_lock_owned().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_idle_session_makes_room_and_busy_ones_do_not() {
        let set = WarmSet::default();
        let t1 = [("t1", 2)];
        let t2 = [("t2", 2)];
        let locks: HashMap<&str, Arc<tokio::sync::Mutex<()>>> = ["a", "b", "c", "d"]
            .into_iter()
            .map(|s| (s, Arc::new(tokio::sync::Mutex::new(()))))
            .collect();
        let idle = |sid: &str| try_idle(&locks[sid]);
        assert!(set.admit("a", "echo", &t1, 3, idle).unwrap().is_empty());
        assert!(set.admit("b", "echo", &t1, 3, idle).unwrap().is_empty());
        // Tenant t1 is full: its least recently used (a) goes.
        let ev = set.admit("c", "echo", &t1, 3, idle).unwrap();
        assert_eq!(
            ev.iter().map(|e| e.session_id.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        drop(ev);
        assert_eq!(set.len(), 2);
        // Using b again makes c the least recent; a busy c cannot be evicted, so b goes.
        assert!(set.admit("b", "echo", &t1, 3, idle).unwrap().is_empty());
        let busy_c = try_idle(&locks["c"]).unwrap();
        let ev = set.admit("d", "echo", &t1, 3, idle).unwrap();
        assert_eq!(ev[0].session_id, "b");
        drop(ev);
        // Now c (busy) and d (busy too) fill t1: no room.
        let busy_d = try_idle(&locks["d"]).unwrap();
        assert!(set.admit("a", "echo", &t1, 3, idle).is_none());
        drop((busy_c, busy_d));
        // Another tenant fits under the total.
        assert!(set.admit("x", "echo", &t2, 3, |_| None).unwrap().is_empty());
        set.forget("x");
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn a_projects_cap_evicts_within_the_project_only() {
        let set = WarmSet::default();
        let locks: HashMap<&str, Arc<tokio::sync::Mutex<()>>> = ["a", "b", "c"]
            .into_iter()
            .map(|s| (s, Arc::new(tokio::sync::Mutex::new(()))))
            .collect();
        let idle = |sid: &str| try_idle(&locks[sid]);
        let p1 = [("t1", 5), ("p1", 1)];
        let p2 = [("t1", 5), ("p2", usize::MAX)];
        assert!(set.admit("a", "echo", &p1, 10, idle).unwrap().is_empty());
        assert!(set.admit("c", "echo", &p2, 10, idle).unwrap().is_empty());
        let ev = set.admit("b", "echo", &p1, 10, idle).unwrap();
        assert_eq!(
            ev.iter().map(|e| e.session_id.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        drop(ev);
        assert_eq!(set.len(), 2);
    }
}

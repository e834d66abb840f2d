//! Things running at once per tenant and per project: turns (`limits.concurrent_turns`) and
//! attached streams (`limits.concurrent_streams`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Running things by scope (an org id or a project id).
#[derive(Default)]
pub(crate) struct ScopeCounts {
    counts: Mutex<HashMap<String, usize>>,
}

/// One running thing, counted until dropped.
pub(crate) struct ScopeTicket {
    counts: Arc<ScopeCounts>,
    scopes: Vec<String>,
}

impl ScopeCounts {
    /// Counts one more in the org's and the project's scope, each bounded by its entry in
    /// `limits` (unbounded without one).
    pub(crate) fn try_start_in(
        self: &Arc<Self>,
        limits: &HashMap<String, usize>,
        org_id: &str,
        project_id: &str,
    ) -> Result<ScopeTicket, usize> {
        let scopes: Vec<(String, usize)> = [org_id, project_id]
            .into_iter()
            .filter_map(|s| limits.get(s).map(|max| (s.to_string(), *max)))
            .collect();
        self.try_start(&scopes)
    }

    /// Counts one more in every scope, unless one is at its limit: then the limit that was hit.
    pub(crate) fn try_start(
        self: &Arc<Self>,
        scopes: &[(String, usize)],
    ) -> Result<ScopeTicket, usize> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for (scope, max) in scopes {
            if counts.get(scope).copied().unwrap_or(0) >= *max {
                return Err(*max);
            }
        }
        for (scope, _) in scopes {
            *counts.entry(scope.clone()).or_default() += 1;
        }
        Ok(ScopeTicket {
            counts: self.clone(),
            scopes: scopes.iter().map(|(s, _)| s.clone()).collect(),
        })
    }
}

impl Drop for ScopeTicket {
    fn drop(&mut self) {
        let mut counts = self.counts.counts.lock().unwrap_or_else(|p| p.into_inner());
        for s in &self.scopes {
            if let Some(n) = counts.get_mut(s) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_at_its_limit_refuses_and_a_finished_turn_frees_its_place() {
        let c = Arc::new(ScopeCounts::default());
        let both = [("org".to_string(), 2), ("prj".to_string(), 1)];
        let t1 = c.try_start(&both).unwrap();
        assert_eq!(c.try_start(&both).err(), Some(1));
        let other = c.try_start(&[("org".to_string(), 2)]).unwrap();
        assert_eq!(c.try_start(&[("org".to_string(), 2)]).err(), Some(2));
        drop(t1);
        drop(other);
        assert!(c.try_start(&both).is_ok());
        assert!(c.counts.lock().unwrap().is_empty());
    }
}

//! The budget gate (`[[budgets]]`): before a turn starts, its tenant's and project's usage this
//! calendar month (UTC), plus what turns running now have reserved, must be under every cap;
//! otherwise 402 `budget_exhausted` and nothing runs. A turn reserves an estimate (the scope's
//! average turn this month, or `reserve_tokens`) until it ends, so concurrent turns cannot all
//! slip under a cap at once: they overrun it by at most one estimate's error each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::platform::money::MicroCents;
use crate::store::usage::Totals;

/// Tokens reserved by a turn when the scope has no turn this month to average.
const FIRST_TURN_TOKENS: u64 = 1000;

/// A scope's caps per calendar month.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    /// Input tokens (cached included).
    pub input_tokens: Option<u64>,
    /// Output tokens.
    pub output_tokens: Option<u64>,
    /// Input plus output.
    pub total_tokens: Option<u64>,
    /// Cost in cents.
    pub cost_cents: Option<u64>,
    /// Tokens a starting turn reserves (the month's average turn when absent).
    pub reserve_tokens: Option<u64>,
}

/// What running turns hold of a scope: (tokens, micro-cents).
type Held = (u64, u64);

/// Reservations of running turns, by scope.
#[derive(Default)]
pub(crate) struct Reservations {
    held: Mutex<HashMap<String, Held>>,
}

/// One turn's reservations, given back when it ends.
pub(crate) struct Reservation {
    all: Arc<Reservations>,
    parts: Vec<(String, Held)>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut held = self.all.held.lock().unwrap_or_else(|p| p.into_inner());
        for (scope, (t, m)) in &self.parts {
            if let Some(h) = held.get_mut(scope) {
                h.0 = h.0.saturating_sub(*t);
                h.1 = h.1.saturating_sub(*m);
                if *h == (0, 0) {
                    held.remove(scope);
                }
            }
        }
    }
}

/// Why `used` plus `held` is past `caps`, if it is.
pub fn exhausted(caps: &Caps, used: &Totals, held: Held) -> Option<&'static str> {
    let input = used.input_tokens;
    let output = used.output_tokens;
    let total = input + output + held.0;
    let cents = MicroCents(used.cost_micro_cents.saturating_add(held.1))
        .to_cents_ceil()
        .0;
    let over = |cap: Option<u64>, v: u64| cap.is_some_and(|c| v >= c);
    if over(caps.total_tokens, total) {
        Some("monthly token cap reached")
    } else if over(caps.input_tokens, input + held.0) {
        Some("monthly input token cap reached")
    } else if over(caps.output_tokens, output) {
        Some("monthly output token cap reached")
    } else if over(caps.cost_cents, cents) {
        Some("monthly cost cap reached")
    } else {
        None
    }
}

/// A turn's estimate in a scope: (tokens, micro-cents).
fn estimate(caps: &Caps, used: &Totals) -> Held {
    let turns = used.turns.max(1);
    let tokens = caps.reserve_tokens.unwrap_or(if used.turns == 0 {
        FIRST_TURN_TOKENS
    } else {
        (used.input_tokens + used.output_tokens) / turns
    });
    (tokens.max(1), used.cost_micro_cents / turns)
}

impl Reservations {
    /// Admits a turn in every scope (its caps, this month's usage, and whether it is an API
    /// key's sub-limit), reserving its estimate in each; or the reason one is exhausted.
    pub(crate) fn admit(
        self: &Arc<Self>,
        scopes: &[(String, Caps, Totals, bool)],
    ) -> Result<Reservation, String> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for (scope, caps, used, is_key) in scopes {
            let h = held.get(scope).copied().unwrap_or_default();
            if let Some(why) = exhausted(caps, used, h) {
                return Err(match is_key {
                    true => why.replacen("monthly", "api key", 1),
                    false => why.to_string(),
                });
            }
        }
        let mut parts = Vec::new();
        for (scope, caps, used, _) in scopes {
            let e = estimate(caps, used);
            let h = held.entry(scope.clone()).or_default();
            h.0 += e.0;
            h.1 += e.1;
            parts.push((scope.clone(), e));
        }
        Ok(Reservation {
            all: self.clone(),
            parts,
        })
    }
}

/// The scopes whose budget is used up, as last computed: the model gateway refuses their
/// sessions' calls (a turn admitted before another used the budget up stops at its next call).
#[derive(Clone, Default)]
pub struct BudgetGate {
    used_up: Arc<std::sync::RwLock<HashMap<String, &'static str>>>,
}

impl BudgetGate {
    /// Records whether a scope is used up (and why).
    pub(crate) fn mark(&self, scope: &str, why: Option<&'static str>) {
        let mut m = self.used_up.write().unwrap_or_else(|p| p.into_inner());
        match why {
            Some(w) => {
                m.insert(scope.to_string(), w);
            }
            None => {
                m.remove(scope);
            }
        }
    }
}

impl crate::gateway::CallGate for BudgetGate {
    fn admit(&self, grant: &crate::gateway::Grant) -> Result<(), String> {
        let m = self.used_up.read().unwrap_or_else(|p| p.into_inner());
        match m.get(&grant.org_id).or_else(|| m.get(&grant.project_id)) {
            Some(why) => Err(format!("budget exhausted: {why}")),
            None => Ok(()),
        }
    }
}

/// The first day of the current month (UTC), as the roll-up writes days.
pub fn month_start() -> String {
    chrono::Utc::now().format("%Y-%m-01").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_is_reached_at_its_value_and_reservations_count_until_dropped() {
        let caps = Caps {
            total_tokens: Some(100),
            reserve_tokens: Some(30),
            ..Default::default()
        };
        let used = Totals {
            turns: 1,
            input_tokens: 20,
            output_tokens: 20,
            cost_micro_cents: 0,
        };
        let r = Arc::new(Reservations::default());
        let s = |u: Totals| vec![("org".to_string(), caps, u, false)];
        let a = r.admit(&s(used)).unwrap();
        // 40 used + 30 held: one more fits (70 < 100), then 40 + 60 = 100 is the cap.
        let b = r.admit(&s(used)).unwrap();
        assert_eq!(
            r.admit(&s(used)).err().as_deref(),
            Some("monthly token cap reached")
        );
        let k = vec![(
            "key_1".to_string(),
            caps,
            Totals {
                input_tokens: 100,
                ..used
            },
            true,
        )];
        assert_eq!(
            r.admit(&k).err().as_deref(),
            Some("api key token cap reached")
        );
        drop((a, b));
        assert!(r.held.lock().unwrap().is_empty());
        let full = Totals {
            input_tokens: 60,
            output_tokens: 40,
            ..used
        };
        assert!(r.admit(&s(full)).is_err());
        let cost = Caps {
            cost_cents: Some(2),
            ..Default::default()
        };
        let spent = Totals {
            cost_micro_cents: 1_000_001,
            ..Default::default()
        };
        // 1.000001 cents rounds up to 2: the cap is reached.
        assert_eq!(
            exhausted(&cost, &spent, (0, 0)),
            Some("monthly cost cap reached")
        );
        let zero = Caps {
            output_tokens: Some(0),
            ..Default::default()
        };
        assert_eq!(
            exhausted(&zero, &Totals::default(), (0, 0)),
            Some("monthly output token cap reached")
        );
    }
}

//! The benchmark's sections.

pub mod adapters;
pub mod idle_streams;
pub mod key_flood;
pub mod reconcile;
pub mod rss;
pub mod sandbox;
pub mod turns;

use crate::karta::{Binaries, Db};
use crate::plan::Plan;

/// What every section gets.
pub struct Ctx {
    /// Counts and durations.
    pub plan: Plan,
    /// The binaries under test.
    pub bins: Binaries,
    /// The store(s) to run Karta on.
    pub dbs: Vec<Db>,
}

//! How much work each section does, in full and in `--quick` mode.

use std::time::Duration;

/// Counts and durations of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `--quick` was given.
    pub quick: bool,
    /// Warm-up before each timed measurement (samples discarded).
    pub warmup: Duration,
    /// Length of each timed measurement.
    pub measure: Duration,
    /// Concurrent clients in the `turns` section.
    pub clients: Vec<usize>,
    /// Open streams in the `idle-streams` section.
    pub idle_streams: Vec<usize>,
    /// Cumulative turn counts at which the `rss` section reads Karta's RSS.
    pub rss_marks: Vec<u64>,
    /// Concurrent clients in the `rss` section.
    pub rss_clients: usize,
    /// Project counts for `karta config apply`.
    pub apply_projects: Vec<usize>,
    /// Projects added by the live reload.
    pub reload_projects: usize,
    /// Requests in flight while creating sessions and opening streams.
    pub setup_concurrency: usize,
}

impl Plan {
    /// The plan for the mode.
    pub fn new(quick: bool) -> Self {
        if quick {
            Plan {
                quick,
                warmup: Duration::from_millis(300),
                measure: Duration::from_secs(1),
                clients: vec![1, 50],
                idle_streams: vec![100],
                rss_marks: vec![1_000, 5_000],
                rss_clients: 50,
                apply_projects: vec![100],
                reload_projects: 100,
                setup_concurrency: 50,
            }
        } else {
            Plan {
                quick,
                warmup: Duration::from_secs(2),
                measure: Duration::from_secs(10),
                clients: vec![1, 50],
                idle_streams: vec![1_000, 10_000],
                rss_marks: vec![10_000, 50_000],
                rss_clients: 50,
                apply_projects: vec![1_000, 10_000],
                reload_projects: 10_000,
                setup_concurrency: 50,
            }
        }
    }
}

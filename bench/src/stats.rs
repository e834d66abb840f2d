//! Latency samples and their percentiles.

use std::time::Duration;

/// One timed operation.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it started, in microseconds since the run's origin.
    pub start_us: u64,
    /// How long it took, in microseconds.
    pub latency_us: u64,
    /// Time to the first SSE event, in microseconds (streamed turns only).
    pub first_event_us: Option<u64>,
}

impl Sample {
    /// When it ended, in microseconds since the run's origin.
    pub fn end_us(&self) -> u64 {
        self.start_us + self.latency_us
    }
}

/// Percentiles of a set of microsecond values.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    /// How many values.
    pub count: usize,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest value.
    pub max: u64,
}

impl Summary {
    /// Summarises `values` (sorted in place).
    pub fn of(values: &mut [u64]) -> Summary {
        if values.is_empty() {
            return Summary::default();
        }
        values.sort_unstable();
        Summary {
            count: values.len(),
            p50: percentile(values, 50.0),
            p99: percentile(values, 99.0),
            max: values[values.len() - 1],
        }
    }

    /// Latency summary of samples.
    pub fn latency(samples: &[Sample]) -> Summary {
        Summary::of(&mut samples.iter().map(|s| s.latency_us).collect::<Vec<_>>())
    }

    /// Time-to-first-event summary of samples that have one.
    pub fn first_event(samples: &[Sample]) -> Summary {
        Summary::of(
            &mut samples
                .iter()
                .filter_map(|s| s.first_event_us)
                .collect::<Vec<_>>(),
        )
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], pct: f64) -> u64 {
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Microseconds of a duration, saturating.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::Summary;

    #[test]
    fn nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        let s = Summary::of(&mut v);
        assert_eq!((s.count, s.p50, s.p99, s.max), (100, 50, 99, 100));
        assert_eq!(Summary::of(&mut []).count, 0);
    }
}

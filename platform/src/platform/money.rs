//! Money as integers: micro-cents (1e-6 cent, what usage is priced in) and cents (what caps and
//! invoices are in). No implicit conversion; a conversion to the coarser unit rounds up, so a
//! charge is never rounded away.

use serde::{Deserialize, Serialize};

/// Micro-cents per cent.
const PER_CENT: u64 = 1_000_000;

/// An amount in micro-cents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MicroCents(pub u64);

/// An amount in cents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cents(pub u64);

impl MicroCents {
    /// The amount in whole cents, rounded up.
    pub fn to_cents_ceil(self) -> Cents {
        Cents(self.0.div_ceil(PER_CENT))
    }

    /// The sum, saturating.
    pub fn saturating_add(self, other: MicroCents) -> MicroCents {
        MicroCents(self.0.saturating_add(other.0))
    }
}

impl Cents {
    /// The amount in micro-cents (saturating).
    pub fn to_micro(self) -> MicroCents {
        MicroCents(self.0.saturating_mul(PER_CENT))
    }
}

/// A stored amount (the database keeps signed integers).
impl From<MicroCents> for i64 {
    fn from(m: MicroCents) -> i64 {
        i64::try_from(m.0).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_up_and_never_overflow() {
        assert_eq!(MicroCents(1).to_cents_ceil(), Cents(1));
        assert_eq!(MicroCents(1_000_000).to_cents_ceil(), Cents(1));
        assert_eq!(MicroCents(1_000_001).to_cents_ceil(), Cents(2));
        assert_eq!(MicroCents(0).to_cents_ceil(), Cents(0));
        assert_eq!(Cents(3).to_micro(), MicroCents(3_000_000));
        assert_eq!(Cents(u64::MAX).to_micro(), MicroCents(u64::MAX));
        assert_eq!(i64::from(MicroCents(u64::MAX)), i64::MAX);
    }
}

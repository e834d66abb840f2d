//! Model prices (`[[prices]]`): the unit prices in force for a model on a day, and what a call's
//! tokens cost at them. Prices are integers in micro-cents per token, so a cost is exact.

use chrono::NaiveDate;

use super::money::MicroCents;
use crate::config::PriceConfig;

/// Prices per token, in micro-cents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnitPrices {
    /// Uncached input.
    pub input: u64,
    /// Output (reasoning included).
    pub output: u64,
    /// Input read from the cache.
    pub cache_read: u64,
    /// Input written to the cache.
    pub cache_write: u64,
}

/// Token counts to price (Karta's convention: input excludes cached tokens, output includes
/// reasoning).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Uncached input.
    pub input: u64,
    /// Output.
    pub output: u64,
    /// Cache reads.
    pub cache_read: u64,
    /// Cache writes.
    pub cache_write: u64,
}

impl UnitPrices {
    /// What `t` costs (saturating; no rounding is needed at this unit).
    pub fn cost(&self, t: &Tokens) -> MicroCents {
        let part = |n: u64, p: u64| n.saturating_mul(p);
        MicroCents(
            part(t.input, self.input)
                .saturating_add(part(t.output, self.output))
                .saturating_add(part(t.cache_read, self.cache_read))
                .saturating_add(part(t.cache_write, self.cache_write)),
        )
    }
}

#[derive(Clone, Debug)]
struct Entry {
    provider: String,
    model: String,
    from: Option<NaiveDate>,
    prices: UnitPrices,
}

/// The configured prices.
#[derive(Clone, Debug, Default)]
pub struct PriceTable {
    entries: Vec<Entry>,
}

impl PriceTable {
    /// The table of `[[prices]]`.
    pub fn new(prices: &[PriceConfig]) -> Self {
        Self {
            entries: prices
                .iter()
                .map(|p| Entry {
                    provider: p.provider.clone(),
                    model: p.model.clone(),
                    from: p.effective_from,
                    prices: UnitPrices {
                        input: p.input,
                        output: p.output,
                        cache_read: p.cache_read.unwrap_or(p.input),
                        cache_write: p.cache_write.unwrap_or(p.input),
                    },
                })
                .collect(),
        }
    }

    /// Whether no price is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The prices of `model` on `day`: the model's own entry in force that day (the latest
    /// `effective_from` not after it), else the provider's `*` entry.
    pub fn lookup(&self, provider: &str, model: &str, day: NaiveDate) -> Option<UnitPrices> {
        let in_force = |m: &str| {
            self.entries
                .iter()
                .filter(|e| e.provider == provider && e.model == m)
                .filter(|e| e.from.is_none_or(|f| f <= day))
                .max_by_key(|e| e.from)
                .map(|e| e.prices)
        };
        in_force(model).or_else(|| in_force("*"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(model: &str, input: u64, from: Option<&str>) -> PriceConfig {
        PriceConfig {
            provider: "anthropic".into(),
            model: model.into(),
            input,
            output: input * 5,
            cache_read: Some(input / 10),
            cache_write: None,
            effective_from: from.map(|d| d.parse().unwrap()),
        }
    }

    #[test]
    fn the_price_in_force_that_day_applies_and_costs_are_exact() {
        let t = PriceTable::new(&[
            price("claude-x", 300, None),
            price("claude-x", 200, Some("2027-01-01")),
            price("*", 1000, None),
        ]);
        let day = |d: &str| d.parse::<NaiveDate>().unwrap();
        let dec = t
            .lookup("anthropic", "claude-x", day("2026-12-31"))
            .unwrap();
        assert_eq!(dec.input, 300);
        assert_eq!(
            dec.cache_write, 300,
            "cache writes default to the input price"
        );
        let jan = t
            .lookup("anthropic", "claude-x", day("2027-01-01"))
            .unwrap();
        assert_eq!(jan.input, 200);
        assert_eq!(
            t.lookup("anthropic", "other", day("2026-12-31"))
                .unwrap()
                .input,
            1000
        );
        assert_eq!(t.lookup("openai", "claude-x", day("2026-12-31")), None);
        // The spec's worked example: 12 345 in at 300 + 678 out at 1500 = 4 720 500 micro-cents,
        // 5 cents.
        let p = UnitPrices {
            input: 300,
            output: 1500,
            cache_read: 30,
            cache_write: 375,
        };
        let cost = p.cost(&Tokens {
            input: 12_345,
            output: 678,
            ..Default::default()
        });
        assert_eq!(cost, MicroCents(4_720_500));
        assert_eq!(cost.to_cents_ceil().0, 5);
        let huge = p.cost(&Tokens {
            input: u64::MAX,
            ..Default::default()
        });
        assert_eq!(huge, MicroCents(u64::MAX));
    }
}

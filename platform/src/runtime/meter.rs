//! Metering a finished turn. A turn gets a usage record from the harness's own report and, when
//! its model calls went through the gateway, one from the gateway's per-call counts; the
//! gateway's is the one billed (in the roll-up, against budgets), the harness's is kept for
//! comparison and a disagreement is logged. Costs come from `[[prices]]` where the model has a
//! price, from the harness's report otherwise; BYOK turns cost nothing. The records go into the
//! transaction that stores the turn's `done`, with the budget thresholds they cross.
//!
//! Everything here but [`store_batch`] is pure.

use chrono::{Datelike, NaiveDate, NaiveDateTime};
use karta_driver_api::Usage;
use serde_json::json;

use super::budget::Caps;
use crate::gateway::tally::CountedCall;
use crate::platform::money::MicroCents;
use crate::platform::pricing::{PriceTable, Tokens, UnitPrices};
use crate::store::org_events::OrgEvent;
use crate::store::usage::{Totals, UsageRecord};
use crate::store::{self, Conn, StoreError};

/// What a finished turn is metered from.
pub(crate) struct Turn<'a> {
    pub org_id: &'a str,
    pub project_id: &'a str,
    pub session_id: &'a str,
    /// The sequence number of its `done`.
    pub seq: i64,
    pub api_key_id: Option<&'a str>,
    pub driver: &'a str,
    /// The org's own key paid (for every call).
    pub byok: bool,
    /// `completed`, `failed`, `cancelled`.
    pub status: &'a str,
    /// What `done` reported.
    pub harness: Usage,
    /// The provider (when named) and model the harness's steps named, if they did.
    pub harness_model: Option<(Option<String>, String)>,
    /// What the gateway counted.
    pub calls: &'a [CountedCall],
    /// Calls of the turn were still in flight when it was metered: they are billed with the
    /// session's next turn, so the harness's report (which includes them) is not billed.
    pub calls_pending: bool,
}

fn i(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn applied(p: Option<UnitPrices>) -> [Option<i64>; 4] {
    match p {
        Some(p) => [
            Some(i(p.input)),
            Some(i(p.output)),
            Some(i(p.cache_read)),
            Some(i(p.cache_write)),
        ],
        None => [None; 4],
    }
}

/// The price of a model a harness named; without a provider, whichever provider prices it.
fn lookup(
    prices: &PriceTable,
    provider: Option<&str>,
    model: &str,
    day: NaiveDate,
) -> Option<UnitPrices> {
    match provider {
        Some(p) => prices.lookup(p, model, day),
        None => ["anthropic", "openai"]
            .iter()
            .find_map(|p| prices.lookup(p, model, day)),
    }
}

fn tokens_of(u: &Usage) -> Tokens {
    Tokens {
        input: u.input_tokens,
        output: u.output_tokens,
        cache_read: u.cache_read_tokens,
        cache_write: u.cache_write_tokens,
    }
}

/// A step's cost at `[[prices]]` when the harness did not cost it (Claude Code costs only whole
/// turns); none when it did, or the model has no price.
pub(crate) fn step_cost(
    prices: &PriceTable,
    provider: Option<&str>,
    model: &str,
    usage: &Usage,
    day: NaiveDate,
) -> Option<MicroCents> {
    if usage.cost_micro_cents > 0 || prices.is_empty() {
        return None;
    }
    lookup(prices, provider, model, day).map(|p| p.cost(&tokens_of(usage)))
}

/// The turn's records: the harness's, and the gateway's when it counted calls.
pub(crate) fn records(t: &Turn<'_>, prices: &PriceTable, now: NaiveDateTime) -> Vec<UsageRecord> {
    let day = now.date();
    let h = &t.harness;
    let harness_tokens = tokens_of(h);
    let harness_price = t
        .harness_model
        .as_ref()
        .and_then(|(p, m)| lookup(prices, p.as_deref(), m, day));
    // The harness's own cost when it reports one, else the price of the model it named.
    let (harness_cost, harness_applied) = match (h.cost_micro_cents, harness_price) {
        (0, Some(p)) => (p.cost(&harness_tokens), Some(p)),
        (c, _) => (MicroCents(c), None),
    };
    // The time in front keeps the `(org_id, client_event_id)` index growing at its end: keyed
    // by session first, every busy session would insert at a page of its own in every commit.
    let at = store::sortable_millis(now);
    let base = |source: &str, billed: bool| UsageRecord {
        id: store::new_sorted_id("use"),
        org_id: t.org_id.to_string(),
        client_event_id: format!("{at}:{}:{}:{source}", t.session_id, t.seq),
        project_id: t.project_id.to_string(),
        session_id: t.session_id.to_string(),
        turn_seq: t.seq,
        api_key_id: t.api_key_id.map(str::to_string),
        driver: t.driver.to_string(),
        provider: None,
        model: None,
        byok: t.byok,
        status: t.status.to_string(),
        source: source.to_string(),
        input_tokens: 0,
        output_tokens: 0,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        cost_micro_cents: 0,
        created_at: now,
        billed,
        price_input: None,
        price_output: None,
        price_cache_read: None,
        price_cache_write: None,
    };
    let [pi, po, pr, pw] = applied(harness_applied.filter(|_| !t.byok));
    let mut out = vec![UsageRecord {
        provider: t.harness_model.as_ref().and_then(|(p, _)| p.clone()),
        model: t.harness_model.as_ref().map(|(_, m)| m.clone()),
        input_tokens: i(h.input_tokens),
        output_tokens: i(h.output_tokens),
        cache_read_tokens: i(h.cache_read_tokens),
        cache_write_tokens: i(h.cache_write_tokens),
        reasoning_tokens: i(h.reasoning_tokens),
        // BYOK: the provider bills the org directly; tokens still count against caps.
        cost_micro_cents: if t.byok { 0 } else { i64::from(harness_cost) },
        price_input: pi,
        price_output: po,
        price_cache_read: pr,
        price_cache_write: pw,
        ..base("harness", t.calls.is_empty() && !t.calls_pending)
    }];
    if t.calls.is_empty() {
        return out;
    }

    let mut sum = Tokens::default();
    let mut priced = MicroCents(0);
    let mut unpriced = false;
    let mut reasoning = 0u64;
    // The model with the most tokens names the record (a turn may use a small model on the side).
    let mut by_model: Vec<(&str, &str, u64, Option<UnitPrices>)> = Vec::new();
    for c in t.calls {
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        let tok = Tokens {
            input: n(c.tokens.input),
            output: n(c.tokens.output),
            cache_read: n(c.tokens.cache_read),
            cache_write: n(c.tokens.cache_creation),
        };
        sum.input += tok.input;
        sum.output += tok.output;
        sum.cache_read += tok.cache_read;
        sum.cache_write += tok.cache_write;
        reasoning += n(c.tokens.reasoning);
        let price = prices.lookup(&c.provider, &c.model, day);
        match price {
            // A call paid with the org's own key costs the platform nothing.
            _ if c.byok => {}
            Some(p) => priced = priced.saturating_add(p.cost(&tok)),
            None => unpriced = true,
        }
        let weight = tok.input + tok.output + tok.cache_read + tok.cache_write;
        match by_model
            .iter_mut()
            .find(|(p, m, _, _)| *p == c.provider && *m == c.model)
        {
            Some(e) => e.2 += weight,
            None => by_model.push((&c.provider, &c.model, weight, price)),
        }
    }
    let byok = t.byok || t.calls.iter().all(|c| c.byok);
    let main = by_model.iter().max_by_key(|e| e.2);
    // A call without a price is costed by the harness's report when it has one (for the
    // whole turn: its cost cannot be split by call).
    let (cost, prices_applied) = match (unpriced, h.cost_micro_cents) {
        (false, _) => (priced, main.and_then(|e| e.3)),
        (true, 0) => (priced, None),
        (true, c) => (MicroCents(c), None),
    };
    let [pi, po, pr, pw] = applied(prices_applied.filter(|_| !byok));
    out.push(UsageRecord {
        provider: main.map(|e| e.0.to_string()),
        model: main.map(|e| e.1.to_string()).filter(|m| !m.is_empty()),
        byok,
        input_tokens: i(sum.input),
        output_tokens: i(sum.output),
        cache_read_tokens: i(sum.cache_read),
        cache_write_tokens: i(sum.cache_write),
        // Anthropic does not report reasoning apart: the harness's split stands in then.
        reasoning_tokens: i(if reasoning > 0 {
            reasoning
        } else {
            h.reasoning_tokens.min(sum.output)
        }),
        cost_micro_cents: if byok { 0 } else { i64::from(cost) },
        price_input: pi,
        price_output: po,
        price_cache_read: pr,
        price_cache_write: pw,
        ..base("gateway", true)
    });
    out
}

/// How the harness's record differs from the gateway's, if it does (input compared with its
/// cached part, so harnesses that split it differently still agree).
pub(crate) fn disagreement(harness: &UsageRecord, gateway: &UsageRecord) -> Option<String> {
    let input = |r: &UsageRecord| r.input_tokens + r.cache_read_tokens + r.cache_write_tokens;
    let (hi, gi) = (input(harness), input(gateway));
    let (ho, go) = (harness.output_tokens, gateway.output_tokens);
    (hi != gi || ho != go).then(|| {
        format!("the harness reported {hi} in / {ho} out, the gateway counted {gi} in / {go} out")
    })
}

/// A budgeted scope of the turn.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Scope {
    /// The org, project or API key id.
    pub id: String,
    /// `org`, `project` or `api_key`.
    pub kind: &'static str,
    pub caps: Caps,
}

/// Percentages of a cap at which an event is recorded.
const THRESHOLDS: [u64; 2] = [80, 100];

/// A threshold crossed: (dimension, percentage, used, cap).
type Crossing = (&'static str, u64, u64, u64);

/// The thresholds of `caps` that usage has reached by `after` and had not by `before`. The
/// caller passes `before` as zero when concurrent turns make it unknowable: every reached
/// threshold is then reported, and the event's dedupe key keeps it to one per month.
pub(crate) fn crossed(caps: &Caps, before: &Totals, after: &Totals) -> Vec<Crossing> {
    let cents = |t: &Totals| MicroCents(t.cost_micro_cents).to_cents_ceil().0;
    let dims = [
        (
            "input_tokens",
            caps.input_tokens,
            before.input_tokens,
            after.input_tokens,
        ),
        (
            "output_tokens",
            caps.output_tokens,
            before.output_tokens,
            after.output_tokens,
        ),
        (
            "total_tokens",
            caps.total_tokens,
            before.input_tokens + before.output_tokens,
            after.input_tokens + after.output_tokens,
        ),
        ("cost_cents", caps.cost_cents, cents(before), cents(after)),
    ];
    let mut out = Vec::new();
    for (dim, cap, was, is) in dims {
        let Some(cap) = cap.filter(|c| *c > 0) else {
            continue;
        };
        for pct in THRESHOLDS {
            let at = (cap * pct).div_ceil(100);
            if was < at && is >= at {
                out.push((dim, pct, is, cap));
            }
        }
    }
    out
}

/// The events of a scope's crossings this period.
pub(crate) fn threshold_events(
    org_id: &str,
    scope: &Scope,
    crossings: &[Crossing],
    period_start: NaiveDate,
    now: NaiveDateTime,
) -> Vec<OrgEvent> {
    let mut out = Vec::new();
    for &(dim, pct, used, cap) in crossings {
        let object = json!({
            "scope": {"type": scope.kind, "id": scope.id},
            "dimension": dim,
            "threshold_pct": pct,
            "used": used,
            "cap": cap,
            "period_start": format!("{period_start}T00:00:00Z"),
        });
        let mut types = vec!["budget.threshold_reached"];
        if pct >= 100 {
            types.push("budget.exhausted");
        }
        for ty in types {
            out.push(OrgEvent {
                id: store::new_id("evt"),
                org_id: org_id.to_string(),
                event_type: ty.to_string(),
                dedupe_key: format!("{ty}:{}:{dim}:{pct}:{period_start}", scope.id),
                payload: object.to_string(),
                created_at: now,
                fanned_out: false,
            });
        }
    }
    out
}

/// What a finished turn stores beside its `done`: its usage records, the budgeted scopes the
/// billed one counts against, and its webhook event. Data, so the event writer can store a
/// batch's turns together (see [`store_batch`]).
pub(crate) struct TurnUsage {
    records: Vec<UsageRecord>,
    scopes: Vec<Scope>,
    event: Option<OrgEvent>,
}

impl TurnUsage {
    /// The records, when storing them is all there is to do: no budgeted scope whose thresholds
    /// need the new totals read, no webhook event.
    pub(crate) fn records_alone(&self) -> Option<&[UsageRecord]> {
        (self.scopes.is_empty() && self.event.is_none()).then_some(self.records.as_slice())
    }
}

/// The turn's usage to store; logs a disagreement between its two records.
pub(crate) fn turn_usage(
    records: Vec<UsageRecord>,
    scopes: Vec<Scope>,
    event: Option<OrgEvent>,
) -> TurnUsage {
    if let [h, g] = records.as_slice() {
        if let Some(why) = disagreement(h, g) {
            tracing::warn!(session = %h.session_id, turn = h.turn_seq, "usage disagreement: {why}");
            crate::metrics::get().usage_disagreements.inc();
        }
    }
    TurnUsage {
        records,
        scopes,
        event,
    }
}

/// Stores turns' usage in the transaction that stores their `done`: every record (each once),
/// the roll-up rows of the billed ones that were new (summed per row, so a batch of turns costs
/// one roll-up write per row), the thresholds those crossed, and the turns' webhook events.
pub(crate) fn store_batch(c: &mut Conn, turns: &[&TurnUsage]) -> Result<(), StoreError> {
    let records: Vec<&UsageRecord> = turns.iter().flat_map(|t| t.records.iter()).collect();
    let inserted = crate::store::usage::insert_counted(c, &records)?;
    let mut new = inserted.iter().copied();
    // The billed records just stored (and added to the roll-up) whose turn has budgeted
    // scopes: their thresholds are checked against the new totals.
    for t in turns {
        for r in &t.records {
            if new.next().unwrap_or(false) && r.billed && !t.scopes.is_empty() {
                thresholds(c, r, &t.scopes)?;
            }
        }
    }
    for t in turns {
        if let Some(e) = &t.event {
            crate::store::org_events::insert(c, e)?;
        }
    }
    Ok(())
}

fn thresholds(c: &mut Conn, r: &UsageRecord, scopes: &[Scope]) -> Result<(), StoreError> {
    let start = r
        .created_at
        .date()
        .with_day0(0)
        .unwrap_or(r.created_at.date());
    let since = start.format("%Y-%m-%d").to_string();
    for s in scopes {
        let (project, key) = match s.kind {
            "project" => (Some(s.id.as_str()), None),
            "api_key" => (None, Some(s.id.as_str())),
            _ => (None, None),
        };
        let after = crate::store::usage::totals_since(c, &r.org_id, project, key, &since)?;
        // Not "after minus this record": two turns committing at once on PostgreSQL each see
        // only their own addition, and a threshold both stepped over would never fire. Every
        // threshold reached is reported; the dedupe key makes it one event a month.
        let before = Totals::default();
        for e in threshold_events(
            &r.org_id,
            s,
            &crossed(&s.caps, &before, &after),
            start,
            r.created_at,
        ) {
            if crate::store::org_events::insert(c, &e)? {
                tracing::info!(org = %e.org_id, event = %e.event_type, scope = %s.id, "budget threshold reached");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PriceConfig;
    use crate::gateway::usage::Tokens as CallTokens;

    fn turn<'a>(harness: Usage, calls: &'a [CountedCall]) -> Turn<'a> {
        Turn {
            org_id: "org_1",
            project_id: "prj_1",
            session_id: "sess_1",
            seq: 7,
            api_key_id: Some("key_1"),
            driver: "claude-code",
            byok: false,
            status: "completed",
            harness,
            harness_model: None,
            calls,
            calls_pending: false,
        }
    }

    fn call(model: &str, input: i64, output: i64) -> CountedCall {
        CountedCall {
            provider: "anthropic".into(),
            model: model.into(),
            tokens: CallTokens {
                input,
                output,
                ..Default::default()
            },
            byok: false,
        }
    }

    fn prices() -> PriceTable {
        PriceTable::new(&[PriceConfig {
            provider: "anthropic".into(),
            model: "big".into(),
            input: 300,
            output: 1500,
            ..Default::default()
        }])
    }

    fn now() -> NaiveDateTime {
        "2026-12-06T10:00:00".parse().unwrap()
    }

    #[test]
    fn the_gateways_record_is_billed_and_priced_and_the_harnesss_kept() {
        let mut h = Usage::new(200, 40, 0, 0);
        h.cost_micro_cents = 999;
        let calls = [call("big", 150, 30), call("small", 50, 10)];
        let recs = records(&turn(h, &calls), &prices(), now());
        assert_eq!(recs.len(), 2);
        let (hr, gr) = (&recs[0], &recs[1]);
        assert_eq!((hr.source.as_str(), hr.billed), ("harness", false));
        assert_eq!(hr.cost_micro_cents, 999, "the harness's own cost is kept");
        assert_eq!((gr.source.as_str(), gr.billed), ("gateway", true));
        assert_eq!((gr.input_tokens, gr.output_tokens), (200, 40));
        assert_eq!(gr.model.as_deref(), Some("big"));
        // `small` has no price: the harness's cost stands for the turn.
        assert_eq!(gr.cost_micro_cents, 999);
        assert_eq!(gr.price_input, None);
        let at = store::sortable_millis(now());
        assert_eq!(gr.client_event_id, format!("{at}:sess_1:7:gateway"));
        // Keys sort by when the turn ended whatever the session: the index grows at its end.
        let mut later = turn(h, &calls);
        later.session_id = "sess_0";
        let next = records(&later, &prices(), now() + chrono::Duration::milliseconds(1));
        assert!(next[0].client_event_id > hr.client_event_id);
        assert!(next[0].client_event_id.ends_with(":sess_0:7:harness"));
        assert_eq!(disagreement(hr, gr), None);

        let calls = [call("big", 150, 30)];
        let recs = records(&turn(h, &calls), &prices(), now());
        let gr = &recs[1];
        assert_eq!(gr.cost_micro_cents, 150 * 300 + 30 * 1500);
        assert_eq!((gr.price_input, gr.price_output), (Some(300), Some(1500)));
        assert!(disagreement(&recs[0], gr)
            .unwrap()
            .contains("200 in / 40 out"));

        // No gateway: the harness's record is billed; priced when it costs nothing itself.
        let mut t = turn(Usage::new(10, 2, 0, 0), &[]);
        t.harness_model = Some((None, "big".into()));
        let recs = records(&t, &prices(), now());
        assert_eq!(recs.len(), 1);
        assert!(recs[0].billed);
        assert_eq!(recs[0].cost_micro_cents, 10 * 300 + 2 * 1500);
        assert_eq!(recs[0].model.as_deref(), Some("big"));

        // A step the harness did not cost is priced; one it did keeps its cost.
        let day = now().date();
        let step = Usage::new(10, 2, 0, 0);
        assert_eq!(
            step_cost(&prices(), None, "big", &step, day),
            Some(MicroCents(10 * 300 + 2 * 1500))
        );
        let costed = Usage {
            cost_micro_cents: 5,
            ..step
        };
        assert_eq!(step_cost(&prices(), None, "big", &costed, day), None);
        assert_eq!(step_cost(&prices(), None, "unpriced", &step, day), None);

        // BYOK: tokens, no cost, no applied price.
        t.byok = true;
        let recs = records(&t, &prices(), now());
        assert_eq!((recs[0].cost_micro_cents, recs[0].price_input), (0, None));
        assert_eq!(recs[0].input_tokens, 10);
    }

    #[test]
    fn thresholds_fire_once_when_crossed() {
        let caps = Caps {
            total_tokens: Some(1000),
            cost_cents: Some(10),
            ..Default::default()
        };
        let t = |input: u64, micro: u64| Totals {
            turns: 1,
            input_tokens: input,
            output_tokens: 0,
            cost_micro_cents: micro,
        };
        assert!(crossed(&caps, &t(0, 0), &t(799, 0)).is_empty());
        assert_eq!(
            crossed(&caps, &t(799, 0), &t(800, 0)),
            [("total_tokens", 80, 800, 1000)]
        );
        assert_eq!(
            crossed(&caps, &t(700, 0), &t(1200, 0)),
            [
                ("total_tokens", 80, 1200, 1000),
                ("total_tokens", 100, 1200, 1000)
            ]
        );
        // 9.000001 cents rounds up to 10: the cost cap is reached.
        assert_eq!(
            crossed(&caps, &t(0, 8_500_000), &t(0, 9_000_001)),
            [("cost_cents", 100, 10, 10)]
        );
        let scope = Scope {
            id: "org_1".into(),
            kind: "org",
            caps,
        };
        let start: NaiveDate = "2026-12-01".parse().unwrap();
        let evs = threshold_events(
            "org_1",
            &scope,
            &crossed(&caps, &t(700, 0), &t(1200, 0)),
            start,
            now(),
        );
        let types: Vec<_> = evs.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            types,
            [
                "budget.threshold_reached",
                "budget.threshold_reached",
                "budget.exhausted"
            ]
        );
        assert_eq!(
            evs[0].dedupe_key,
            "budget.threshold_reached:org_1:total_tokens:80:2026-12-01"
        );
        let obj: serde_json::Value = serde_json::from_str(&evs[1].payload).unwrap();
        assert_eq!(obj["threshold_pct"], 100);
        assert_eq!(obj["period_start"], "2026-12-01T00:00:00Z");
    }
}

//! Metering: per-turn usage records and their daily roll-up, written together.

use diesel::prelude::*;

use super::cached::{bind_list, cached, cached_pg, Fixed};
use super::schema::{usage_daily as ud, usage_records as ur};
use super::{Conn, StoreError};

/// One usage record.
// `None` is bound as NULL (every optional column defaults to NULL anyway), so the SQLite insert
// has one SQL text and its prepared statement is cached.
#[derive(Debug, Clone, Queryable, Insertable, PartialEq)]
#[diesel(table_name = ur, treat_none_as_default_value = false)]
pub struct UsageRecord {
    /// `use_...`
    pub id: String,
    /// Owner.
    pub org_id: String,
    /// Idempotency key, unique per org; a turn's is `<time>:<session>:<seq of done>:<source>`
    /// (`<time>`: 8 base62 characters of the millisecond the turn ended, so keys sort
    /// byte-wise by time).
    pub client_event_id: String,
    /// The project.
    pub project_id: String,
    /// The session.
    pub session_id: String,
    /// The sequence number of the turn's `done`.
    pub turn_seq: i64,
    /// The API key that started the turn (none for session tokens).
    pub api_key_id: Option<String>,
    /// The driver.
    pub driver: String,
    /// The model provider, when known.
    pub provider: Option<String>,
    /// The model, when known.
    pub model: Option<String>,
    /// The org's own model key paid for it.
    pub byok: bool,
    /// How the turn ended (`completed`, `failed`, `cancelled`).
    pub status: String,
    /// Who counted: `harness` (the driver's report) or `gateway`.
    pub source: String,
    /// Uncached input tokens.
    pub input_tokens: i64,
    /// Output tokens (reasoning included, as providers bill it).
    pub output_tokens: i64,
    /// Input tokens read from the cache.
    pub cache_read_tokens: i64,
    /// Input tokens written to the cache.
    pub cache_write_tokens: i64,
    /// The part of the output tokens that was reasoning.
    pub reasoning_tokens: i64,
    /// Cost in micro-cents.
    pub cost_micro_cents: i64,
    /// When it was recorded.
    pub created_at: chrono::NaiveDateTime,
    /// Counted in the roll-up (and so against budgets): the gateway's record of a turn when it
    /// has one, the harness's otherwise.
    pub billed: bool,
    /// Applied `[[prices]]` input price (micro-cents per token); none when not priced here.
    pub price_input: Option<i64>,
    /// Applied output price.
    pub price_output: Option<i64>,
    /// Applied cache-read price.
    pub price_cache_read: Option<i64>,
    /// Applied cache-write price.
    pub price_cache_write: Option<i64>,
}

/// One roll-up row.
#[derive(Debug, Clone, Queryable, PartialEq, Default)]
pub struct DailyUsage {
    /// Owner.
    pub org_id: String,
    /// The project.
    pub project_id: String,
    /// The key ('' for none).
    pub api_key_id: String,
    /// The model ('' when unknown).
    pub model: String,
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// Turns counted.
    pub turns: i64,
    /// Uncached input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cache reads.
    pub cache_read_tokens: i64,
    /// Cache writes.
    pub cache_write_tokens: i64,
    /// Reasoning tokens.
    pub reasoning_tokens: i64,
    /// Cost in micro-cents.
    pub cost_micro_cents: i64,
}

/// Stores a record unless its `client_event_id` is already stored for the org, and adds an
/// inserted billed one to its day's roll-up. Whether it was inserted. Run in a write transaction.
pub fn record(c: &mut Conn, r: &UsageRecord) -> Result<bool, StoreError> {
    Ok(insert_counted(c, &[r])?.first().copied().unwrap_or(false))
}

/// Stores the records whose `client_event_id` is not stored yet for their org (`UNIQUE (org_id,
/// client_event_id)` makes a repeat a no-op) and adds the billed ones it inserted to their days'
/// roll-up rows: whether each was inserted, in order. On PostgreSQL both are one statement (one
/// round trip, prepared once per connection).
pub fn insert_counted(c: &mut Conn, records: &[&UsageRecord]) -> Result<Vec<bool>, StoreError> {
    let pg = match c {
        super::AnyConnection::Sqlite(lite) => {
            let inserted = insert_new(lite, records)?;
            let billed: Vec<&UsageRecord> = records
                .iter()
                .zip(&inserted)
                .filter(|(r, new)| **new && r.billed)
                .map(|(r, _)| *r)
                .collect();
            add_daily(lite, &billed)?;
            return Ok(inserted);
        }
        super::AnyConnection::Postgresql(pg) => pg,
    };
    let mut out = Vec::with_capacity(records.len());
    for chunk in records.chunks(200) {
        let stored = cached_pg(InsertCountedPg::new(chunk)).load::<(String, String)>(pg)?;
        out.extend(which_stored(chunk, stored));
    }
    Ok(out)
}

/// Whether each record is among the (org, key) pairs an insert answered, in order. A pair is
/// taken out when matched: of two records with one key, only the first is new.
fn which_stored(records: &[&UsageRecord], stored: Vec<(String, String)>) -> Vec<bool> {
    let mut stored: std::collections::HashSet<(String, String)> = stored.into_iter().collect();
    records
        .iter()
        .map(|r| stored.remove(&(r.org_id.clone(), r.client_event_id.clone())))
        .collect()
}

/// Stores the records whose `client_event_id` is not stored yet for their org (`UNIQUE (org_id,
/// client_event_id)` makes a repeat a no-op) on SQLite, one cached statement per record; whether
/// each was inserted, in order.
fn insert_new(
    lite: &mut diesel::SqliteConnection,
    records: &[&UsageRecord],
) -> Result<Vec<bool>, StoreError> {
    records
        .iter()
        .map(|r| Ok(cached(InsertRecord(r)).execute(lite)? > 0))
        .collect()
}

/// Adds the records to their days' roll-up rows on SQLite, summed per row first: one upsert per
/// row touched, however many records it sums. Only call it with billed records that were just
/// inserted.
fn add_daily(
    lite: &mut diesel::SqliteConnection,
    records: &[&UsageRecord],
) -> Result<(), StoreError> {
    // Keyed like the table; each value carries its key too, for the insert.
    let mut rows: std::collections::BTreeMap<(String, String, String, String, String), DailyUsage> =
        std::collections::BTreeMap::new();
    for r in records {
        let key = (
            r.org_id.clone(),
            r.project_id.clone(),
            r.api_key_id.clone().unwrap_or_default(),
            r.model.clone().unwrap_or_default(),
            r.created_at.date().format("%Y-%m-%d").to_string(),
        );
        let d = rows.entry(key.clone()).or_insert_with(|| DailyUsage {
            org_id: key.0,
            project_id: key.1,
            api_key_id: key.2,
            model: key.3,
            day: key.4,
            ..Default::default()
        });
        d.turns += 1;
        d.input_tokens += r.input_tokens;
        d.output_tokens += r.output_tokens;
        d.cache_read_tokens += r.cache_read_tokens;
        d.cache_write_tokens += r.cache_write_tokens;
        d.reasoning_tokens += r.reasoning_tokens;
        d.cost_micro_cents += r.cost_micro_cents;
    }
    for d in rows.values() {
        cached(AddDaily(d)).execute(lite)?;
    }
    Ok(())
}

/// The org's roll-up rows from `from` to `to` (days, inclusive), optionally of one project.
pub fn daily(
    c: &mut Conn,
    org_id: &str,
    project_id: Option<&str>,
    from: &str,
    to: &str,
) -> Result<Vec<DailyUsage>, StoreError> {
    let mut q = ud::table
        .filter(ud::org_id.eq(org_id))
        .filter(ud::day.ge(from))
        .filter(ud::day.le(to))
        .into_boxed();
    if let Some(p) = project_id {
        q = q.filter(ud::project_id.eq(p.to_string()));
    }
    Ok(q.order((
        ud::day.asc(),
        ud::project_id.asc(),
        ud::api_key_id.asc(),
        ud::model.asc(),
    ))
    .load(c)?)
}

/// The org's records, newest first, optionally of one session.
pub fn records(
    c: &mut Conn,
    org_id: &str,
    session_id: Option<&str>,
    limit: i64,
) -> Result<Vec<UsageRecord>, StoreError> {
    let mut q = ur::table.filter(ur::org_id.eq(org_id)).into_boxed();
    if let Some(s) = session_id {
        q = q.filter(ur::session_id.eq(s.to_string()));
    }
    Ok(
        q.order((ur::created_at.desc(), ur::turn_seq.desc(), ur::source.asc()))
            .limit(limit)
            .load(c)?,
    )
}

/// Usage summed over roll-up rows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    /// Turns.
    pub turns: u64,
    /// Input tokens, cached ones included.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost in micro-cents.
    pub cost_micro_cents: u64,
}

impl Totals {
    /// Adds a roll-up row.
    pub fn add(&mut self, d: &DailyUsage) {
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        self.turns += n(d.turns);
        self.input_tokens += n(d.input_tokens) + n(d.cache_read_tokens) + n(d.cache_write_tokens);
        self.output_tokens += n(d.output_tokens);
        self.cost_micro_cents += n(d.cost_micro_cents);
    }
}

/// The org's usage from day `from` on: all of it, one project's, or one API key's.
pub fn totals_since(
    c: &mut Conn,
    org_id: &str,
    project_id: Option<&str>,
    api_key_id: Option<&str>,
    from: &str,
) -> Result<Totals, StoreError> {
    let mut t = Totals::default();
    for d in daily(c, org_id, project_id, from, "9999-12-31")? {
        if api_key_id.is_none_or(|k| d.api_key_id == k) {
            t.add(&d);
        }
    }
    Ok(t)
}

/// `INSERT` of one usage record on SQLite unless its key is stored (see [`super::cached`]).
struct InsertRecord<'a>(&'a UsageRecord);

impl Fixed for InsertRecord<'_> {
    type Key = InsertRecord<'static>;
    fn walk<'b>(&'b self, mut out: super::cached::Out<'_, 'b>) -> QueryResult<()> {
        use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamp};
        let r = self.0;
        out.push_sql(
            "INSERT INTO usage_records (id, org_id, client_event_id, project_id, session_id, \
             turn_seq, api_key_id, driver, provider, model, byok, status, source, input_tokens, \
             output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, \
             cost_micro_cents, created_at, billed, price_input, price_output, price_cache_read, \
             price_cache_write) VALUES (",
        );
        bind_list!(out;
            Text => &r.id, Text => &r.org_id, Text => &r.client_event_id,
            Text => &r.project_id, Text => &r.session_id, BigInt => &r.turn_seq,
            Nullable<Text> => &r.api_key_id, Text => &r.driver, Nullable<Text> => &r.provider,
            Nullable<Text> => &r.model, Bool => &r.byok, Text => &r.status, Text => &r.source,
            BigInt => &r.input_tokens, BigInt => &r.output_tokens,
            BigInt => &r.cache_read_tokens, BigInt => &r.cache_write_tokens,
            BigInt => &r.reasoning_tokens, BigInt => &r.cost_micro_cents,
            Timestamp => &r.created_at, Bool => &r.billed, Nullable<BigInt> => &r.price_input,
            Nullable<BigInt> => &r.price_output, Nullable<BigInt> => &r.price_cache_read,
            Nullable<BigInt> => &r.price_cache_write);
        out.push_sql(") ON CONFLICT (org_id, client_event_id) DO NOTHING");
        Ok(())
    }
}

/// Adds to one roll-up row on SQLite, creating it if needed (see [`super::cached`]).
struct AddDaily<'a>(&'a DailyUsage);

impl Fixed for AddDaily<'_> {
    type Key = AddDaily<'static>;
    fn walk<'b>(&'b self, mut out: super::cached::Out<'_, 'b>) -> QueryResult<()> {
        use diesel::sql_types::{BigInt, Text};
        let d = self.0;
        out.push_sql(
            "INSERT INTO usage_daily (org_id, project_id, api_key_id, model, day, turns, \
             input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, \
             reasoning_tokens, cost_micro_cents) VALUES (",
        );
        bind_list!(out;
            Text => &d.org_id, Text => &d.project_id, Text => &d.api_key_id, Text => &d.model,
            Text => &d.day, BigInt => &d.turns, BigInt => &d.input_tokens,
            BigInt => &d.output_tokens, BigInt => &d.cache_read_tokens,
            BigInt => &d.cache_write_tokens, BigInt => &d.reasoning_tokens,
            BigInt => &d.cost_micro_cents);
        out.push_sql(
            ") ON CONFLICT (org_id, project_id, api_key_id, model, day) DO UPDATE SET \
             turns = turns + excluded.turns, \
             input_tokens = input_tokens + excluded.input_tokens, \
             output_tokens = output_tokens + excluded.output_tokens, \
             cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens, \
             cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens, \
             reasoning_tokens = reasoning_tokens + excluded.reasoning_tokens, \
             cost_micro_cents = cost_micro_cents + excluded.cost_micro_cents",
        );
        Ok(())
    }
}

/// [`insert_counted`] on PostgreSQL: the records go in from one array per column; those
/// inserted and billed are summed per roll-up row and added to it in the same statement; it
/// answers the (org, key) of each record inserted.
pub(super) struct InsertCountedPg<'a> {
    ids: Vec<&'a str>,
    org_ids: Vec<&'a str>,
    client_event_ids: Vec<&'a str>,
    project_ids: Vec<&'a str>,
    session_ids: Vec<&'a str>,
    turn_seqs: Vec<i64>,
    api_key_ids: Vec<Option<&'a str>>,
    drivers: Vec<&'a str>,
    providers: Vec<Option<&'a str>>,
    models: Vec<Option<&'a str>>,
    byoks: Vec<bool>,
    statuses: Vec<&'a str>,
    sources: Vec<&'a str>,
    tokens: [Vec<i64>; 6],
    created_at: Vec<chrono::NaiveDateTime>,
    billed: Vec<bool>,
    prices: [Vec<Option<i64>>; 4],
}

impl<'a> InsertCountedPg<'a> {
    /// The statement for `records`.
    pub(super) fn new(records: &[&'a UsageRecord]) -> Self {
        fn col<'a, T>(rs: &[&'a UsageRecord], f: impl Fn(&'a UsageRecord) -> T) -> Vec<T> {
            rs.iter().map(|r| f(r)).collect()
        }
        let rs = records;
        Self {
            ids: col(rs, |r| r.id.as_str()),
            org_ids: col(rs, |r| r.org_id.as_str()),
            client_event_ids: col(rs, |r| r.client_event_id.as_str()),
            project_ids: col(rs, |r| r.project_id.as_str()),
            session_ids: col(rs, |r| r.session_id.as_str()),
            turn_seqs: col(rs, |r| r.turn_seq),
            api_key_ids: col(rs, |r| r.api_key_id.as_deref()),
            drivers: col(rs, |r| r.driver.as_str()),
            providers: col(rs, |r| r.provider.as_deref()),
            models: col(rs, |r| r.model.as_deref()),
            byoks: col(rs, |r| r.byok),
            statuses: col(rs, |r| r.status.as_str()),
            sources: col(rs, |r| r.source.as_str()),
            tokens: [
                col(rs, |r| r.input_tokens),
                col(rs, |r| r.output_tokens),
                col(rs, |r| r.cache_read_tokens),
                col(rs, |r| r.cache_write_tokens),
                col(rs, |r| r.reasoning_tokens),
                col(rs, |r| r.cost_micro_cents),
            ],
            created_at: col(rs, |r| r.created_at),
            billed: col(rs, |r| r.billed),
            prices: [
                col(rs, |r| r.price_input),
                col(rs, |r| r.price_output),
                col(rs, |r| r.price_cache_read),
                col(rs, |r| r.price_cache_write),
            ],
        }
    }
}

impl Fixed<diesel::pg::Pg> for InsertCountedPg<'_> {
    type Key = InsertCountedPg<'static>;
    fn walk<'b>(&'b self, mut out: super::cached::Out<'_, 'b, diesel::pg::Pg>) -> QueryResult<()> {
        out.push_sql("WITH ");
        self.walk_ctes(&mut out, "")?;
        out.push_sql(" SELECT org_id, client_event_id FROM ins");
        Ok(())
    }
}

impl InsertCountedPg<'_> {
    /// The statement's two CTEs, `ins` (the records stored) and `daily` (the roll-up), for a
    /// statement of its own or one that does more; `guard` (empty, or ` WHERE <condition>`)
    /// decides whether anything is stored.
    pub(super) fn walk_ctes<'b>(
        &'b self,
        out: &mut super::cached::Out<'_, 'b, diesel::pg::Pg>,
        guard: &'static str,
    ) -> QueryResult<()> {
        use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamp};
        const COLUMNS: &str = "id, org_id, client_event_id, project_id, session_id, turn_seq, \
             api_key_id, driver, provider, model, byok, status, source, input_tokens, \
             output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, \
             cost_micro_cents, created_at, billed, price_input, price_output, price_cache_read, \
             price_cache_write";
        out.push_sql("ins AS (INSERT INTO usage_records (");
        out.push_sql(COLUMNS);
        out.push_sql(") SELECT * FROM unnest(");
        let [input, output, cache_read, cache_write, reasoning, cost] = &self.tokens;
        let [p_in, p_out, p_read, p_write] = &self.prices;
        bind_list!(out;
            Array<Text> => &self.ids, Array<Text> => &self.org_ids,
            Array<Text> => &self.client_event_ids, Array<Text> => &self.project_ids,
            Array<Text> => &self.session_ids, Array<BigInt> => &self.turn_seqs,
            Array<Nullable<Text>> => &self.api_key_ids, Array<Text> => &self.drivers,
            Array<Nullable<Text>> => &self.providers, Array<Nullable<Text>> => &self.models,
            Array<Bool> => &self.byoks, Array<Text> => &self.statuses,
            Array<Text> => &self.sources, Array<BigInt> => input, Array<BigInt> => output,
            Array<BigInt> => cache_read, Array<BigInt> => cache_write,
            Array<BigInt> => reasoning, Array<BigInt> => cost,
            Array<Timestamp> => &self.created_at, Array<Bool> => &self.billed,
            Array<Nullable<BigInt>> => p_in, Array<Nullable<BigInt>> => p_out,
            Array<Nullable<BigInt>> => p_read, Array<Nullable<BigInt>> => p_write);
        out.push_sql(") AS v(");
        out.push_sql(COLUMNS);
        out.push_sql(")");
        out.push_sql(guard);
        // The roll-up's key and day as `add_daily` makes them; one row per key, so no row is
        // updated twice by the one statement; in key order, as `add_daily` takes them, so two
        // writers lock shared rows in the same order.
        out.push_sql(
            " ON CONFLICT (org_id, client_event_id) DO NOTHING \
             RETURNING org_id, client_event_id, project_id, api_key_id, model, created_at, \
               billed, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, \
               reasoning_tokens, cost_micro_cents), \
             daily AS (INSERT INTO usage_daily (org_id, project_id, api_key_id, model, day, \
               turns, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, \
               reasoning_tokens, cost_micro_cents) \
             SELECT org_id, project_id, COALESCE(api_key_id, ''), COALESCE(model, ''), \
               to_char(created_at, 'YYYY-MM-DD'), count(*), sum(input_tokens)::int8, \
               sum(output_tokens)::int8, sum(cache_read_tokens)::int8, \
               sum(cache_write_tokens)::int8, sum(reasoning_tokens)::int8, \
               sum(cost_micro_cents)::int8 \
             FROM ins WHERE billed GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5 \
             ON CONFLICT (org_id, project_id, api_key_id, model, day) DO UPDATE SET \
               turns = usage_daily.turns + excluded.turns, \
               input_tokens = usage_daily.input_tokens + excluded.input_tokens, \
               output_tokens = usage_daily.output_tokens + excluded.output_tokens, \
               cache_read_tokens = usage_daily.cache_read_tokens + excluded.cache_read_tokens, \
               cache_write_tokens = usage_daily.cache_write_tokens + excluded.cache_write_tokens, \
               reasoning_tokens = usage_daily.reasoning_tokens + excluded.reasoning_tokens, \
               cost_micro_cents = usage_daily.cost_micro_cents + excluded.cost_micro_cents)",
        );
        Ok(())
    }
}

impl super::cached::FixedQuery<diesel::pg::Pg> for InsertCountedPg<'_> {
    type SqlType = (diesel::sql_types::Text, diesel::sql_types::Text);
}

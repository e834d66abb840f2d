//! `GET /v1/usage` and `GET /v1/usage/summary`: the org's metered usage, from the daily
//! roll-up (spec 05 §7–8).

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::app::App;
use crate::http::auth::Access;
use crate::http::error::{ApiError, ErrorBody, ValidationErrorBody};
use crate::platform::keys::Scope;
use crate::platform::money::MicroCents;
use crate::store::usage::{self, DailyUsage, Totals};

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/usage", web::get().to(list))
        .route("/v1/usage/summary", web::get().to(summary))
        .route("/v1/usage/records", web::get().to(records));
}

/// Query of `GET /v1/usage/records`.
#[derive(Deserialize, IntoParams)]
pub struct RecordsQuery {
    /// Only this session's records.
    session_id: Option<String>,
    /// Records, 1 to 500 (default 100).
    limit: Option<i64>,
}

/// One usage record: a turn as the harness reported it (`source: harness`) or as the model
/// gateway counted its calls (`source: gateway`). Only `billed` records are in the totals.
#[derive(Serialize, ToSchema)]
pub struct UsageRecordDto {
    /// `use_...`
    id: String,
    /// `<time>:<session>:<seq of done>:<source>`, unique per org (`<time>`: 8 characters that
    /// sort byte-wise by the millisecond the turn ended).
    client_event_id: String,
    /// The project.
    project_id: String,
    /// The session.
    session_id: String,
    /// The sequence number of the turn's `done`.
    turn_seq: i64,
    /// The key that ran the turn.
    api_key_id: Option<String>,
    /// The driver.
    driver: String,
    /// `anthropic` or `openai`, when known.
    provider: Option<String>,
    /// The model (the one with most tokens when a turn used several), when known.
    model: Option<String>,
    /// Paid with the org's own model key (no model cost).
    byok: bool,
    /// `completed`, `failed`, `cancelled`.
    status: String,
    /// `harness` or `gateway`.
    source: String,
    /// Counted in the totals and against budgets.
    billed: bool,
    /// Uncached input tokens.
    input_tokens: i64,
    /// Output tokens, reasoning included.
    output_tokens: i64,
    /// The part of the output that was reasoning.
    reasoning_tokens: i64,
    /// Input read from the cache.
    cache_read_tokens: i64,
    /// Input written to the cache.
    cache_write_tokens: i64,
    /// Cost in micro-cents.
    cost_micro_cents: i64,
    /// The `[[prices]]` unit prices applied (micro-cents per token: input, output, cache
    /// read, cache write); null when the cost is the harness's own.
    unit_prices: Option<BTreeMap<String, i64>>,
    /// When it was recorded (RFC 3339).
    created_at: String,
}

impl From<usage::UsageRecord> for UsageRecordDto {
    fn from(r: usage::UsageRecord) -> Self {
        let unit_prices = match (r.price_input, r.price_output) {
            (Some(i), Some(o)) => Some(BTreeMap::from([
                ("input".to_string(), i),
                ("output".to_string(), o),
                ("cache_read".to_string(), r.price_cache_read.unwrap_or(i)),
                ("cache_write".to_string(), r.price_cache_write.unwrap_or(i)),
            ])),
            _ => None,
        };
        Self {
            id: r.id,
            client_event_id: r.client_event_id,
            project_id: r.project_id,
            session_id: r.session_id,
            turn_seq: r.turn_seq,
            api_key_id: r.api_key_id,
            driver: r.driver,
            provider: r.provider,
            model: r.model,
            byok: r.byok,
            status: r.status,
            source: r.source,
            billed: r.billed,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            reasoning_tokens: r.reasoning_tokens,
            cache_read_tokens: r.cache_read_tokens,
            cache_write_tokens: r.cache_write_tokens,
            cost_micro_cents: r.cost_micro_cents,
            unit_prices,
            created_at: r.created_at.and_utc().to_rfc3339(),
        }
    }
}

/// The org's usage records, newest first: what each turn's harness reported and what the
/// model gateway counted, with the prices applied.
#[utoipa::path(
    get,
    path = "/v1/usage/records",
    tag = "usage",
    params(RecordsQuery),
    responses(
        (status = 200, description = "`{\"data\": [record]}`", body = Object),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 422, description = "`limit` is out of range", body = ValidationErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn records(
    app: web::Data<App>,
    access: Access,
    q: web::Query<RecordsQuery>,
) -> Result<HttpResponse, ApiError> {
    access.require(Scope::Read)?;
    let limit = crate::http::error::page_limit(q.limit, 100, 500)?;
    let (org, sid) = (access.org().to_string(), q.session_id.clone());
    let rows = app
        .store
        .read_async(move |c| usage::records(c, &org, sid.as_deref(), limit))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let data: Vec<UsageRecordDto> = rows.into_iter().map(Into::into).collect();
    Ok(HttpResponse::Ok().json(json!({ "data": data })))
}

/// Query of `GET /v1/usage`.
#[derive(Deserialize, IntoParams)]
pub struct UsageQuery {
    /// `day` (default), `project`, `model` or `key`.
    group_by: Option<String>,
    /// First day, `YYYY-MM-DD` (UTC; default: the first of this month).
    from: Option<String>,
    /// Last day, inclusive (default: today).
    to: Option<String>,
    /// Only this project (slug or id).
    project: Option<String>,
    /// Groups per page, 1 to 1000 (default 100).
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Usage of one group.
#[derive(Serialize, ToSchema, Default, Clone)]
pub struct UsageRow {
    /// The day, project id, model (`""` when unknown) or key id (`""` for session tokens).
    group: String,
    /// Turns.
    turns: i64,
    /// Uncached input tokens.
    input_tokens: i64,
    /// Output tokens.
    output_tokens: i64,
    /// Input tokens read from the cache.
    cache_read_tokens: i64,
    /// Input tokens written to the cache.
    cache_write_tokens: i64,
    /// Reasoning tokens.
    reasoning_tokens: i64,
    /// All input (cached included) plus output.
    total_tokens: i64,
    /// Cost in micro-cents (1e-6 cent).
    cost_micro_cents: i64,
    /// Cost in cents, rounded up.
    cost_cents: u64,
}

impl UsageRow {
    fn add(&mut self, d: &DailyUsage) {
        self.turns += d.turns;
        self.input_tokens += d.input_tokens;
        self.output_tokens += d.output_tokens;
        self.cache_read_tokens += d.cache_read_tokens;
        self.cache_write_tokens += d.cache_write_tokens;
        self.reasoning_tokens += d.reasoning_tokens;
        self.total_tokens +=
            d.input_tokens + d.cache_read_tokens + d.cache_write_tokens + d.output_tokens;
        self.cost_micro_cents += d.cost_micro_cents;
        self.cost_cents = MicroCents(u64::try_from(self.cost_micro_cents).unwrap_or(0))
            .to_cents_ceil()
            .0;
    }
}

/// A page of usage.
#[derive(Serialize, ToSchema)]
pub struct UsagePage {
    /// Groups in order.
    data: Vec<UsageRow>,
    /// Pass as `cursor` for the next page; null on the last.
    next_cursor: Option<String>,
}

fn day(field: &str, v: Option<&str>, default: NaiveDate) -> Result<NaiveDate, ApiError> {
    match v {
        None => Ok(default),
        Some(s) => NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| {
            ApiError::invalid(
                vec!["query".into(), field.into()],
                format!("must be a day as YYYY-MM-DD, got `{s}`"),
                "value_error",
            )
        }),
    }
}

fn first_of_month(d: NaiveDate) -> NaiveDate {
    d.with_day(1).unwrap_or(d)
}

/// The org's usage grouped by day, project, model or key (JSON, or CSV with `Accept: text/csv`).
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "usage",
    params(UsageQuery),
    responses(
        (status = 200, description = "Usage per group (or `text/csv`)", body = UsagePage),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
        (status = 404, description = "No such project in the org", body = ErrorBody),
        (status = 422, description = "A query value is invalid", body = ValidationErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    app: web::Data<App>,
    access: Access,
    req: HttpRequest,
    q: web::Query<UsageQuery>,
) -> Result<HttpResponse, ApiError> {
    access.require(Scope::Read)?;
    let today = Utc::now().date_naive();
    let from = day("from", q.from.as_deref(), first_of_month(today))?;
    let to = day("to", q.to.as_deref(), today)?;
    let group_by = q.group_by.clone().unwrap_or_else(|| "day".into());
    let pick: fn(&DailyUsage) -> String = match group_by.as_str() {
        "day" => |d| d.day.clone(),
        "project" => |d| d.project_id.clone(),
        "model" => |d| d.model.clone(),
        "key" => |d| d.api_key_id.clone(),
        other => {
            return Err(ApiError::invalid(
                vec!["query".into(), "group_by".into()],
                format!("must be day, project, model or key, got `{other}`"),
                "value_error",
            ))
        }
    };
    let project = match &q.project {
        Some(p) => Some(app.runtime.project_id(access.org(), p).await?),
        None => access.scope().map(str::to_string),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let (org, f, t) = (
        access.org().to_string(),
        from.format("%Y-%m-%d").to_string(),
        to.format("%Y-%m-%d").to_string(),
    );
    let rows = app
        .store
        .read_async(move |c| usage::daily(c, &org, project.as_deref(), &f, &t))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut groups: BTreeMap<String, UsageRow> = BTreeMap::new();
    for d in &rows {
        let g = pick(d);
        let row = groups.entry(g.clone()).or_insert_with(|| UsageRow {
            group: g,
            ..Default::default()
        });
        row.add(d);
    }
    let mut data: Vec<UsageRow> = groups
        .into_values()
        .filter(|r| q.cursor.as_ref().is_none_or(|c| &r.group > c))
        .take(limit + 1)
        .collect();
    let next_cursor = if data.len() > limit {
        data.truncate(limit);
        data.last().map(|r| r.group.clone())
    } else {
        None
    };
    let wants_csv = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/csv"));
    if wants_csv {
        let mut csv = format!(
            "{group_by},turns,input_tokens,output_tokens,cache_read_tokens,cache_write_tokens,reasoning_tokens,total_tokens,cost_micro_cents,cost_cents\n"
        );
        for r in &data {
            csv.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{}\n",
                csv_field(&r.group),
                r.turns,
                r.input_tokens,
                r.output_tokens,
                r.cache_read_tokens,
                r.cache_write_tokens,
                r.reasoning_tokens,
                r.total_tokens,
                r.cost_micro_cents,
                r.cost_cents
            ));
        }
        let mut res = HttpResponse::Ok();
        res.content_type("text/csv; charset=utf-8");
        if let Some(c) = &next_cursor {
            res.insert_header(("x-next-cursor", c.clone()));
        }
        return Ok(res.body(csv));
    }
    Ok(HttpResponse::Ok().json(UsagePage { data, next_cursor }))
}

/// A CSV field, quoted when it needs to be (and never read as a formula by a spreadsheet).
fn csv_field(s: &str) -> String {
    let guarded = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

/// This month's totals and the org's budget (spec 05 §8.7).
#[utoipa::path(
    get,
    path = "/v1/usage/summary",
    tag = "usage",
    responses(
        (status = 200, description = "`{\"period\": {\"start\", \"end\"}, \"totals\": {\"input_tokens\", \"output_tokens\", \"total_tokens\", \"cost_cents\"}, \"budget\": {...caps, null when unset}, \"budget_ok\"}`", body = Object),
        (status = 401, description = "Missing or wrong credential", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn summary(app: web::Data<App>, access: Access) -> Result<HttpResponse, ApiError> {
    access.require(Scope::Read)?;
    let start = first_of_month(Utc::now().date_naive());
    let end = start
        .checked_add_months(chrono::Months::new(1))
        .unwrap_or(start);
    let (org, since) = (
        access.org().to_string(),
        start.format("%Y-%m-%d").to_string(),
    );
    let totals: Totals = app
        .store
        .read_async(move |c| usage::totals_since(c, &org, None, None, &since))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let caps = app.runtime.budget_caps(access.org()).unwrap_or_default();
    let ok = crate::runtime::budget::exhausted(&caps, &totals, (0, 0)).is_none();
    let cents = MicroCents(totals.cost_micro_cents).to_cents_ceil().0;
    Ok(HttpResponse::Ok().json(json!({
        "period": {
            "start": format!("{start}T00:00:00Z"),
            "end": format!("{end}T00:00:00Z"),
        },
        "totals": {
            "input_tokens": totals.input_tokens,
            "output_tokens": totals.output_tokens,
            "total_tokens": totals.input_tokens + totals.output_tokens,
            "cost_cents": cents,
            "turns": totals.turns,
        },
        "budget": {
            "input_tokens": caps.input_tokens,
            "output_tokens": caps.output_tokens,
            "total_tokens": caps.total_tokens,
            "cost_cents": caps.cost_cents,
        },
        "budget_ok": ok,
    })))
}

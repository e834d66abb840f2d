//! Row types.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::*;

/// An org (tenant).
#[derive(Clone, Debug, Queryable, Selectable, Insertable, PartialEq)]
#[diesel(table_name = orgs)]
pub struct Org {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub managed_by: String,
    pub disabled_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A project: one harness app served for one org.
#[derive(Clone, Debug, Queryable, Selectable, Insertable, PartialEq)]
#[diesel(table_name = projects)]
pub struct Project {
    pub id: String,
    pub org_id: String,
    pub slug: String,
    pub source_path: String,
    pub harness: Option<String>,
    /// `reject`, `enqueue` or `interrupt`.
    pub multitask: String,
    pub managed_by: String,
    pub disabled_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// An API key; only its hash is stored.
#[derive(Clone, Debug, Queryable, Selectable, Insertable, PartialEq)]
#[diesel(table_name = api_keys)]
pub struct ApiKey {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub lookup_prefix: String,
    pub key_hash: String,
    pub scopes: String,
    pub created_at: NaiveDateTime,
    pub last_used_at: Option<NaiveDateTime>,
    pub revoked_at: Option<NaiveDateTime>,
    /// The key's last four characters (with `lookup_prefix`, how a person recognises it).
    pub last4: String,
    /// `config` (declared by hash in `[[api_keys]]`) or `api`.
    pub managed_by: String,
}

/// A session handle (the harness owns the conversation itself).
#[derive(Clone, Debug, Queryable, Selectable, Insertable, PartialEq)]
#[diesel(table_name = sessions)]
pub struct Session {
    pub id: String,
    pub org_id: String,
    pub project_id: String,
    pub driver: String,
    /// The harness-app folder pinned at creation.
    pub app_path: String,
    pub harness_session_id: Option<String>,
    pub status: String,
    pub current_agent: String,
    pub permission_mode: Option<String>,
    /// JSON object.
    pub metadata: String,
    /// JSON array.
    pub participants: String,
    /// JSON object, when a turn waits for input.
    pub pending_input: Option<String>,
    /// JSON array of tool names approved for the session.
    pub approved_tools: String,
    pub parent_id: Option<String>,
    pub last_seq: i64,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// One logged event of a session (stored in runs, see [`LogRun`]). Written, its `event_type` is
/// not stored (the envelope has it); read back, it is the envelope's `type`.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionEvent {
    pub session_id: String,
    pub org_id: String,
    pub seq: i64,
    pub event_type: String,
    /// The full public envelope, JSON.
    pub payload: String,
    pub created_at: NaiveDateTime,
}

/// A run of a session's consecutive events as the replay log stores it: one row, so the log's
/// index holds one entry per run rather than one per event.
#[derive(Clone, Debug, Queryable, Selectable, Insertable, PartialEq)]
#[diesel(table_name = session_log)]
pub struct LogRun {
    /// The session.
    pub session_id: String,
    /// The first event's sequence number.
    pub seq: i64,
    /// The last event's; the run holds every number between.
    pub last_seq: i64,
    /// The session's org.
    pub org_id: String,
    /// The events' envelopes, one line of JSON each, in sequence order.
    pub payload: String,
    /// When the first event was logged.
    pub created_at: NaiveDateTime,
}

/// One audit-log entry.
#[derive(Clone, Debug, Queryable, Selectable, Insertable, PartialEq)]
#[diesel(table_name = audit_log)]
pub struct AuditEntry {
    pub id: String,
    pub org_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// JSON object.
    pub details: String,
    pub created_at: NaiveDateTime,
    /// `operator`, `api_key`, `system` (config, CLI).
    pub actor_type: String,
    /// The request that made the change.
    pub request_id: Option<String>,
    /// Where it came from.
    pub remote_addr: Option<String>,
    /// SHA-256 of the details (the state after the change).
    pub digest: Option<String>,
    /// What kind of thing `target` is (`api_key`, `tenant`, `project`, ...).
    pub resource_type: Option<String>,
    /// SHA-256 of the state before the change (updates only).
    pub before_digest: Option<String>,
}

/// One call a harness made to a model provider through the gateway.
#[derive(Clone, Debug, Queryable, Selectable, Insertable, PartialEq)]
#[diesel(table_name = model_calls)]
pub struct ModelCall {
    pub id: String,
    pub org_id: String,
    pub project_id: String,
    pub session_id: String,
    /// `anthropic` or `openai`.
    pub provider: String,
    pub model: String,
    /// The HTTP status the provider answered (or the gateway, when it refused the call).
    pub status: i32,
    pub streamed: bool,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_creation_tokens: i64,
    pub latency_ms: i64,
    pub created_at: NaiveDateTime,
}

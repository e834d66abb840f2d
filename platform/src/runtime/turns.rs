//! Starting turns: the gates that run before a driver is called (closed session, disabled
//! project, unknown agent, busy session), serialization per session, and the hand-over of the
//! driver's events to the pump.

use std::path::Path;
use std::sync::Arc;

use karta_driver_api::{Event, Participant, TurnRequest, PAYLOAD_VERSION};
use karta_driver_kit::sandbox::{NetworkMode, SandboxBackend, SandboxSpec};
use serde_json::{json, Value};
use tokio::sync::{mpsc, OwnedMutexGuard};

use super::app_settings::AppSettings;
use super::running::{Control, Running};
use super::sessions::{invalid, load};
use super::slot::Slot;
use super::subscription::Subscription;
use super::warm::try_idle;
use super::{app_problem, Runtime, RuntimeError, TurnLimits};
use crate::config::Multitask;
use crate::drivers::LoadedDriver;
use crate::store::{self, models, sessions, StoreError};

/// `POST /v1/sessions/{id}/messages` input.
#[derive(Clone, Debug, Default)]
pub struct SendMessage {
    /// The message.
    pub text: String,
    /// Route to this agent (and hand the session off to it).
    pub agent: Option<String>,
    /// Who sends it (default `user`).
    pub participant_name: Option<String>,
    /// `human` (default) or `ai`.
    pub participant_type: Option<String>,
    /// Whether to surface reasoning.
    pub thinking: bool,
    /// The caller follows the turn as a stream (counted against `limits.concurrent_streams`).
    pub stream: bool,
    /// Nobody can answer this turn's approval prompts (an adapter whose wire format has no
    /// way to ask): where the policy would prompt, the app's hidden-prompt policy answers.
    pub prompts_hidden: bool,
    /// The API key that sends it (recorded with the turn's usage; none for session tokens).
    pub api_key_id: Option<String>,
}

/// A claimed session: its turn lock, this instance's lease on it (PostgreSQL), the session
/// under them, its driver and app settings, and its places in the turn (and stream) limits.
type Claimed = (
    OwnedMutexGuard<()>,
    Option<String>,
    models::Session,
    Arc<LoadedDriver>,
    Arc<AppSettings>,
    Tickets,
);

/// A turn's places in the limits, held until it ends.
pub(crate) struct Tickets {
    turn: super::concurrency::ScopeTicket,
    stream: Option<super::concurrency::ScopeTicket>,
    _budget: Option<super::budget::Reservation>,
}

/// How long a turn's claim on its session lasts unless renewed (a crashed instance's sessions
/// are free again after this).
pub(crate) const LEASE: std::time::Duration = std::time::Duration::from_secs(90);

fn app_settings_or(
    cache: &super::settings_cache::SettingsCache,
    app_dir: &Path,
) -> Result<Arc<AppSettings>, RuntimeError> {
    cache.get(app_dir).map_err(|e| app_problem(app_dir, &e))
}

/// What the pump and the approvals need to know about the turn.
pub(crate) struct TurnCtx {
    pub(crate) session: models::Session,
    /// This instance's claim on the session (PostgreSQL), released with `done`.
    pub(crate) lease: Option<String>,
    pub(crate) driver: Arc<LoadedDriver>,
    pub(crate) limits: TurnLimits,
    pub(crate) agent: String,
    pub(crate) settings: Arc<AppSettings>,
    pub(crate) running: Arc<Running>,
    /// Prompts are answered by the hidden-prompt policy (see [`SendMessage::prompts_hidden`]).
    pub(crate) prompts_hidden: bool,
    /// The API key that started the turn.
    pub(crate) api_key_id: Option<String>,
    /// The org pays its model calls with its own key (the turn's model cost is not charged).
    pub(crate) byok: bool,
}

impl Runtime {
    /// Starts a turn (after the running one, for an `enqueue` project) and returns a
    /// subscription to its frames. The turn runs to its end whether or not anyone listens.
    pub async fn send_message(
        self: &Arc<Self>,
        org_id: &str,
        scope: Option<&str>,
        session_id: &str,
        msg: SendMessage,
    ) -> Result<Subscription, RuntimeError> {
        // In a task of its own: a client that goes away mid-way must not leave a claimed lock
        // or lease behind (a dropped future would skip their release).
        let (rt, org, sc, id) = (
            self.clone(),
            org_id.to_string(),
            scope.map(str::to_string),
            session_id.to_string(),
        );
        tokio::spawn(async move { rt.start_message(&org, sc.as_deref(), &id, msg).await })
            .await
            .map_err(|e| RuntimeError::Store(store::StoreError::Task(e.to_string())))?
    }

    async fn start_message(
        self: &Arc<Self>,
        org_id: &str,
        scope: Option<&str>,
        session_id: &str,
        msg: SendMessage,
    ) -> Result<Subscription, RuntimeError> {
        let who = Participant::new(
            msg.participant_name
                .clone()
                .unwrap_or_else(|| "user".into()),
            msg.participant_type
                .clone()
                .unwrap_or_else(|| "human".into()),
        );
        if who.kind != "human" && who.kind != "ai" {
            return Err(invalid(
                "participant_type",
                format!("must be `human` or `ai`, got `{}`", who.kind),
            ));
        }
        if who.name.trim().is_empty() {
            return Err(invalid("participant_name", "must not be empty"));
        }
        if msg.text.is_empty() {
            return Err(invalid("text", "must not be empty"));
        }
        self.check_policies(org_id, session_id, &msg.text).await?;
        let msg_prompts_hidden = msg.prompts_hidden;
        let msg_key = msg.api_key_id.clone();
        let org_id_owned = org_id.to_string();
        // The tenant's sandbox uid (given out on its first turn ever: a store write).
        let sandbox = self.confinement.sandbox.clone();
        let uid = match sandbox.known_tenant_uid(org_id) {
            Some(uid) => uid,
            None => {
                let (store, org) = (self.store.clone(), org_id.to_string());
                tokio::task::spawn_blocking(move || sandbox.tenant_uid(&store, &org))
                    .await
                    .map_err(|e| RuntimeError::Store(StoreError::Task(e.to_string())))?
                    .map_err(|e| {
                        tracing::error!(error = %e, "no sandbox for the tenant");
                        RuntimeError::Unavailable("the session's sandbox cannot be prepared".into())
                    })?
            }
        };
        let slot = self.slot(session_id);
        let started = self
            .claim_session(org_id, scope, session_id, &slot, &msg)
            .await;
        let (guard, lease, session, driver, settings, tickets) = match started {
            Ok(v) => v,
            Err(e) => {
                self.forget_slot(session_id, slot);
                return Err(e);
            }
        };

        let agent = msg
            .agent
            .clone()
            .unwrap_or_else(|| session.current_agent.clone());
        let rt_settings = self.settings();
        let (running, control_rx) = Running::new(
            session.last_seq,
            agent.clone(),
            serde_json::from_str(&session.approved_tools).unwrap_or_default(),
            rt_settings.event_log_retention.clamp(1, 1 << 20) as usize,
        );
        let sub = Subscription::live(
            session.id.clone(),
            session.org_id.clone(),
            running.clone(),
            session.last_seq,
            rt_settings.replay_page_size.max(1),
        )
        .counted(tickets.stream);
        slot.set_running(Some(running.clone()));

        let mut sandbox_spec = SandboxSpec::default();
        let mut request = TurnRequest::default();
        request.v = PAYLOAD_VERSION;
        request.session_id = session.id.clone();
        request.harness_session_id = session.harness_session_id.clone();
        request.app_dir = session.app_path.clone();
        request.workspace_dir = self
            .workspace_dir(&session.org_id, &session.id)
            .display()
            .to_string();
        request.text = msg.text;
        request.agent = agent.clone();
        request.participant = who.clone();
        request.thinking = msg.thinking;
        request.permission_mode = session.permission_mode.clone();
        request.env = self.harness_env(&session, &rt_settings, uid, &mut sandbox_spec);
        request.app_config = settings.raw.clone();
        request.sandbox = sandbox_spec;
        let queue = rt_settings.turn_event_queue.max(1);
        let rt = self.clone();
        let limits = rt_settings
            .project_turn_limits
            .get(&session.project_id)
            .copied()
            .unwrap_or(rt_settings.turn_limits);
        let ctx = TurnCtx {
            session,
            lease,
            driver: driver.clone(),
            limits,
            agent,
            settings,
            running,
            prompts_hidden: msg_prompts_hidden,
            api_key_id: msg_key,
            byok: self
                .confinement
                .gateway
                .org_has_own_key(&org_id_owned)
                .await,
        };
        // The turn outlives the request; its log lines keep the request's id.
        let span = tracing::Span::current();
        let scopes = (
            ctx.session.org_id.clone(),
            ctx.session.project_id.clone(),
            ctx.api_key_id.clone(),
        );
        let after = rt.clone();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                rt.run_turn(ctx, driver, request, who, queue, control_rx, slot, guard)
                    .await;
                // The turn no longer counts against its tenant's and project's limits (nor holds
                // its budget reservation: its usage is stored with its `done`).
                drop(tickets.turn);
                let budgeted = tickets._budget.is_some();
                drop(tickets._budget);
                if budgeted {
                    // Other turns' next model calls stop once this one used the budget up.
                    if let Err(e) = after
                        .budget_totals(&scopes.0, &scopes.1, scopes.2.as_deref())
                        .await
                    {
                        tracing::warn!(error = %e, "budget totals not refreshed");
                    }
                }
            },
            span,
        ));
        Ok(sub)
    }

    /// Takes the session's turn lock and reads the session as it is under it (a previous turn
    /// advanced its sequence). An idle session is locked first and read once; a busy one is
    /// refused, waited for or interrupted as its project says, then read again.
    async fn claim_session(
        &self,
        org_id: &str,
        scope: Option<&str>,
        session_id: &str,
        slot: &Arc<Slot>,
        msg: &SendMessage,
    ) -> Result<Claimed, RuntimeError> {
        let (agent, stream) = (msg.agent.as_deref(), msg.stream);
        let api_key_id = msg.api_key_id.as_deref();
        let read = |store: &crate::store::Store| {
            let (org, id, sc) = (
                org_id.to_string(),
                session_id.to_string(),
                scope.map(str::to_string),
            );
            let store = store.clone();
            async move {
                store
                    .read_async(move |c| load(c, &org, &id, sc.as_deref()))
                    .await
            }
        };
        let (guard, lease, session, project) = match slot.lock.clone().try_lock_owned() {
            Ok(guard) => {
                let (lease, s, p) = self.lease_and_load(org_id, scope, session_id).await?;
                (guard, lease, s, p)
            }
            Err(_) => {
                let (s, p) = read(&self.store).await?;
                self.turn_gates(&s, &p, agent).await?;
                let guard = match Multitask::parse(&p.multitask) {
                    Multitask::Reject => return Err(RuntimeError::Busy),
                    Multitask::Enqueue => slot.lock.clone().lock_owned().await,
                    Multitask::Interrupt => {
                        self.cancel_running(session_id);
                        slot.lock.clone().lock_owned().await
                    }
                };
                let (lease, s, p) = self.lease_and_load(org_id, scope, session_id).await?;
                (guard, lease, s, p)
            }
        };
        let gates = self.turn_gates(&session, &project, agent).await;
        let driver = self.or_release(org_id, session_id, &lease, gates).await?;
        let app_dir = Path::new(&session.app_path);
        let settings = app_settings_or(&self.app_settings, app_dir);
        let settings = self
            .or_release(org_id, session_id, &lease, settings)
            .await?;
        let ticket = self.count_turn(&session);
        let ticket = self.or_release(org_id, session_id, &lease, ticket).await?;
        let stream_ticket = match stream {
            true => {
                let t = self.count_stream(&session.org_id, &session.project_id);
                Some(self.or_release(org_id, session_id, &lease, t).await?)
            }
            false => None,
        };
        let budget = self.reserve_budget(&session, api_key_id).await;
        let budget = self.or_release(org_id, session_id, &lease, budget).await?;
        let room = self.make_warm_room(&session).await;
        self.or_release(org_id, session_id, &lease, room).await?;
        Ok((
            guard,
            lease,
            session,
            driver,
            settings,
            Tickets {
                turn: ticket,
                stream: stream_ticket,
                _budget: budget,
            },
        ))
    }

    /// The monthly caps of a scope (an org id or a project id), if a budget sets any.
    pub fn budget_caps(&self, scope: &str) -> Option<super::budget::Caps> {
        self.settings().budgets.get(scope).copied()
    }

    /// This month's usage of the org's, the project's and the API key's budgeted scopes; also
    /// marks which are used up, for the model gateway's mid-turn check.
    pub(crate) async fn budget_totals(
        &self,
        org_id: &str,
        project_id: &str,
        api_key_id: Option<&str>,
    ) -> Result<Vec<(String, crate::store::usage::Totals)>, RuntimeError> {
        let settings = self.settings();
        let wanted: Vec<(String, Option<String>, Option<String>)> = [
            Some((org_id.to_string(), None, None)),
            Some((project_id.to_string(), Some(project_id.to_string()), None)),
            api_key_id.map(|k| (k.to_string(), None, Some(k.to_string()))),
        ]
        .into_iter()
        .flatten()
        .filter(|(id, _, _)| settings.budgets.contains_key(id))
        .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let (org, since) = (org_id.to_string(), super::budget::month_start());
        let totals = self
            .store
            .read_async(move |c| {
                wanted
                    .into_iter()
                    .map(|(id, p, k)| {
                        crate::store::usage::totals_since(
                            c,
                            &org,
                            p.as_deref(),
                            k.as_deref(),
                            &since,
                        )
                        .map(|t| (id, t))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        for (id, t) in &totals {
            if let Some(caps) = settings.budgets.get(id) {
                self.budget_gate
                    .mark(id, super::budget::exhausted(caps, t, (0, 0)));
            }
        }
        Ok(totals)
    }

    /// Checks the tenant's, project's and API key's monthly budgets and reserves the turn's
    /// estimate in them (402 when one is used up). Free when no budget applies.
    async fn reserve_budget(
        &self,
        session: &models::Session,
        api_key_id: Option<&str>,
    ) -> Result<Option<super::budget::Reservation>, RuntimeError> {
        let settings = self.settings();
        let scopes: Vec<(String, super::budget::Caps)> = [
            Some(session.org_id.as_str()),
            Some(session.project_id.as_str()),
            api_key_id,
        ]
        .into_iter()
        .flatten()
        .filter_map(|id| settings.budgets.get(id).map(|c| (id.to_string(), *c)))
        .collect();
        if scopes.is_empty() {
            return Ok(None);
        }
        let used = self
            .budget_totals(&session.org_id, &session.project_id, api_key_id)
            .await?;
        let admit: Vec<_> = scopes
            .into_iter()
            .filter_map(|(id, caps)| {
                let u = used.iter().find(|(s, _)| *s == id)?.1;
                let is_key = api_key_id == Some(id.as_str());
                Some((id, caps, u, is_key))
            })
            .collect();
        self.reservations.admit(&admit).map(Some).map_err(|why| {
            tracing::info!(project = %session.project_id, session = %session.id, reason = %why, "turn refused by a budget");
            RuntimeError::Budget(why)
        })
    }

    /// Counts the turn against its tenant's and project's `concurrent_turns` (429 past one).
    fn count_turn(
        &self,
        session: &models::Session,
    ) -> Result<super::concurrency::ScopeTicket, RuntimeError> {
        let limits = &self.settings().concurrent_turns;
        self.turn_counts
            .try_start_in(limits, &session.org_id, &session.project_id)
            .map_err(|max| {
                RuntimeError::TooMany(format!(
                    "at most {max} turns run at once here; retry when one has ended"
                ))
            })
    }

    /// Counts the session's harness as warm; stops the least recently used idle ones past the
    /// caps, or refuses the turn (503) when every counted session is busy.
    async fn make_warm_room(&self, session: &models::Session) -> Result<(), RuntimeError> {
        let settings = self.settings();
        let limits = settings.warm;
        let cap = |scope: &str| settings.warm_harnesses.get(scope).copied();
        let tenant_cap = cap(&session.org_id).unwrap_or(limits.per_tenant);
        let project_cap = cap(&session.project_id).unwrap_or(usize::MAX);
        let evictions = self.warm.admit(
            &session.id,
            &session.driver,
            &[
                (session.org_id.as_str(), tenant_cap),
                (session.project_id.as_str(), project_cap),
            ],
            limits.total,
            |sid| try_idle(&self.slot(sid).lock),
        );
        let Some(evictions) = evictions else {
            tracing::warn!(session = %session.id, org = %session.org_id, "no room for another warm harness");
            return Err(RuntimeError::Unavailable(format!(
                "every harness slot is busy (at most {} warm harnesses, {} for this tenant{}); retry shortly",
                limits.total,
                tenant_cap,
                if project_cap == usize::MAX {
                    String::new()
                } else {
                    format!(", {project_cap} for this project")
                }
            )));
        };
        for e in evictions {
            tracing::info!(session = %e.session_id, "stopping the least recently used idle harness");
            if let Some(d) = self.drivers.get(&e.driver) {
                self.end_harness(&d, &e.session_id).await;
            }
            let sid = e.session_id.clone();
            drop(e);
            if let Some(slot) = self.existing_slot(&sid) {
                self.forget_slot(&sid, slot);
            }
        }
        Ok(())
    }

    /// Reads the session and its project under this instance's claim on the session's turn. On
    /// PostgreSQL (where several instances may share the database) the claim is one statement
    /// that also reads the session, and another instance's live claim makes the session busy
    /// here; SQLite (one instance per file) needs no claim.
    async fn lease_and_load(
        &self,
        org_id: &str,
        scope: Option<&str>,
        session_id: &str,
    ) -> Result<(Option<String>, models::Session, models::Project), RuntimeError> {
        let (org, id, sc) = (
            org_id.to_string(),
            session_id.to_string(),
            scope.map(str::to_string),
        );
        if self.store.backend() != crate::store::Backend::Postgres {
            let (s, p) = self
                .store
                .read_quick(move |c| load(c, &org, &id, sc.as_deref()))
                .await?;
            return Ok((None, s, p));
        }
        let owner = self.instance_id.clone();
        // No transaction: the claim is one statement that also answers the session and its
        // project (one round trip instead of six with BEGIN, SET and COMMIT).
        // Its commit skips the WAL flush (see `Store::claim_async` for what a crash can lose).
        let claimed = self
            .store
            .claim_async(move |c| {
                let now = store::now();
                match sessions::acquire_turn_with_project(c, &org, &id, &owner, now, now + LEASE)? {
                    Some((s, p)) => {
                        let project = match p {
                            // Another project's session.
                            _ if sc.as_deref().is_some_and(|p| p != s.project_id) => {
                                Err(StoreError::NotFound)
                            }
                            Some(p) => Ok(p),
                            None => Err(StoreError::NotFound),
                        };
                        match project {
                            Ok(p) => Ok(Some((s, p))),
                            Err(e) => {
                                // Without a transaction to roll back, the claim is given back
                                // (if that fails too, it frees itself after LEASE); the caller
                                // learns what went wrong first.
                                if let Err(r) = sessions::release_turn(c, &org, &id, &owner) {
                                    tracing::warn!(session = %id, error = %r, "claim not given back");
                                }
                                Err(e)
                            }
                        }
                    }
                    // Not ours: busy elsewhere, or no such session.
                    None => sessions::get(c, &org, &id).map(|_| None),
                }
            })
            .await?;
        match claimed {
            Some((s, p)) => Ok((Some(self.instance_id.clone()), s, p)),
            None => {
                tracing::info!(session = %session_id, "a turn of this session runs on another instance");
                Err(RuntimeError::Busy)
            }
        }
    }

    /// Passes `r` through; on an error gives the lease back first.
    async fn or_release<T>(
        &self,
        org_id: &str,
        session_id: &str,
        lease: &Option<String>,
        r: Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        if r.is_err() {
            if let Some(owner) = lease.clone() {
                let (org, id) = (org_id.to_string(), session_id.to_string());
                if let Err(e) = self
                    .store
                    .write_async(move |c| sessions::release_turn(c, &org, &id, &owner))
                    .await
                {
                    tracing::error!(session = %session_id, error = %e, "lease not released");
                }
            }
        }
        r
    }

    /// What must hold before a turn may start: the session open, the project enabled, its
    /// driver loaded, a named agent defined by the app.
    async fn turn_gates(
        &self,
        session: &models::Session,
        project: &models::Project,
        agent: Option<&str>,
    ) -> Result<Arc<LoadedDriver>, RuntimeError> {
        if session.status == "closed" {
            return Err(RuntimeError::Conflict("session is closed".into()));
        }
        if project.disabled_at.is_some() {
            return Err(RuntimeError::Unavailable(format!(
                "project `{}` is disabled",
                project.slug
            )));
        }
        let driver = self.drivers.get(&session.driver).ok_or_else(|| {
            RuntimeError::Unavailable(format!("driver `{}` is not loaded", session.driver))
        })?;
        if let Some(agent) = agent {
            check_agent(&driver, &session.app_path, agent).await?;
        }
        Ok(driver)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_turn(
        self: Arc<Self>,
        ctx: TurnCtx,
        driver: Arc<LoadedDriver>,
        request: TurnRequest,
        who: Participant,
        queue: usize,
        control_rx: mpsc::Receiver<Control>,
        slot: Arc<Slot>,
        guard: OwnedMutexGuard<()>,
    ) {
        let started_at = std::time::Instant::now();
        tracing::info!(project = %ctx.session.project_id, session = %ctx.session.id, driver = %driver.name, agent = %ctx.agent, "turn started");
        let opening = self.begin_turn(&ctx, &who);
        // Bounded: a driver faster than the pump (and the journal) waits in its own thread.
        let (ev_tx, ev_rx) = mpsc::channel::<Result<Event, String>>(queue);
        // The driver starts while the pump already runs, so a driver that emits from inside
        // `start_turn` cannot fill the queue and wait forever.
        let quick = driver.info.capabilities.quick_start;
        let start = super::start::start(driver, quick, request, ev_tx, ctx.running.clone());
        let ((), done) = tokio::join!(start, self.pump(&ctx, ev_rx, control_rx, Some(opening)));
        // Free the session before anyone sees `done`, so a client that sends again at once is
        // not refused as busy.
        let had_pending = ctx.running.pending().take().is_some();
        if had_pending {
            self.clear_pending(&ctx.session.org_id, &ctx.session.id)
                .await;
        }
        let m = crate::metrics::get();
        m.turns
            .get_or_create(&crate::metrics::TurnLabels {
                driver: ctx.session.driver.clone(),
                status: done.data()["status"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_string(),
            })
            .inc();
        m.turn_seconds
            .get_or_create(&crate::metrics::DriverLabels {
                driver: ctx.session.driver.clone(),
            })
            .observe(started_at.elapsed().as_secs_f64());
        tracing::info!(
            project = %ctx.session.project_id,
            session = %ctx.session.id,
            status = %done.data()["status"].as_str().unwrap_or("unknown"),
            events = done.seq - ctx.running.start_seq,
            ms = started_at.elapsed().as_millis() as u64,
            "turn ended"
        );
        self.fire_hooks(
            "message.completed",
            &ctx.session,
            json!({"status": done.data()["status"], "seq": done.seq,
                "message": done.data()["message"], "usage": done.data()["usage"]}),
        );
        slot.set_running(None);
        drop(guard);
        ctx.running.publish(done);
        self.forget_slot(&ctx.session.id, slot);
    }

    /// Records who sent the turn (participants join on their first message) and a handoff.
    /// The update it returns is written by the pump with the turn's first run of events,
    /// before its `done`: one commit fewer per turn.
    fn begin_turn(&self, ctx: &TurnCtx, who: &Participant) -> super::journal::SessionOp {
        let agent = &ctx.agent;
        let handoff = *agent != ctx.session.current_agent;
        if handoff {
            self.fire_hooks(
                "agent.handoff",
                &ctx.session,
                json!({"from": ctx.session.current_agent, "to": agent}),
            );
            tracing::info!(session = %ctx.session.id, from = %ctx.session.current_agent, to = %agent, "agent handoff");
        }
        super::journal::SessionOp::Opening(super::journal::Opening {
            org_id: ctx.session.org_id.clone(),
            session_id: ctx.session.id.clone(),
            name: who.name.clone(),
            kind: who.kind.clone(),
            agent: handoff.then(|| agent.clone()),
            at: store::now(),
            prior: ctx
                .lease
                .is_some()
                .then(|| ctx.session.participants.clone()),
        })
    }
}

/// 422 unless the app defines `agent`.
async fn check_agent(
    driver: &Arc<LoadedDriver>,
    app_path: &str,
    agent: &str,
) -> Result<(), RuntimeError> {
    let d = driver.clone();
    let dir = app_path.to_string();
    let discovery = tokio::task::spawn_blocking(move || d.driver.discover(Path::new(&dir)))
        .await
        .map_err(|e| RuntimeError::Store(store::StoreError::Task(e.to_string())))?
        .map_err(|e| app_problem(Path::new(app_path), &e))?;
    if discovery.agents.iter().any(|a| a.name == agent) {
        return Ok(());
    }
    let names: Vec<&str> = discovery.agents.iter().map(|a| a.name.as_str()).collect();
    Err(invalid(
        "agent",
        format!(
            "unknown agent `{agent}`; this app's agents are: {}",
            names.join(", ")
        ),
    ))
}

impl Runtime {
    /// The harness's sandbox spec (into `spec`) and environment: the model gateway's address
    /// and the session's capability token, never a provider key. Under `network = "none"` the
    /// harness gets no model at all.
    fn harness_env(
        &self,
        session: &models::Session,
        settings: &super::RuntimeSettings,
        uid: Option<u32>,
        spec: &mut SandboxSpec,
    ) -> std::collections::BTreeMap<String, String> {
        let host = &self.confinement.sandbox;
        let gateway = &self.confinement.gateway;
        let sb = settings
            .project_sandbox
            .get(&session.project_id)
            .unwrap_or(&settings.sandbox);
        *spec = host.spec(uid, sb.network, sb.limits.clone());
        let mut env = std::collections::BTreeMap::new();
        if sb.network == NetworkMode::None {
            return env;
        }
        let port = match host.backend() {
            SandboxBackend::Bubblewrap => Some(host.gateway_port()),
            SandboxBackend::None => gateway.tcp_port(),
        };
        let Some(port) = port else {
            tracing::error!("the model gateway is not listening; the harness gets no model");
            return env;
        };
        let token = gateway.grants.grant(crate::gateway::Grant {
            org_id: session.org_id.clone(),
            project_id: session.project_id.clone(),
            session_id: session.id.clone(),
            network: sb.network,
        });
        let base = format!("http://127.0.0.1:{port}");
        env.insert("ANTHROPIC_BASE_URL".into(), base.clone());
        env.insert("ANTHROPIC_API_KEY".into(), token.clone());
        env.insert("OPENAI_BASE_URL".into(), format!("{base}/v1"));
        env.insert("OPENAI_API_KEY".into(), token.clone());
        if sb.network == NetworkMode::Full && host.backend() == SandboxBackend::Bubblewrap {
            // The internet through Karta's egress proxy, which wants the session's token.
            let proxy = format!(
                "http://karta:{token}@127.0.0.1:{}",
                karta_driver_kit::sandbox::SANDBOX_PROXY_PORT
            );
            for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                env.insert(k.into(), proxy.clone());
            }
            for k in ["NO_PROXY", "no_proxy"] {
                env.insert(k.into(), "127.0.0.1,localhost".into());
            }
        }
        env
    }
}

impl Runtime {
    /// Fires the project's `message.received` hooks, then refuses a message a policy of the
    /// session's project does not accept, before anything reaches the harness. Costs nothing
    /// when no hook or policy is configured.
    async fn check_policies(
        &self,
        org_id: &str,
        session_id: &str,
        text: &str,
    ) -> Result<(), RuntimeError> {
        let settings = self.settings();
        if settings.message_policies.is_empty() && settings.hooks.is_empty() {
            return Ok(());
        }
        let (org, id) = (org_id.to_string(), session_id.to_string());
        let session = self
            .store
            .read_async(move |c| sessions::get(c, &org, &id))
            .await?;
        self.fire_hooks("message.received", &session, json!({ "text": text }));
        let Some(list) = settings.message_policies.get(&session.project_id) else {
            return Ok(());
        };
        let sent: u64 = serde_json::from_str::<Vec<Value>>(&session.participants)
            .unwrap_or_default()
            .iter()
            .map(|p| p["turns"].as_u64().unwrap_or(0))
            .sum::<u64>()
            + 1;
        for p in list {
            p.check(text, sent).map_err(|v| {
                tracing::info!(session = %session_id, policy = %v.policy, "message refused by policy");
                RuntimeError::Policy(v)
            })?;
        }
        Ok(())
    }
}

//! Approvals: a policy decides an `input_required`, or the turn pauses until a client answers
//! (or the input timeout lets the hidden-prompt policy answer).

use std::sync::Arc;

use karta_driver_api::{DecisionKind, Event, EventKind, InputRequest};
use serde_json::{json, Value};

use super::app_settings::{PermissionMode, Policy};
use super::pump::error_event;
use super::running::{Control, Pending, Running};
use super::sessions::{invalid, load};
use super::subscription::Subscription;
use super::turns::TurnCtx;
use super::{Runtime, RuntimeError};
use crate::store::sessions::SessionPatch;
use crate::store::{self, models, sessions};

fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Runtime {
    /// Decides an approval by policy, or turns it into a prompt. Returns the event to publish.
    pub(crate) async fn on_input_required(
        self: &Arc<Self>,
        ctx: &TurnCtx,
        req: InputRequest,
        raw: Option<Value>,
    ) -> Option<Event> {
        let running = &ctx.running;
        let already = req.tool.as_ref().is_some_and(|t| {
            running
                .approved_tools
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(t)
        });
        let mode = ctx
            .session
            .permission_mode
            .as_deref()
            .and_then(PermissionMode::parse);
        // The platform's policy for the tool comes first: a tenant's rule beats the session's
        // and the app's settings (and a tool approved for the session earlier).
        let platform = req.tool.as_deref().and_then(|tool| {
            self.settings()
                .message_policies
                .get(&ctx.session.project_id)?
                .iter()
                .find_map(|p| p.tool_policy(tool))
        });
        let policy = match platform {
            Some(p) => p,
            None if already => Policy::ApproveOnce,
            None => match ctx.settings.policy_for(mode) {
                // Nobody could answer a prompt: the hidden-prompt policy (never a prompt).
                Policy::Prompt if ctx.prompts_hidden => {
                    match ctx.settings.cli.input_required_hidden_policy {
                        Policy::Prompt => Policy::Deny,
                        hidden => hidden,
                    }
                }
                p => p,
            },
        };
        let decide = |d: DecisionKind, why: &'static str| {
            let running = running.clone();
            let (rid, sid) = (req.request_id.clone(), ctx.session.id.clone());
            async move {
                if let Err(e) = running.decide(&rid, d, Some(why.to_string())).await {
                    tracing::error!(session = %sid, error = %e, "automatic decision not delivered; cancelling the turn");
                    running.cancel_soon();
                }
            }
        };
        match policy {
            Policy::Prompt => {
                let public = InputRequest {
                    request_id: store::new_id("req"),
                    ..req.clone()
                };
                *running.pending() = Some(Pending {
                    public_id: public.request_id.clone(),
                    driver_id: req.request_id.clone(),
                    options: req.options.clone(),
                    tool: req.tool.clone(),
                });
                let patch = SessionPatch {
                    pending_input: Some(Some(serde_json::to_string(&public).unwrap_or_default())),
                    ..Default::default()
                };
                if let Err(e) = self
                    .patch_session(&ctx.session.org_id, &ctx.session.id, patch)
                    .await
                {
                    tracing::error!(session = %ctx.session.id, error = %e, "pending input not saved");
                }
                self.expire_later(ctx, public.request_id.clone());
                let ev = Event::new(EventKind::InputRequired(public));
                Some(match raw {
                    Some(r) => ev.with_raw(r),
                    None => ev,
                })
            }
            Policy::ApproveOnce => {
                decide(DecisionKind::ApproveOnce, "approved by policy").await;
                None
            }
            Policy::ApproveSession => {
                if let Some(tool) = &req.tool {
                    self.approve_for_session(running, &ctx.session.org_id, &ctx.session.id, tool)
                        .await;
                }
                decide(
                    DecisionKind::ApproveSession,
                    "approved for the session by policy",
                )
                .await;
                None
            }
            Policy::Deny => {
                decide(DecisionKind::Deny, "denied by policy").await;
                None
            }
            Policy::Error => {
                decide(DecisionKind::Deny, "refused by policy").await;
                running.cancel_soon();
                Some(error_event(
                    "input_required_refused",
                    format!(
                        "the turn asked for approval ({}) and this app's policy is `error`",
                        req.tool.as_deref().unwrap_or(&req.kind)
                    ),
                ))
            }
        }
    }

    /// After the input timeout, an unanswered prompt gets the hidden-prompt policy.
    fn expire_later(self: &Arc<Self>, ctx: &TurnCtx, public_id: String) {
        let timeout = self.settings().input_timeout;
        let hidden = match ctx.settings.cli.input_required_hidden_policy {
            Policy::ApproveOnce => DecisionKind::ApproveOnce,
            Policy::ApproveSession => DecisionKind::ApproveSession,
            _ => DecisionKind::Deny,
        };
        let running = Arc::downgrade(&ctx.running);
        let rt = self.clone();
        let (org, id) = (ctx.session.org_id.clone(), ctx.session.id.clone());
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let Some(running) = running.upgrade() else {
                return;
            };
            let pending = {
                let mut p = running.pending();
                match p.as_ref() {
                    Some(x) if x.public_id == public_id => p.take(),
                    _ => None,
                }
            };
            let Some(pending) = pending else { return };
            tracing::info!(session = %id, request = %public_id, decision = ?hidden, "input timed out");
            rt.clear_pending(&org, &id).await;
            let _ = running
                .control
                .send(Control::Publish(Event::new(EventKind::System(json!({
                    "subtype": "input_expired",
                    "request_id": public_id,
                    "decision": hidden,
                })))))
                .await;
            if let Err(e) = running
                .decide(&pending.driver_id, hidden, Some("no answer in time".into()))
                .await
            {
                tracing::error!(session = %id, error = %e, "expired input not delivered; cancelling the turn");
                running.cancel_soon();
            }
        });
    }

    /// Answers a pending approval; the subscription carries the turn's continuation.
    pub async fn resolve_input(
        &self,
        org_id: &str,
        scope: Option<&str>,
        session_id: &str,
        request_id: &str,
        decision: DecisionKind,
        message: Option<String>,
    ) -> Result<Subscription, RuntimeError> {
        if !valid_request_id(request_id) {
            return Err(RuntimeError::NotFound("input request"));
        }
        let (org, id, sc) = (
            org_id.to_string(),
            session_id.to_string(),
            scope.map(str::to_string),
        );
        let (session, _) = self
            .store
            .read_async(move |c| load(c, &org, &id, sc.as_deref()))
            .await?;
        let running = self.existing_slot(session_id).and_then(|s| s.running());
        let pending = running.as_ref().and_then(|r| {
            r.pending()
                .as_ref()
                .filter(|p| p.public_id == request_id)
                .cloned()
        });
        let (Some(running), Some(pending)) = (running, pending) else {
            return Err(self.input_not_pending(&session, request_id).await);
        };
        if !pending.options.contains(&decision) {
            let offered: Vec<String> = pending
                .options
                .iter()
                .map(|o| {
                    serde_json::to_value(o)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                })
                .collect();
            return Err(invalid(
                "decision",
                format!("this request offers only: {}", offered.join(", ")),
            ));
        }
        // Take it, unless another answer got there first.
        {
            let mut p = running.pending();
            if p.as_ref().map(|x| x.public_id.as_str()) != Some(request_id) {
                return Err(RuntimeError::Conflict(
                    "input request already resolved".into(),
                ));
            }
            *p = None;
        }
        // Subscribed before the driver hears the answer, so the continuation misses nothing.
        let page = self.settings().replay_page_size.max(1);
        let sub = Subscription::live(
            session.id.clone(),
            session.org_id.clone(),
            running.clone(),
            running.last_seq(),
            page,
        )
        .after_answer(request_id);
        self.clear_pending(org_id, session_id).await;
        if decision == DecisionKind::ApproveSession {
            if let Some(tool) = &pending.tool {
                self.approve_for_session(&running, org_id, session_id, tool)
                    .await;
            }
        }
        if let Err(e) = running.decide(&pending.driver_id, decision, message).await {
            // The harness would wait forever for an answer nobody can give again: end the turn.
            running.cancel_soon();
            return Err(RuntimeError::Conflict(format!(
                "the harness did not take the decision, so the turn was cancelled: {e}"
            )));
        }
        Ok(sub)
    }

    async fn input_not_pending(&self, session: &models::Session, request_id: &str) -> RuntimeError {
        let stale = session
            .pending_input
            .as_deref()
            .map(super::sessions::parse_json)
            .is_some_and(|p| p["request_id"] == request_id);
        let (org, id, rid) = (
            session.org_id.clone(),
            session.id.clone(),
            request_id.to_string(),
        );
        if stale {
            // The turn that asked is gone (a restart): the prompt can never be answered.
            self.clear_pending(&org, &id).await;
            return RuntimeError::Conflict(
                "the turn that asked for this input is no longer running".into(),
            );
        }
        match self
            .store
            .read_async(move |c| sessions::input_was_requested(c, &org, &id, &rid))
            .await
        {
            Ok(true) => RuntimeError::Conflict("input request already resolved".into()),
            Ok(false) => RuntimeError::NotFound("input request"),
            Err(e) => RuntimeError::Store(e),
        }
    }

    /// Interrupts the org's session's running turn (it ends with `done`, status `cancelled`);
    /// whether one was running.
    pub async fn interrupt(
        &self,
        org_id: &str,
        scope: Option<&str>,
        session_id: &str,
    ) -> Result<bool, RuntimeError> {
        let (org, id, sc) = (
            org_id.to_string(),
            session_id.to_string(),
            scope.map(str::to_string),
        );
        self.store
            .read_async(move |c| load(c, &org, &id, sc.as_deref()))
            .await?;
        let running = self
            .existing_slot(session_id)
            .and_then(|s| s.running())
            .is_some();
        self.cancel_running(session_id);
        Ok(running)
    }

    /// Cancels the session's running turn, if any (its driver still ends it with `done`).
    pub(crate) fn cancel_running(&self, session_id: &str) {
        if let Some(r) = self.existing_slot(session_id).and_then(|s| s.running()) {
            tracing::info!(session = %session_id, "cancelling the running turn");
            r.cancel_soon();
        }
    }

    /// Applies a patch to one of the org's sessions.
    pub(crate) async fn patch_session(
        &self,
        org_id: &str,
        session_id: &str,
        patch: SessionPatch,
    ) -> Result<(), store::StoreError> {
        let (org, id) = (org_id.to_string(), session_id.to_string());
        self.store
            .write_async(move |c| sessions::update(c, &org, &id, patch))
            .await
    }

    /// Clears the session's pending input; a failure is logged (the turn goes on).
    pub(crate) async fn clear_pending(&self, org_id: &str, session_id: &str) {
        let patch = SessionPatch {
            pending_input: Some(None),
            ..Default::default()
        };
        if let Err(e) = self.patch_session(org_id, session_id, patch).await {
            tracing::error!(session = %session_id, error = %e, "pending input not cleared");
        }
    }

    /// Remembers a tool approved for the rest of the session (in the turn and in the store).
    async fn approve_for_session(
        &self,
        running: &Running,
        org_id: &str,
        session_id: &str,
        tool: &str,
    ) {
        let json = {
            let mut set = running
                .approved_tools
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            set.insert(tool.to_string());
            serde_json::to_string(&*set).unwrap_or_else(|_| "[]".into())
        };
        let patch = SessionPatch {
            approved_tools: Some(json),
            ..Default::default()
        };
        if let Err(e) = self.patch_session(org_id, session_id, patch).await {
            tracing::error!(session = %session_id, error = %e, "session approval not saved");
        }
    }
}

//! Platform services: API keys now; tokens, BYOK, usage, budgets, webhooks, audit and releases
//! join here as they are built.

pub mod byok;
pub mod keys;
pub mod limits;
pub mod managed_log;
pub mod money;
pub mod pricing;
pub mod releases;
pub mod resources;
pub mod tokens;
pub mod webhooks;

//! Karta: host harness applications behind one streaming session API.
//!
//! The modules mirror the architecture: `config` (load, layer, validate), `reconcile` (desired
//! state -> store), `store` (SQL), `drivers` (plugin host), `runtime` (sessions, turns, events),
//! `http` (actix-web), `platform` (keys and other platform services), `cli`.

pub mod adapters;
pub mod app;
pub mod cli;
pub mod config;
pub mod drivers;
pub mod gateway;
pub mod harness;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod mockmodel;
pub mod platform;
pub mod reconcile;
pub mod runtime;
pub mod sandbox;
pub mod store;

//! The OpenCode driver: serves a harness app with `.opencode/` (or with no harness signal at
//! all) through the real OpenCode, one `opencode serve` per session workspace on a loopback port,
//! driven over its HTTP API and followed on its `/event` stream.

mod discover;
mod protocol;
mod server;

pub use server::{OpenCodeDriver, DRIVER_NAME};

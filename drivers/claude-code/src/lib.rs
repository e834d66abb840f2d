//! The Claude Code driver: serves a harness app with `CLAUDE.md` or `.claude/` through the real
//! `claude` CLI, one long-lived process per active session (stream-json in and out, the stdio
//! control protocol for approvals), resumed with `--resume` after it stops.

mod discover;
mod process;
mod protocol;

pub use process::{ClaudeDriver, DRIVER_NAME};

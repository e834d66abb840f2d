//! Helpers for writing Karta harness drivers, kept apart from the ABI (`karta-driver-api`) so
//! that changing a helper never changes what a plugin is built against.
//!
//! * [`sandbox`]: the one launcher for harness processes (bubblewrap or none), with cgroup
//!   limits, and the host-side helpers for tenant-owned files.
//! * [`process`]: processes that die with the host, whole-tree kills, bounded line reading, and
//!   the reaper for warm harness processes.
//! * [`cli`]: finding a harness CLI.
//! * [`markdown`]: YAML frontmatter of agent and skill files.
//! * [`conformance`]: scenarios every driver must pass, run against a driver through the ABI.

pub mod cli;
pub mod conformance;
pub mod markdown;
pub mod process;
pub mod sandbox;

pub use karta_driver_api as api;

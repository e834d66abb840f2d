//! What the host tells a driver about confining its harness processes (part of every
//! [`crate::TurnRequest`]). Drivers pass it unchanged to the launcher in `karta-driver-kit`.
//!
//! Unlike event payloads, a value here that a driver does not know is an error, not a
//! catch-all: a driver must not run a harness under confinement it does not understand.

use serde::{Deserialize, Serialize};

/// Where harness processes run.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxBackend {
    /// bubblewrap: new user, PID, IPC, UTS, mount and network namespaces; only the session's
    /// folders writable.
    Bubblewrap,
    /// No confinement beyond a PID namespace where the machine allows one (explicit opt-in).
    #[default]
    None,
}

/// What a sandboxed harness can reach over the network.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkMode {
    /// The model gateway and, through Karta's egress proxy, public internet addresses (never the
    /// host's loopback or private networks).
    Full,
    /// Only Karta's model gateway.
    #[default]
    ModelOnly,
    /// Nothing at all, not even the model gateway.
    None,
}

/// Per-process resource limits. `None` leaves a limit unset.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxLimits {
    /// Memory of the harness and everything it starts, in MiB (a cgroup).
    pub memory_mb: Option<u64>,
    /// Processes (and threads) at once (a cgroup; not enforced without one).
    pub processes: Option<u64>,
    /// CPU seconds per process (RLIMIT_CPU).
    pub cpu_seconds: Option<u64>,
    /// Open files per process (RLIMIT_NOFILE).
    pub open_files: Option<u64>,
    /// Largest file a process may write, in MiB (RLIMIT_FSIZE).
    pub file_size_mb: Option<u64>,
}

/// Which cgroup hierarchy limits memory and processes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "version", rename_all = "snake_case")]
pub enum CgroupSpec {
    /// cgroup v1: one parent folder per controller (`memory`, `pids`).
    V1 {
        /// Parent folder in the memory hierarchy, if writable.
        memory: Option<String>,
        /// Parent folder in the pids hierarchy, if writable.
        pids: Option<String>,
    },
    /// cgroup v2: a delegated parent folder with `memory` and `pids` enabled for its children.
    V2 {
        /// The parent folder.
        parent: String,
    },
}

/// How the host wants harness processes confined. A field this driver does not know makes the
/// turn request unreadable: the driver refuses the turn rather than ignore a confinement.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxSpec {
    /// The backend.
    pub backend: SandboxBackend,
    /// The `bwrap` executable.
    pub bwrap: Option<String>,
    /// Host uid and gid the harness runs as (the tenant's); unset keeps the host's own.
    pub uid: Option<u32>,
    /// Host gid (see `uid`).
    pub gid: Option<u32>,
    /// The network the harness gets.
    pub network: NetworkMode,
    /// A folder the sandbox user can reach, where harness executables are linked or copied so
    /// the sandbox can mount them wherever they were installed.
    pub stage_dir: Option<String>,
    /// Karta's in-sandbox helper (forwards the gateway and control sockets), already staged.
    pub helper: Option<String>,
    /// The folder holding the model gateway's socket (`gateway.sock`).
    pub gateway_dir: Option<String>,
    /// The folder holding the egress proxy's socket (`proxy.sock`), for `network = "full"`.
    pub proxy_dir: Option<String>,
    /// The loopback port the gateway answers on inside the sandbox.
    pub gateway_port: u16,
    /// Where per-process control folders are made (for servers reached over a socket).
    pub run_dir: Option<String>,
    /// Resource limits.
    pub limits: SandboxLimits,
    /// The cgroup hierarchy, when the host has a writable one.
    pub cgroup: Option<CgroupSpec>,
}

impl SandboxSpec {
    /// The tenant's uid and gid, when harnesses run as the tenant (files the host makes for the
    /// harness must be given to it).
    pub fn owner(&self) -> Option<(u32, u32)> {
        match (self.backend, self.uid, self.gid) {
            (SandboxBackend::Bubblewrap, Some(u), Some(g)) => Some((u, g)),
            _ => None,
        }
    }
}

/// Inside a sandbox: where staged executables are mounted.
pub const SANDBOX_BIN: &str = "/opt/karta/bin";
/// Inside a sandbox: the gateway socket's folder.
pub const SANDBOX_GATEWAY_DIR: &str = "/run/karta/gateway";
/// Inside a sandbox: the egress proxy socket's folder.
pub const SANDBOX_PROXY_DIR: &str = "/run/karta/proxy";
/// Inside a sandbox: the control socket's folder.
pub const SANDBOX_CONTROL_DIR: &str = "/run/karta/control";
/// Inside a sandbox: the egress proxy's loopback port.
pub const SANDBOX_PROXY_PORT: u16 = 3128;
/// The gateway socket's file name.
pub const GATEWAY_SOCKET: &str = "gateway.sock";
/// The egress proxy socket's file name.
pub const PROXY_SOCKET: &str = "proxy.sock";
/// The control socket's file name.
pub const CONTROL_SOCKET: &str = "control.sock";

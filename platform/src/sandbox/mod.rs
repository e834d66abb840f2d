//! The host half of the launcher seam: what every harness process is confined by.
//!
//! At start Karta checks the backend (bubblewrap must be installed and able to make a sandbox,
//! unless `[sandbox] backend = "none"` says otherwise), lays out the folders sandboxes may see
//! (`<data_dir>/sandbox/`: staged executables, the gateway's socket, control sockets), finds a
//! cgroup hierarchy for limits, and gives each tenant a host uid of its own. For every turn it
//! builds the [`SandboxSpec`] the driver hands to the launcher in `karta-plugin-api`.
//!
//! File system layout when Karta runs as root: `data_dir` and `data_dir/workspaces` are 0711
//! (enterable, not listable), `workspaces/<org>` is 0700 and owned by the tenant's uid, and the
//! database is 0600 (Karta sets its umask to 077). One tenant's processes cannot read another's
//! files even outside a sandbox.

pub mod init;
pub mod proxy;

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use karta_driver_kit::sandbox::{CgroupSpec, GATEWAY_SOCKET};
pub use karta_driver_kit::sandbox::{NetworkMode, SandboxBackend, SandboxLimits, SandboxSpec};

use crate::config::PlatformConfig;
use crate::store::{Store, StoreError};

/// Why the sandbox cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// bubblewrap is not installed.
    #[error(
        "bubblewrap is not installed: install the `bubblewrap` package (e.g. `apt-get install \
         bubblewrap`), or set [sandbox] backend = \"none\" to run harnesses without a sandbox"
    )]
    NoBwrap,
    /// bubblewrap is installed but cannot make a sandbox here.
    #[error(
        "bubblewrap ({path}) cannot make a sandbox on this machine: {detail}. It needs \
         unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 / \
         user.max_user_namespaces > 0)"
    )]
    Broken {
        /// The bwrap executable.
        path: PathBuf,
        /// What it printed.
        detail: String,
    },
    /// A folder above the data folder is closed to other users.
    #[error(
        "tenant sandboxes cannot reach {0}: harnesses run as their tenant's uid and need to \
         enter every folder above the data folder (run `chmod o+x {0}`, or choose a data_dir \
         under an enterable folder)"
    )]
    NotEnterable(PathBuf),
    /// A folder could not be prepared.
    #[error("{path}: {source}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The tenant uid could not be given out.
    #[error("cannot give the tenant a sandbox uid: {0}")]
    Store(#[from] StoreError),
    /// The tenant uid range is unusable.
    #[error(
        "[sandbox] uid_base = {0} with uid_count = {1} is not a usable range: tenant uids must be \
         at least 1000 and fit below 4294967294"
    )]
    BadUids(u32, u32),
    /// Every tenant uid is taken.
    #[error(
        "every sandbox uid of [sandbox] uid_base..uid_base+uid_count is taken; raise uid_count"
    )]
    NoUids,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn mkdir(path: &Path, mode: u32) -> Result<(), SandboxError> {
    std::fs::create_dir_all(path).map_err(io_at(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_at(path))
}

/// Where sandboxes run and as whom.
pub struct SandboxHost {
    backend: SandboxBackend,
    bwrap: Option<PathBuf>,
    /// Karta runs as root: tenants get uids of their own.
    as_root: bool,
    stage_dir: PathBuf,
    helper: Option<PathBuf>,
    gateway_dir: PathBuf,
    proxy_dir: PathBuf,
    run_dir: PathBuf,
    workspaces: PathBuf,
    cgroup: Option<CgroupSpec>,
    uid_base: u32,
    uid_count: u32,
    gateway_port: u16,
    uids: Mutex<HashMap<String, u32>>,
}

impl SandboxHost {
    /// Checks the backend and lays out the folders (blocking).
    pub fn start(cfg: &PlatformConfig) -> Result<SandboxHost, SandboxError> {
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        let sc = &cfg.sandbox;
        if as_root
            && sc.backend == SandboxBackend::Bubblewrap
            && (sc.uid_base < 1000
                || sc.uid_count == 0
                || sc
                    .uid_base
                    .checked_add(sc.uid_count)
                    .is_none_or(|end| end > u32::MAX - 2))
        {
            return Err(SandboxError::BadUids(sc.uid_base, sc.uid_count));
        }
        let data_dir = std::path::absolute(&cfg.data_dir).map_err(io_at(&cfg.data_dir))?;
        let root = data_dir.join("sandbox");
        let enterable = if as_root { 0o711 } else { 0o700 };
        mkdir(&data_dir, enterable)?;
        if as_root {
            // Files an older version (or another umask) left readable: the database above all.
            close_files(&data_dir)?;
        }
        let workspaces = data_dir.join("workspaces");
        mkdir(&workspaces, enterable)?;
        mkdir(&root, enterable)?;
        let stage_dir = root.join("bin");
        let run_dir = root.join("run");
        // Staged links and control folders of an earlier run are stale.
        for stale in [&stage_dir, &run_dir] {
            let _ = std::fs::remove_dir_all(stale);
        }
        let gateway_dir = root.join("gateway");
        let proxy_dir = root.join("proxy");
        for d in [&stage_dir, &run_dir, &gateway_dir, &proxy_dir] {
            mkdir(d, enterable)?;
        }

        let (bwrap, helper) = match sc.backend {
            SandboxBackend::None => (None, None),
            SandboxBackend::Bubblewrap => {
                let bwrap = match &sc.bwrap {
                    Some(p) => p.clone(),
                    None => find_on_path("bwrap").ok_or(SandboxError::NoBwrap)?,
                };
                if !bwrap.is_file() {
                    return Err(SandboxError::NoBwrap);
                }
                if as_root {
                    if let Some(closed) = closed_ancestor(&root) {
                        return Err(SandboxError::NotEnterable(closed));
                    }
                }
                let exe = std::env::current_exe().map_err(io_at(Path::new("karta")))?;
                let helper =
                    karta_driver_kit::sandbox::stage(&stage_dir, &exe).map_err(io_at(&exe))?;
                let probe_uid = as_root.then_some(sc.uid_base);
                probe(&bwrap, probe_uid)?;
                (Some(bwrap), Some(helper))
            }
        };
        let cgroup = karta_driver_kit::sandbox::detect_cgroup(sc.cgroup_root.as_deref());
        if let Some(spec) = &cgroup {
            let n = karta_driver_kit::sandbox::sweep_stale_cgroups(spec);
            if n > 0 {
                tracing::info!(
                    groups = n,
                    "removed cgroups left by harness launchers that were killed"
                );
            }
        }
        if let (Some(root), None) = (&sc.cgroup_root, &cgroup) {
            tracing::warn!(root = %root.display(), "[sandbox] cgroup_root is not writable");
        }
        if cgroup.is_none() && (sc.memory_mb.is_some() || sc.processes.is_some()) {
            tracing::warn!(
                "no writable cgroup hierarchy: harness memory and process limits are not \
                 enforced (set [sandbox] cgroup_root to a delegated cgroup v2 folder)"
            );
        }
        Ok(SandboxHost {
            backend: sc.backend,
            bwrap,
            as_root,
            stage_dir,
            helper,
            gateway_dir,
            proxy_dir,
            run_dir,
            workspaces,
            cgroup,
            uid_base: sc.uid_base,
            uid_count: sc.uid_count,
            gateway_port: sc.gateway_port,
            uids: Mutex::new(HashMap::new()),
        })
    }

    /// The backend in force.
    pub fn backend(&self) -> SandboxBackend {
        self.backend
    }

    /// The folder holding the gateway's socket.
    pub fn gateway_socket(&self) -> PathBuf {
        self.gateway_dir.join(GATEWAY_SOCKET)
    }

    /// The folder holding the egress proxy's socket.
    pub fn proxy_socket(&self) -> PathBuf {
        self.proxy_dir.join(karta_driver_kit::sandbox::PROXY_SOCKET)
    }

    /// The port the gateway answers on inside a sandbox.
    pub fn gateway_port(&self) -> u16 {
        self.gateway_port
    }

    /// The tenant's uid when it is known without the store: `Some(None)` when tenants get no
    /// uid of their own, `Some(Some(uid))` once given out, `None` when [`Self::tenant_uid`] must
    /// ask the store (its first turn here). Lets the turn path skip a hop to the blocking pool.
    pub fn known_tenant_uid(&self, org_id: &str) -> Option<Option<u32>> {
        if !self.as_root || self.backend == SandboxBackend::None {
            return Some(None);
        }
        self.uids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(org_id)
            .map(|uid| Some(*uid))
    }

    /// The tenant's host uid (also its gid), when Karta runs as root with a sandbox: given out
    /// once per org and kept (blocking: may write the store).
    pub fn tenant_uid(&self, store: &Store, org_id: &str) -> Result<Option<u32>, SandboxError> {
        if let Some(known) = self.known_tenant_uid(org_id) {
            return Ok(known);
        }
        let org = org_id.to_string();
        let slot = store.write(move |c| crate::store::orgs::sandbox_slot(c, &org))?;
        let slot = u32::try_from(slot).map_err(|_| SandboxError::NoUids)?;
        if slot >= self.uid_count {
            return Err(SandboxError::NoUids);
        }
        let uid = self.uid_base + slot;
        let dir = self.workspaces.join(org_id);
        mkdir(&dir, 0o700)?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).map_err(io_at(&dir))?;
        self.uids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(org_id.to_string(), uid);
        Ok(Some(uid))
    }

    /// The spec of one turn's harness.
    pub fn spec(
        &self,
        uid: Option<u32>,
        network: NetworkMode,
        limits: SandboxLimits,
    ) -> SandboxSpec {
        let path = |p: &Path| Some(p.display().to_string());
        SandboxSpec {
            backend: self.backend,
            bwrap: self.bwrap.as_deref().and_then(path),
            uid,
            gid: uid,
            network,
            stage_dir: path(&self.stage_dir),
            helper: self.helper.as_deref().and_then(path),
            gateway_dir: path(&self.gateway_dir),
            proxy_dir: path(&self.proxy_dir),
            gateway_port: self.gateway_port,
            run_dir: path(&self.run_dir),
            limits,
            cgroup: self.cgroup.clone(),
        }
    }
}

/// Makes the files directly in the data folder (the SQLite database and its journals) private
/// to Karta's user.
fn close_files(data_dir: &Path) -> Result<(), SandboxError> {
    for entry in std::fs::read_dir(data_dir)
        .map_err(io_at(data_dir))?
        .flatten()
    {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(io_at(&path))?;
        }
    }
    Ok(())
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The first folder above `dir` that other users cannot enter.
fn closed_ancestor(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().skip(1).find_map(|a| {
        let mode = std::fs::metadata(a).ok()?.permissions().mode();
        (mode & 0o001 == 0).then(|| a.to_path_buf())
    })
}

/// Makes one throw-away sandbox, to fail at start rather than at the first turn.
fn probe(bwrap: &Path, uid: Option<u32>) -> Result<(), SandboxError> {
    use std::os::unix::process::CommandExt;
    let mut c = std::process::Command::new(bwrap);
    c.arg("--unshare-user");
    if let Some(uid) = uid {
        c.args(["--uid", &uid.to_string(), "--gid", &uid.to_string()]);
    }
    c.args([
        "--unshare-pid",
        "--unshare-net",
        "--die-with-parent",
        "--cap-drop",
        "ALL",
        "--ro-bind",
        "/usr",
        "/usr",
    ]);
    for top in ["/lib", "/lib64", "/bin"] {
        match std::fs::read_link(top) {
            Ok(target) => {
                c.arg("--symlink").arg(target).arg(top);
            }
            Err(_) if Path::new(top).is_dir() => {
                c.args(["--ro-bind", top, top]);
            }
            Err(_) => {}
        }
    }
    c.args([
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--",
        "/usr/bin/env",
        "true",
    ])
    .env_clear()
    .current_dir("/")
    .stdin(std::process::Stdio::null());
    if let Some(uid) = uid {
        // SAFETY: set*id system calls in the child before exec.
        unsafe {
            c.pre_exec(move || {
                if libc::setgroups(0, std::ptr::null()) == -1
                    || libc::setresgid(uid, uid, uid) == -1
                    || libc::setresuid(uid, uid, uid) == -1
                    || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = c.output().map_err(|e| SandboxError::Broken {
        path: bwrap.to_path_buf(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SandboxError::Broken {
            path: bwrap.to_path_buf(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

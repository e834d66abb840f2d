//! The one launcher for harness processes.
//!
//! A driver builds an ordinary [`Command`] (program, arguments, environment, working folder) and
//! hands it to [`launch`] with the [`SandboxSpec`] of its turn request. The launcher decides how
//! it runs:
//!
//! * `bubblewrap`: as the tenant's host uid (never root), in new user, PID, IPC, UTS, cgroup,
//!   mount and network namespaces, all capabilities dropped, with an environment of exactly the
//!   variables the driver set. The sandbox sees `/usr` read-only, a fresh `/proc`, `/dev` and
//!   `/tmp`, the session's workspace and harness home (writable, at their host paths), the
//!   harness executable at `/opt/karta/bin/`, and, by network mode, the model gateway's socket.
//!   Nothing of Karta's data folder, database, plugins or other sessions exists in it.
//! * `none`: the command as it is, in a PID namespace of its own where the machine allows one.
//!
//! Either way the process gets its own cgroup (memory and process limits), rlimits, a process
//! group, and dies with the host. [`Harness::kill`] ends the whole tree.
//!
//! Another backend (a microVM, a Kubernetes pod) would be another arm of [`launch`]: it receives
//! the same command and folders, and must give back a process whose stdio and control socket
//! behave the same.

mod cgroup;
mod detect;

pub mod tenant_fs;

pub use detect::detect_cgroup;

pub use cgroup::{sweep_stale as sweep_stale_cgroups, LimitHit};
pub use karta_driver_api::sandbox::*;

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// What the launcher needs besides the command.
#[derive(Clone, Debug, Default)]
pub struct LaunchOptions {
    /// The session's workspace (writable inside).
    pub workspace: PathBuf,
    /// The harness's home (writable inside).
    pub home: PathBuf,
    /// A loopback port the harness serves on, to be reached from the host.
    pub expose_port: Option<u16>,
    /// Pipe stdin (else `/dev/null`).
    pub stdin: bool,
    /// Pipe stdout (else `/dev/null`).
    pub stdout: bool,
    /// Pipe stderr (else `/dev/null`).
    pub stderr: bool,
}

/// How the host reaches a harness that serves on a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A loopback TCP port on the host.
    Tcp(u16),
    /// A Unix socket on the host, forwarded to the port inside the sandbox.
    Unix(PathBuf),
}

/// A running harness process.
#[derive(Debug)]
pub struct Harness {
    child: Child,
    group: Option<cgroup::Group>,
    endpoint: Option<Endpoint>,
    control_dir: Option<PathBuf>,
    limits: SandboxLimits,
    reaped: bool,
}

impl Harness {
    /// The process (for its pipes and pid).
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Where the harness's exposed port is reached, if it exposes one.
    pub fn endpoint(&self) -> Option<&Endpoint> {
        self.endpoint.as_ref()
    }

    /// Kills the harness with every process it started. The caller still waits.
    pub fn kill(&mut self) {
        if !self.reaped {
            crate::process::kill_tree(&mut self.child);
        }
        if let Some(g) = &self.group {
            g.kill();
        }
    }

    /// Waits for the harness to exit.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait();
        self.reaped = status.is_ok();
        status
    }

    /// Whether it has exited (and its status), without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        let status = self.child.try_wait();
        if matches!(status, Ok(Some(_))) {
            self.reaped = true;
        }
        status
    }

    /// A sentence for the user when the harness ran into one of its limits, e.g. `the harness
    /// ran out of its memory limit (512 MiB)`.
    pub fn limit_message(&self) -> Option<String> {
        let hit = self.group.as_ref()?.limit_hit()?;
        Some(match hit {
            LimitHit::Memory => format!(
                "the harness reached its memory limit ({} MiB) and a process was killed",
                self.limits.memory_mb.unwrap_or_default()
            ),
            LimitHit::Processes => format!(
                "the harness reached its process limit ({}) and a process could not start",
                self.limits.processes.unwrap_or_default()
            ),
        })
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if !self.reaped && !matches!(self.child.try_wait(), Ok(Some(_))) {
            self.kill();
            let _ = self.child.wait();
        }
        if let Some(g) = &mut self.group {
            g.kill();
            g.remove();
        }
        if let Some(d) = &self.control_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Starts `cmd` as a harness under `spec`. The command's explicit environment is the whole
/// environment the harness gets; its working folder defaults to the workspace.
pub fn launch(spec: &SandboxSpec, cmd: Command, opts: &LaunchOptions) -> io::Result<Harness> {
    let program = PathBuf::from(cmd.get_program());
    let args: Vec<OsString> = cmd.get_args().map(OsStr::to_os_string).collect();
    let envs: Vec<(OsString, OsString)> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_os_string(), v?.to_os_string())))
        .collect();
    let cwd = cmd
        .get_current_dir()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| opts.workspace.clone());
    drop(cmd);

    if spec.backend == SandboxBackend::Bubblewrap {
        if let Some(owner) = spec.owner() {
            // A fresh workspace (copied by the host) and home become the tenant's.
            for dir in [&opts.workspace, &opts.home] {
                std::fs::create_dir_all(dir)?;
                tenant_fs::chown_tree(dir, owner)?;
            }
        }
    }
    let mut group = cgroup::Group::create(spec.cgroup.as_ref(), &spec.limits)?;
    let mut control_dir = None;
    let mut control_listener = None;
    let (mut outer, endpoint) = match spec.backend {
        SandboxBackend::None => {
            let mut c = crate::process::harness_command(&program);
            c.args(&args).current_dir(&cwd);
            (c, opts.expose_port.map(Endpoint::Tcp))
        }
        SandboxBackend::Bubblewrap => {
            let parts = bwrap_command(spec, &program, &args, &cwd, opts)?;
            control_dir = parts.control_dir;
            control_listener = parts.control_listener;
            (parts.command, parts.endpoint)
        }
    };
    outer.env_clear().envs(envs);
    let pipe = |yes: bool| if yes { Stdio::piped() } else { Stdio::null() };
    outer
        .stdin(pipe(opts.stdin))
        .stdout(pipe(opts.stdout))
        .stderr(pipe(opts.stderr));

    let setup = ChildSetup {
        cgroup_fds: group.as_ref().map(|g| g.procs_fds()).unwrap_or_default(),
        uid: spec
            .uid
            .filter(|_| spec.backend == SandboxBackend::Bubblewrap),
        gid: spec
            .gid
            .filter(|_| spec.backend == SandboxBackend::Bubblewrap),
        rlimits: rlimits(&spec.limits),
        keep_fd: control_listener.as_ref().map(|l| l.as_raw_fd()),
    };
    // SAFETY: the closure makes only async-signal-safe system calls (write, setrlimit,
    // setgroups, setresgid, setresuid, prctl) on values prepared before the fork.
    unsafe {
        outer.pre_exec(move || setup.apply());
    }
    let spawned = crate::process::spawn_tied(outer);
    // The sandbox holds its own copy of the control listener now.
    drop(control_listener);
    if let Some(g) = &mut group {
        g.started();
    }
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            if let Some(g) = &mut group {
                g.remove();
            }
            if let Some(d) = &control_dir {
                let _ = std::fs::remove_dir_all(d);
            }
            return Err(e);
        }
    };
    Ok(Harness {
        child,
        group,
        endpoint,
        control_dir,
        limits: spec.limits.clone(),
        reaped: false,
    })
}

/// An rlimit resource, as libc types it here.
type Resource = libc::__rlimit_resource_t;

/// What the child does between fork and exec.
struct ChildSetup {
    cgroup_fds: Vec<i32>,
    uid: Option<u32>,
    gid: Option<u32>,
    rlimits: Vec<(Resource, u64)>,
    /// The one descriptor (besides stdio) the sandbox inherits: its control listener.
    keep_fd: Option<i32>,
}

impl ChildSetup {
    fn apply(&self) -> io::Result<()> {
        let check = |r: libc::c_int| {
            if r == -1 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY (whole block): plain system calls on this (child) process.
        unsafe {
            // Nothing Karta holds open (a database connection being set up by another thread,
            // say) reaches the harness: every descriptor past stdio closes on exec.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if let Some(fd) = self.keep_fd {
                check(libc::fcntl(fd, libc::F_SETFD, 0))?;
            }
            for fd in &self.cgroup_fds {
                // "0" moves the writing process.
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (resource, value) in &self.rlimits {
                let lim = libc::rlimit {
                    rlim_cur: *value,
                    rlim_max: *value,
                };
                check(libc::setrlimit(*resource, &lim))?;
            }
            if let (Some(uid), Some(gid)) = (self.uid, self.gid) {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setresgid(gid, gid, gid))?;
                check(libc::setresuid(uid, uid, uid))?;
            }
            // No setuid binary may give back what was dropped.
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        Ok(())
    }
}

fn rlimits(l: &SandboxLimits) -> Vec<(Resource, u64)> {
    let mut out = Vec::new();
    if let Some(n) = l.open_files {
        out.push((libc::RLIMIT_NOFILE, n));
    }
    if let Some(s) = l.cpu_seconds {
        out.push((libc::RLIMIT_CPU, s));
    }
    if let Some(mb) = l.file_size_mb {
        out.push((libc::RLIMIT_FSIZE, mb * 1024 * 1024));
    }
    out
}

fn missing(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("the sandbox spec has no {what}"),
    )
}

/// What [`bwrap_command`] makes.
struct BwrapParts {
    command: Command,
    endpoint: Option<Endpoint>,
    /// Root's folder holding the control socket (removed with the harness).
    control_dir: Option<PathBuf>,
    /// The control socket's listener, handed to the sandbox's helper by descriptor.
    control_listener: Option<std::os::unix::net::UnixListener>,
}

fn bwrap_command(
    spec: &SandboxSpec,
    program: &Path,
    args: &[OsString],
    cwd: &Path,
    opts: &LaunchOptions,
) -> io::Result<BwrapParts> {
    let bwrap = spec.bwrap.as_deref().ok_or_else(|| missing("bwrap"))?;
    let stage_dir = spec
        .stage_dir
        .as_deref()
        .ok_or_else(|| missing("stage_dir"))?;
    let program = resolve_program(program)?;
    let staged = stage(Path::new(stage_dir), &program)?;
    let name = staged_name(&program);
    let inner_program = format!("{SANDBOX_BIN}/{name}");

    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&OsStr]| a.extend(items.iter().map(|s| s.to_os_string()));
    push(&["--unshare-user".as_ref()]);
    if let (Some(uid), Some(gid)) = (spec.uid, spec.gid) {
        let (u, g) = (uid.to_string(), gid.to_string());
        push(&["--uid".as_ref(), u.as_ref(), "--gid".as_ref(), g.as_ref()]);
    }
    for f in [
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--unshare-net",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--ro-bind",
        "/usr",
        "/usr",
    ] {
        push(&[f.as_ref()]);
    }
    for top in ["/lib", "/lib64", "/lib32", "/bin", "/sbin"] {
        let p = Path::new(top);
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(p) {
                    push(&["--symlink".as_ref(), target.as_os_str(), top.as_ref()]);
                }
            }
            Ok(m) if m.is_dir() => push(&["--ro-bind".as_ref(), top.as_ref(), top.as_ref()]),
            _ => {}
        }
    }
    push(&[
        "--dev".as_ref(),
        "/dev".as_ref(),
        "--proc".as_ref(),
        "/proc".as_ref(),
        "--tmpfs".as_ref(),
        "/tmp".as_ref(),
    ]);
    if spec.network == NetworkMode::Full {
        // TLS roots for HTTPS through the egress proxy (names are resolved by the proxy).
        for etc in ["/etc/ssl", "/etc/ca-certificates", "/etc/pki"] {
            push(&["--ro-bind-try".as_ref(), etc.as_ref(), etc.as_ref()]);
        }
    }
    for dir in [&opts.workspace, &opts.home] {
        push(&["--bind".as_ref(), dir.as_os_str(), dir.as_os_str()]);
    }
    push(&[
        "--ro-bind".as_ref(),
        staged.as_os_str(),
        inner_program.as_ref(),
    ]);

    let mut helper_args: Vec<String> = Vec::new();
    if spec.network != NetworkMode::None {
        let dir = spec
            .gateway_dir
            .as_deref()
            .ok_or_else(|| missing("gateway_dir"))?;
        push(&[
            "--ro-bind".as_ref(),
            dir.as_ref(),
            SANDBOX_GATEWAY_DIR.as_ref(),
        ]);
        helper_args.extend([
            "--tcp".into(),
            format!(
                "127.0.0.1:{}={SANDBOX_GATEWAY_DIR}/{GATEWAY_SOCKET}",
                spec.gateway_port
            ),
        ]);
    }
    if spec.network == NetworkMode::Full {
        let dir = spec
            .proxy_dir
            .as_deref()
            .ok_or_else(|| missing("proxy_dir"))?;
        push(&[
            "--ro-bind".as_ref(),
            dir.as_ref(),
            SANDBOX_PROXY_DIR.as_ref(),
        ]);
        helper_args.extend([
            "--tcp".into(),
            format!("127.0.0.1:{SANDBOX_PROXY_PORT}={SANDBOX_PROXY_DIR}/{PROXY_SOCKET}"),
        ]);
    }
    let mut endpoint = None;
    let mut control_dir = None;
    let mut control_listener = None;
    if let Some(port) = opts.expose_port {
        // The host binds the socket in a folder only it can write and passes the listener in:
        // no path the tenant controls is ever resolved by the host.
        let run = spec.run_dir.as_deref().ok_or_else(|| missing("run_dir"))?;
        let dir = control_folder(Path::new(run))?;
        let socket = dir.join(CONTROL_SOCKET);
        let listener = std::os::unix::net::UnixListener::bind(&socket)?;
        helper_args.extend([
            "--unix-fd".into(),
            format!("{}=127.0.0.1:{port}", listener.as_raw_fd()),
        ]);
        endpoint = Some(Endpoint::Unix(socket));
        control_dir = Some(dir);
        control_listener = Some(listener);
    }
    let inner_helper = format!("{SANDBOX_BIN}/karta-sandbox");
    if !helper_args.is_empty() {
        let helper = spec.helper.as_deref().ok_or_else(|| missing("helper"))?;
        push(&["--ro-bind".as_ref(), helper.as_ref(), inner_helper.as_ref()]);
    }
    push(&["--chdir".as_ref(), cwd.as_os_str(), "--".as_ref()]);
    if !helper_args.is_empty() {
        a.push(inner_helper.into());
        a.push("sandbox-init".into());
        a.extend(helper_args.into_iter().map(OsString::from));
        a.push("--".into());
    }
    a.push(inner_program.into());
    a.extend(args.iter().cloned());

    let mut command = Command::new(bwrap);
    command.args(a).current_dir("/");
    Ok(BwrapParts {
        command,
        endpoint,
        control_dir,
        control_listener,
    })
}

/// A fresh folder for one harness's control socket, private to the host.
fn control_folder(run: &Path) -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = run.join(format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// The executable a command names: a path, or a name looked up on `PATH`.
fn resolve_program(program: &Path) -> io::Result<PathBuf> {
    let found = if program.components().count() > 1 {
        Some(program.to_path_buf())
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
    };
    let found = found.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} not found", program.display()),
        )
    })?;
    std::fs::canonicalize(&found)
}

fn staged_name(program: &Path) -> String {
    program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "harness".into())
}

/// Makes `program` reachable for the sandbox user: a hard link (or, across file systems, a
/// copy) in `dir`, named by the file's identity so a new version gets a new entry. One staging
/// at a time per process, into a temporary name nobody else uses, so concurrent launches can
/// never copy onto a link to the original.
pub fn stage(dir: &Path, program: &Path) -> io::Result<PathBuf> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let meta = std::fs::metadata(program)?;
    let name = format!(
        "{}-{}-{}-{}-{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        staged_name(program)
    );
    let to = dir.join(name);
    let _one = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if to.is_file() {
        return Ok(to);
    }
    let tmp = dir.join(format!(
        ".stage.{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let readable = meta.mode() & 0o005 == 0o005;
    if !(readable && std::fs::hard_link(program, &tmp).is_ok()) {
        use std::os::unix::fs::OpenOptionsExt;
        let mut from = std::fs::File::open(program)?;
        // A new file: never opened through an existing name (or link).
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        io::copy(&mut from, &mut out)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::rename(&tmp, &to)?;
    Ok(to)
}

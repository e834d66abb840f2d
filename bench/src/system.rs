//! The machine and the processes the bench starts: child guards, RSS, ports, limits.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Output};

use anyhow::{bail, Context};

/// A child process that is killed (and reaped) when the guard is dropped, also on error or panic.
pub struct ChildGuard {
    child: Child,
    name: &'static str,
}

impl ChildGuard {
    /// Guards `child`, called `name` in messages.
    pub fn new(child: Child, name: &'static str) -> Self {
        ChildGuard { child, name }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has already exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self
            .child
            .try_wait()
            .with_context(|| format!("cannot poll {}", self.name))?
        {
            Some(status) => bail!("{} exited early: {status}", self.name),
            None => Ok(()),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes every `KARTA_*` variable from a child's environment, so only the bench's settings apply.
pub fn scrub_karta_env(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("KARTA_") {
            cmd.env_remove(&k);
        }
    }
    cmd
}

/// Runs a command to completion; fails with its stderr when it does not succeed.
pub fn run_checked(cmd: &mut Command, what: &str) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// A free loopback address (the port is released before use; collisions are unlikely).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("cannot find a free loopback port")
}

/// The resident set size of a process, in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// Memory the kernel considers available, in KiB (`MemAvailable` of `/proc/meminfo`).
pub fn mem_available_kib() -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("cannot read /proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no MemAvailable in /proc/meminfo")
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (children inherit it); returns the new limit.
pub fn raise_nofile_limit() -> anyhow::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    Ok(lim.rlim_cur)
}

/// One line describing the machine: cores, CPU model, memory, kernel.
pub fn machine_description() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_string(), |(_, m)| m.trim().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores (nproc), {model}, {:.1} GiB memory, Linux {}",
        mem_kib as f64 / (1024.0 * 1024.0),
        kernel.trim()
    )
}

/// Fails with a hint when a required file is missing.
pub fn require_file(path: &Path, what: &str) -> anyhow::Result<()> {
    if !path.is_file() {
        bail!(
            "{what} not found at {} (build it with `cargo build --release -p karta -p karta-driver-echo`, or pass its path)",
            path.display()
        );
    }
    Ok(())
}

//! One cgroup per harness process: its memory and process limits, a way to kill everything in
//! it, and whether a limit was hit (for the error the turn ends with).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use karta_driver_api::sandbox::{CgroupSpec, SandboxLimits};

/// A limit a harness ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitHit {
    /// The kernel killed a process for memory.
    Memory,
    /// A fork was refused.
    Processes,
}

#[derive(Debug)]
enum Kind {
    V1 {
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
    V2(PathBuf),
}

/// A cgroup made for one harness process.
#[derive(Debug)]
pub struct Group {
    kind: Kind,
    /// `cgroup.procs` files, open until the child has moved itself in.
    procs: Vec<OwnedFd>,
}

/// A name no other group has: the process id and a counter, plus the time, because a process
/// killed with SIGKILL leaves its (empty) groups behind and a later process may get its id.
fn unique_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "karta-{}-{}-{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes the groups that processes killed before they could clean up left behind: those
/// whose creating process (the id in their name) is gone. A group still holding a process
/// cannot be removed and stays. Returns how many went.
pub fn sweep_stale(spec: &CgroupSpec) -> usize {
    let parents: Vec<&str> = match spec {
        CgroupSpec::V1 { memory, pids } => [memory.as_deref(), pids.as_deref()]
            .into_iter()
            .flatten()
            .collect(),
        CgroupSpec::V2 { parent } => vec![parent.as_str()],
    };
    let mut removed = 0;
    for parent in parents {
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("karta-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let alive = Path::new("/proc").join(pid.to_string()).exists();
            if !alive && fs::remove_dir(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    fs::write(dir.join(file), value)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))
}

fn open_procs(dir: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(dir.join("cgroup.procs"))?;
    Ok(f.into())
}

impl Group {
    /// Makes the group and sets its limits; `None` when there is no hierarchy or nothing to
    /// limit.
    pub fn create(spec: Option<&CgroupSpec>, limits: &SandboxLimits) -> io::Result<Option<Group>> {
        let Some(spec) = spec else { return Ok(None) };
        if limits.memory_mb.is_none() && limits.processes.is_none() {
            return Ok(None);
        }
        let name = unique_name();
        let mut group = match spec {
            CgroupSpec::V1 { memory, pids } => {
                let memory = match (memory, limits.memory_mb) {
                    (Some(parent), Some(mb)) => {
                        let dir = Path::new(parent).join(&name);
                        fs::create_dir(&dir)?;
                        let bytes = (mb * 1024 * 1024).to_string();
                        write(&dir, "memory.limit_in_bytes", &bytes)?;
                        // No swapping past the limit either, where swap accounting exists.
                        let _ = fs::write(dir.join("memory.memsw.limit_in_bytes"), &bytes);
                        Some(dir)
                    }
                    _ => None,
                };
                let pids = match (pids, limits.processes) {
                    (Some(parent), Some(n)) => {
                        let dir = Path::new(parent).join(&name);
                        fs::create_dir(&dir)?;
                        write(&dir, "pids.max", &n.to_string())?;
                        Some(dir)
                    }
                    _ => None,
                };
                Group {
                    kind: Kind::V1 { memory, pids },
                    procs: Vec::new(),
                }
            }
            CgroupSpec::V2 { parent } => {
                let dir = Path::new(parent).join(&name);
                fs::create_dir(&dir)?;
                if let Some(mb) = limits.memory_mb {
                    write(&dir, "memory.max", &(mb * 1024 * 1024).to_string())?;
                    let _ = fs::write(dir.join("memory.swap.max"), "0");
                }
                if let Some(n) = limits.processes {
                    write(&dir, "pids.max", &n.to_string())?;
                }
                Group {
                    kind: Kind::V2(dir),
                    procs: Vec::new(),
                }
            }
        };
        for dir in group.dirs() {
            let fd = open_procs(&dir);
            match fd {
                Ok(fd) => group.procs.push(fd),
                Err(e) => {
                    group.remove();
                    return Err(e);
                }
            }
        }
        Ok(Some(group))
    }

    fn dirs(&self) -> Vec<PathBuf> {
        match &self.kind {
            Kind::V1 { memory, pids } => memory.iter().chain(pids.iter()).cloned().collect(),
            Kind::V2(d) => vec![d.clone()],
        }
    }

    /// Raw descriptors of the `cgroup.procs` files, for the child to write itself into (writing
    /// `0` moves the writer) between fork and exec.
    pub fn procs_fds(&self) -> Vec<i32> {
        self.procs.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// Closes the `cgroup.procs` files once the child is in.
    pub fn started(&mut self) {
        self.procs.clear();
    }

    /// Which limit was hit, if any.
    pub fn limit_hit(&self) -> Option<LimitHit> {
        let count = |path: PathBuf, key: &str| -> u64 {
            fs::read_to_string(path)
                .ok()
                .and_then(|s| {
                    s.lines().find_map(|l| {
                        let (k, v) = l.split_once(' ')?;
                        (k == key).then(|| v.trim().parse().ok()).flatten()
                    })
                })
                .unwrap_or(0)
        };
        match &self.kind {
            Kind::V1 { memory, pids } => {
                if memory
                    .as_ref()
                    .is_some_and(|d| count(d.join("memory.oom_control"), "oom_kill") > 0)
                {
                    return Some(LimitHit::Memory);
                }
                if pids
                    .as_ref()
                    .is_some_and(|d| count(d.join("pids.events"), "max") > 0)
                {
                    return Some(LimitHit::Processes);
                }
                None
            }
            Kind::V2(d) => {
                if count(d.join("memory.events"), "oom_kill") > 0 {
                    Some(LimitHit::Memory)
                } else if count(d.join("pids.events"), "max") > 0 {
                    Some(LimitHit::Processes)
                } else {
                    None
                }
            }
        }
    }

    /// Kills every process in the group (a second layer under the PID namespace).
    pub fn kill(&self) {
        if let Kind::V2(d) = &self.kind {
            if fs::write(d.join("cgroup.kill"), "1").is_ok() {
                return;
            }
        }
        for dir in self.dirs() {
            for _ in 0..3 {
                let Ok(list) = fs::read_to_string(dir.join("cgroup.procs")) else {
                    break;
                };
                let pids: Vec<i32> = list.lines().filter_map(|l| l.trim().parse().ok()).collect();
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    // SAFETY: signals a process listed in a cgroup made for this harness alone.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
    }

    /// Removes the group's folders, waiting briefly for dying processes to leave them.
    pub fn remove(&mut self) {
        self.procs.clear();
        let deadline = Instant::now() + Duration::from_secs(2);
        for dir in self.dirs() {
            while fs::remove_dir(&dir).is_err() && dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

impl Drop for Group {
    /// A group is never left behind, also when the launch failed after making it.
    fn drop(&mut self) {
        self.kill();
        self.remove();
    }
}

#[cfg(test)]
mod sweep_tests {
    use super::*;

    #[test]
    fn only_groups_of_processes_that_are_gone_are_swept() {
        let root = tempfile::tempdir().unwrap();
        let dead = root.path().join(format!("karta-{}-0-1", u32::MAX - 1));
        let live = root
            .path()
            .join(format!("karta-{}-0-1", std::process::id()));
        let other = root.path().join("someone-else");
        for d in [&dead, &live, &other] {
            fs::create_dir(d).unwrap();
        }
        let spec = CgroupSpec::V2 {
            parent: root.path().display().to_string(),
        };
        assert_eq!(sweep_stale(&spec), 1);
        assert!(!dead.exists() && live.exists() && other.exists());
        assert!(unique_name() != unique_name());
    }
}

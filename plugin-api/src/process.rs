//! Harness processes that cannot outlive the host.
//!
//! A child is started with `PR_SET_PDEATHSIG = SIGKILL`, so when the host process dies — even
//! by `kill -9` — its harness processes die with it instead of lingering (each `opencode serve`
//! holds hundreds of megabytes). The kernel sends that signal when the *thread* that started the
//! child ends, so every child is started from one thread that lives as long as the library.
//!
//! Each child also leads a process group of its own, so [`kill_tree`] stops the harness with
//! every tool process it started (a shell, a dev server) instead of orphaning them.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

type Job = (Command, Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        let started = std::thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_here(&mut cmd));
                }
            });
        if let Err(e) = started {
            // Without the thread every spawn reports this error below (the receiver is gone).
            eprintln!("cannot start the harness spawner thread: {e}");
        }
        Mutex::new(tx)
    })
}

#[cfg(target_os = "linux")]
fn spawn_here(cmd: &mut Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the calling (child) process.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            // A group of its own: its children can be killed with it.
            if libc::setpgid(0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

#[cfg(not(target_os = "linux"))]
fn spawn_here(cmd: &mut Command) -> io::Result<Child> {
    cmd.spawn()
}

/// Starts `cmd` so that it is killed when the host process dies.
pub fn spawn_tied(cmd: Command) -> io::Result<Child> {
    let (tx, rx) = channel();
    spawner()
        .lock()
        .map_err(|_| io::Error::other("harness spawner poisoned"))?
        .send((cmd, tx))
        .map_err(|_| io::Error::other("the harness spawner thread is not running"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the harness spawner thread stopped"))?
}

/// Kills a child started by [`spawn_tied`] and every process of its group (its tool
/// subprocesses). The caller still waits for the child.
pub fn kill_tree(child: &mut Child) {
    #[cfg(target_os = "linux")]
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: signals the group this child leads (set up in spawn_here); no memory touched.
        unsafe {
            libc::killpg(pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
}

/// A warm harness process (or server) a driver keeps per session.
pub trait Warm: Send + Sync + 'static {
    /// Marks it retired when it has been idle past its timeout; says whether it did. Must be
    /// decided under the same lock a new turn claims it with, so the two cannot race.
    fn retire_if_idle(&self) -> bool;
    /// Stops it (it is already out of the driver's map).
    fn stop(&self);
}

/// The per-session map a driver keeps its warm processes in.
pub type WarmMap<T> = Arc<Mutex<HashMap<String, Arc<T>>>>;

/// Starts a thread that stops idle processes of `map` every half second, until the map is gone.
pub fn spawn_idle_reaper<T: Warm>(name: &str, map: &WarmMap<T>) -> io::Result<()> {
    let weak: Weak<Mutex<HashMap<String, Arc<T>>>> = Arc::downgrade(map);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            let Some(map) = weak.upgrade() else { return };
            let idle: Vec<Arc<T>> = {
                let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
                let ids: Vec<String> = m
                    .iter()
                    .filter(|(_, w)| w.retire_if_idle())
                    .map(|(k, _)| k.clone())
                    .collect();
                ids.iter().filter_map(|k| m.remove(k)).collect()
            };
            for w in idle {
                w.stop();
            }
        })
        .map(|_| ())
}

/// An optional non-empty string setting; any other type is an error naming the key.
pub fn string_setting(settings: &serde_json::Value, key: &str) -> Result<Option<String>, String> {
    match settings.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(other) => Err(format!("settings.{key} must be a string, got {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawns_from_any_thread() {
        let out = std::thread::spawn(|| {
            let mut c = Command::new("true");
            spawn_tied(std::mem::replace(&mut c, Command::new("true"))).and_then(|mut ch| ch.wait())
        })
        .join()
        .unwrap()
        .unwrap();
        assert!(out.success());
    }
}

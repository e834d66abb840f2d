//! Harness processes that cannot outlive the host.
//!
//! A child is started with `PR_SET_PDEATHSIG = SIGKILL`, so when the host process dies — even
//! by `kill -9` — its harness processes die with it instead of lingering (each `opencode serve`
//! holds hundreds of megabytes). The kernel sends that signal when the *thread* that started the
//! child ends, so every child is started from one thread that lives as long as the library.
//!
//! Each child also leads a process group of its own, so [`kill_tree`] stops the harness with
//! every tool process it started (a shell, a dev server) instead of orphaning them. Where the
//! machine allows it, [`harness_command`] also starts the harness in a PID namespace of its own:
//! then even a tool process that left the group (a shell started with `setsid`, as Claude Code's
//! Bash tool does) dies with the harness, because the kernel ends a PID namespace with its
//! first process.
//!
//! These are the launcher's building blocks; drivers start processes only through
//! [`crate::sandbox::launch`], which uses them and adds the sandbox.

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
pub(crate) fn spawn_tied(cmd: Command) -> io::Result<Child> {
    let (tx, rx) = channel();
    spawner()
        .lock()
        .map_err(|_| io::Error::other("harness spawner poisoned"))?
        .send((cmd, tx))
        .map_err(|_| io::Error::other("the harness spawner thread is not running"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the harness spawner thread stopped"))?
}

/// `unshare`, when it can give a harness a PID namespace here (probed once: it needs the right
/// to create one, i.e. root or user namespaces).
fn pid_namespace_launcher() -> Option<&'static std::path::Path> {
    static LAUNCHER: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    LAUNCHER
        .get_or_init(|| {
            let path = ["/usr/bin/unshare", "/bin/unshare"]
                .into_iter()
                .map(std::path::PathBuf::from)
                .find(|p| p.is_file())?;
            let ok = Command::new(&path)
                .args(["--pid", "--fork", "--kill-child", "--", "true"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            ok.then_some(path)
        })
        .as_deref()
}

/// A command that runs `program` as a harness: in a PID namespace of its own where the machine
/// allows it (every process it starts dies with it), else directly. Add arguments, environment
/// and working folder as usual, then start it with [`spawn_tied`].
pub(crate) fn harness_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    match pid_namespace_launcher() {
        Some(unshare) => {
            let mut c = Command::new(unshare);
            // --kill-child: the harness gets SIGKILL when the launcher dies (even by SIGKILL),
            // and the namespace, with everything in it, ends with the harness.
            c.args(["--pid", "--fork", "--kill-child", "--"])
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Kills a child started by [`spawn_tied`] and every process of its group (its tool
/// subprocesses). The caller still waits for the child.
pub(crate) fn kill_tree(child: &mut Child) {
    // Only while the child is not yet reaped: until then its pid (the group's id) cannot be
    // reused, so the signal cannot reach another harness's group. (An exited harness's PID
    // namespace has taken its processes with it already.)
    #[cfg(target_os = "linux")]
    if matches!(child.try_wait(), Ok(None)) {
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: signals the group this live child leads (set up in spawn_here).
            unsafe {
                libc::killpg(pid, libc::SIGKILL);
            }
        }
    }
    let _ = child.kill();
}

/// Longest line read from a harness by [`bounded_lines`] (32 MiB): a harness is hostile code,
/// and a line without an end must not grow the host without bound.
pub const MAX_LINE: usize = 32 << 20;

/// The lines of `r` (without their ends), each at most `max` bytes: a longer line is skipped
/// whole. Invalid UTF-8 is replaced. Ends at end of input or on a read error.
pub fn bounded_lines<R: std::io::Read>(r: R, max: usize) -> impl Iterator<Item = String> {
    let mut r = std::io::BufReader::new(r);
    std::iter::from_fn(move || loop {
        let mut line = Vec::new();
        let mut overlong = false;
        loop {
            let buf = match std::io::BufRead::fill_buf(&mut r) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
            };
            if buf.is_empty() {
                if line.is_empty() && !overlong {
                    return None;
                }
                break;
            }
            let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            if !overlong {
                if line.len() + chunk.len() > max {
                    overlong = true;
                    line = Vec::new();
                } else {
                    line.extend_from_slice(chunk);
                }
            }
            let used = done.unwrap_or(buf.len());
            std::io::BufRead::consume(&mut r, used);
            if done.is_some() {
                break;
            }
        }
        if overlong {
            continue;
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        return Some(String::from_utf8_lossy(&line).into_owned());
    })
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
    fn long_lines_are_skipped_and_the_rest_read() {
        let input = format!("one\n{}\ntwo\r\nthree", "x".repeat(100));
        let lines: Vec<String> = bounded_lines(input.as_bytes(), 10).collect();
        assert_eq!(lines, vec!["one", "two", "three"]);
        let none: Vec<String> = bounded_lines(&b""[..], 10).collect();
        assert!(none.is_empty());
    }

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

    #[test]
    fn a_harness_dies_with_every_process_it_started_even_detached_ones() {
        if pid_namespace_launcher().is_none() {
            // The whole-tree guarantee needs a PID namespace; CI has one (it runs as root).
            assert!(
                std::env::var("CI").is_err(),
                "no PID namespace for harnesses on this machine"
            );
            return;
        }
        // A duration no other process on the machine uses, to find exactly this one.
        let marker = format!(
            "300.{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(1)
        );
        let mut c = harness_command("sh");
        // A grandchild in a session (and group) of its own, as a tool's shell would be.
        c.args([
            "-c",
            &format!("setsid sleep {marker} >/dev/null 2>&1 & echo started; exec sleep 301"),
        ])
        .stdout(std::process::Stdio::piped());
        let mut child = spawn_tied(c).unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "started");
        let running = |arg: &str| {
            std::fs::read_dir("/proc").unwrap().any(|e| {
                e.ok()
                    .and_then(|e| std::fs::read(e.path().join("cmdline")).ok())
                    .is_some_and(|c| c == format!("sleep\0{arg}\0").as_bytes())
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !running(&marker) {
            assert!(
                std::time::Instant::now() < deadline,
                "the detached process never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        kill_tree(&mut child);
        let _ = child.wait();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while running(&marker) {
            assert!(
                std::time::Instant::now() < deadline,
                "the detached process survived"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

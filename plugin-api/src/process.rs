//! Harness processes that cannot outlive the host.
//!
//! A child is started with `PR_SET_PDEATHSIG = SIGKILL`, so when the host process dies — even
//! by `kill -9` — its harness processes die with it instead of lingering (each `opencode serve`
//! holds hundreds of megabytes). The kernel sends that signal when the *thread* that started the
//! child ends, so every child is started from one thread that lives as long as the library.

use std::io;
use std::process::{Child, Command};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};

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

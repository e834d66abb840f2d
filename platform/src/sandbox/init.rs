//! `karta sandbox-init`: the first process inside a sandbox with a network of its own.
//!
//! The sandbox has only loopback. This helper listens on loopback ports inside it and forwards
//! each connection to a Unix socket Karta bound into the sandbox (the model gateway, the egress
//! proxy), and it forwards a Unix socket in a bound folder to a port inside (a harness server
//! such as `opencode serve`, reached by the host that way). Then it runs the harness, passes its
//! exit status on, and ends: the sandbox's PID namespace takes every other process with it.
//!
//! `karta sandbox-init [--tcp HOST:PORT=SOCKET]... [--unix SOCKET=HOST:PORT]... -- PROGRAM ARGS...`
//!
//! Listeners are up before the harness starts, so its first model call cannot race them.

use std::ffi::OsString;
use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Connections forwarded at once per listener; more are closed at once.
const MAX_CONNECTIONS: usize = 128;

/// The parsed command line.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    tcp: Vec<(String, String)>,
    unix: Vec<(String, String)>,
    unix_fd: Vec<(i32, String)>,
    program: Vec<OsString>,
}

fn parse(args: &[OsString]) -> Result<Plan, String> {
    let mut plan = Plan::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.to_str().ok_or("arguments before `--` must be UTF-8")?;
        match a {
            "--" => {
                plan.program = it.cloned().collect();
                break;
            }
            "--tcp" | "--unix" | "--unix-fd" => {
                let v = it
                    .next()
                    .and_then(|v| v.to_str())
                    .ok_or_else(|| format!("{a} needs FROM=TO"))?;
                let (from, to) = v
                    .split_once('=')
                    .ok_or_else(|| format!("{a} {v}: expected FROM=TO"))?;
                let pair = (from.to_string(), to.to_string());
                match a {
                    "--tcp" => plan.tcp.push(pair),
                    "--unix" => plan.unix.push(pair),
                    _ => {
                        let fd = from
                            .parse::<i32>()
                            .ok()
                            .filter(|fd| *fd > 2)
                            .ok_or_else(|| format!("--unix-fd {v}: not a descriptor number"))?;
                        plan.unix_fd.push((fd, pair.1));
                    }
                }
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if plan.program.is_empty() {
        return Err("no program after `--`".into());
    }
    Ok(plan)
}

/// Copies both ways until both sides are done.
fn splice<A, B>(a: A, b: B, a2: A, b2: B)
where
    A: io::Read + io::Write + Send + 'static + Closable,
    B: io::Read + io::Write + Send + 'static + Closable,
{
    let up = std::thread::Builder::new().spawn(move || {
        let (mut from, mut to) = (a, b);
        let _ = io::copy(&mut from, &mut to);
        to.close_write();
    });
    // Without a thread (the process limit) the connection is dropped, not the forwarder.
    let Ok(up) = up else { return };
    let (mut from, mut to) = (b2, a2);
    let _ = io::copy(&mut from, &mut to);
    to.close_write();
    let _ = up.join();
}

/// A stream whose write half can be shut.
trait Closable {
    fn close_write(&self);
}

impl Closable for TcpStream {
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Closable for UnixStream {
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// A stream that can be cloned (one clone per direction).
trait Duplex: io::Read + io::Write + Closable + Send + Sized + 'static {
    fn duplicate(&self) -> io::Result<Self>;
}

impl Duplex for TcpStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
}

impl Duplex for UnixStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
}

/// Accepts connections and splices each to a fresh one made by `connect`, at most
/// [`MAX_CONNECTIONS`] at once (more are closed at once).
fn forward<A, U>(incoming: impl Iterator<Item = io::Result<A>>, connect: impl Fn() -> io::Result<U>)
where
    A: Duplex,
    U: Duplex,
{
    let active = Arc::new(AtomicUsize::new(0));
    for conn in incoming.flatten() {
        if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            continue;
        }
        let Ok(up) = connect() else { continue };
        let (Ok(conn2), Ok(up2)) = (conn.duplicate(), up.duplicate()) else {
            continue;
        };
        let active = active.clone();
        active.fetch_add(1, Ordering::SeqCst);
        let counter = active.clone();
        let started = std::thread::Builder::new().spawn(move || {
            splice(conn, up, conn2, up2);
            counter.fetch_sub(1, Ordering::SeqCst);
        });
        if started.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Starts a listener's thread (at start-up, before the harness: a failure is reported).
fn spawn_forward(f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().spawn(f) {
        eprintln!("karta sandbox-init: cannot start a forwarder: {e}");
    }
}

/// Runs the helper with the arguments after `sandbox-init`.
pub fn run(args: &[OsString]) -> ExitCode {
    let plan = match parse(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("karta sandbox-init: {e}");
            return ExitCode::from(2);
        }
    };
    for (addr, socket) in plan.tcp {
        match TcpListener::bind(&addr) {
            Ok(l) => {
                spawn_forward(move || forward(l.incoming(), || UnixStream::connect(&socket)));
            }
            Err(e) => {
                eprintln!("karta sandbox-init: cannot listen on {addr}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    for (socket, addr) in plan.unix {
        let _ = std::fs::remove_file(&socket);
        match UnixListener::bind(&socket) {
            Ok(l) => {
                spawn_forward(move || {
                    forward(l.incoming(), || {
                        let up = TcpStream::connect(&addr)?;
                        up.set_nodelay(true)?;
                        Ok(up)
                    })
                });
            }
            Err(e) => {
                eprintln!("karta sandbox-init: cannot listen on {socket}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    for (fd, addr) in plan.unix_fd {
        // SAFETY: the launcher passed this listening socket's descriptor for us to own.
        let l = unsafe { <UnixListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // The harness must not inherit it.
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
        spawn_forward(move || {
            forward(l.incoming(), || {
                let up = TcpStream::connect(&addr)?;
                up.set_nodelay(true)?;
                Ok(up)
            })
        });
    }
    let status = Command::new(&plan.program[0])
        .args(&plan.program[1..])
        .status();
    match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            let code = s
                .code()
                .or_else(|| s.signal().map(|sig| 128 + sig))
                .unwrap_or(1);
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Err(e) => {
            eprintln!(
                "karta sandbox-init: cannot start {}: {e}",
                plan.program[0].to_string_lossy()
            );
            ExitCode::from(127)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_forwards_and_the_program() {
        let p = parse(&os(&[
            "--tcp",
            "127.0.0.1:4100=/run/g.sock",
            "--unix",
            "/run/c.sock=127.0.0.1:4096",
            "--",
            "opencode",
            "serve",
        ]))
        .unwrap();
        assert_eq!(p.tcp, vec![("127.0.0.1:4100".into(), "/run/g.sock".into())]);
        assert_eq!(
            p.unix,
            vec![("/run/c.sock".into(), "127.0.0.1:4096".into())]
        );
        assert_eq!(p.program, os(&["opencode", "serve"]));
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        assert!(parse(&os(&["--tcp", "x"])).unwrap_err().contains("FROM=TO"));
        assert!(parse(&os(&["--bogus"])).unwrap_err().contains("--bogus"));
        assert!(parse(&os(&["--tcp", "a=b"]))
            .unwrap_err()
            .contains("no program"));
    }

    #[test]
    fn forwards_a_loopback_port_to_a_unix_socket_and_runs_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("up.sock");
        let upstream = UnixListener::bind(&sock).unwrap();
        std::thread::spawn(move || {
            for mut c in upstream.incoming().flatten() {
                let mut buf = [0u8; 5];
                io::Read::read_exact(&mut c, &mut buf).unwrap();
                io::Write::write_all(&mut c, b"pong:").unwrap();
                io::Write::write_all(&mut c, &buf).unwrap();
            }
        });
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port}; printf hello >&3; head -c 10 <&3 > {}",
            dir.path().join("out").display()
        );
        let code = run(&os(&[
            "--tcp",
            &format!("127.0.0.1:{port}={}", sock.display()),
            "--",
            "bash",
            "-c",
            &script,
        ]));
        assert_eq!(code, ExitCode::SUCCESS);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out")).unwrap(),
            "pong:hello"
        );
    }
}

//! The egress proxy of `network = "full"`: the only way out of a sandbox to the internet.
//!
//! Sandboxes have no route anywhere; in `full` mode their helper forwards a loopback port to this
//! proxy's Unix socket and the harness gets `HTTP(S)_PROXY` pointing at it, with its session's
//! gateway token as the proxy password. The proxy takes `CONNECT host:port` (HTTPS) and
//! absolute-form requests (plain HTTP), resolves the name itself and connects only to public
//! addresses: never loopback, private, link-local, shared or multicast ones, so no sandbox can
//! reach the host's own services (Karta's API, the database) or a cloud metadata endpoint.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::gateway::Grants;

/// Largest request head the proxy reads.
const MAX_HEAD: usize = 16 * 1024;
/// Tunnels open at once; more are refused (503).
const MAX_TUNNELS: usize = 256;
/// Connections still sending their request head; more are closed at once.
const MAX_PENDING: usize = 1024;
/// How long a request head may take.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one tunnel may stay open.
const TUNNEL_LIFETIME: Duration = Duration::from_secs(3600);

/// The addresses of this host's own interfaces: public ones too reach its services.
fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, which is freed below; entries are read while it lives.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut cur = list;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let a = &*(addr as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let a = &*(addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(std::net::Ipv6Addr::from(a.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out
}

/// Whether a sandbox may connect to `ip`: public unicast only.
pub fn allowed(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => allowed_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return allowed_v4(v4);
            }
            let seg = v6.segments();
            // IPv4-compatible (::a.b.c.d, deprecated but still parsed) carries an IPv4 address.
            if seg[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                let o = v6.octets();
                return allowed_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            // 6to4 (2002::/16) embeds the IPv4 address it relays to.
            if seg[0] == 0x2002 {
                let o = v6.octets();
                return allowed_v4(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local
                || (seg[0] & 0xffc0) == 0xfe80 // link-local
                || (seg[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (seg[0] == 0x64 && seg[1] == 0xff9b) // NAT64 may reach private v4
                || seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        }
    }
}

fn allowed_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space (CGNAT)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking
        || o[0] >= 240)
}

/// A parsed request head.
#[derive(Debug, PartialEq)]
enum Target {
    /// `CONNECT host:port`.
    Tunnel { host: String, port: u16 },
    /// `GET http://host[:port]/path`: the head rewritten to origin form.
    Forward {
        host: String,
        port: u16,
        head: Vec<u8>,
    },
}

fn split_host_port(authority: &str, default: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((authority.to_string(), default)),
    }
}

/// Parses the head; `Err` is the status line to answer with.
fn parse(head: &[u8], grants: &Grants) -> Result<Target, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "400 Bad Request")?;
    let mut lines = text.split("\r\n");
    let first = lines.next().ok_or("400 Bad Request")?;
    let mut parts = first.split(' ');
    let (method, target, version) = (
        parts.next().ok_or("400 Bad Request")?,
        parts.next().ok_or("400 Bad Request")?,
        parts.next().ok_or("400 Bad Request")?,
    );
    let authorized = lines.clone().any(|l| {
        let Some((name, value)) = l.split_once(':') else {
            return false;
        };
        if !name.eq_ignore_ascii_case("proxy-authorization") {
            return false;
        }
        let Some(b64) = value.trim().strip_prefix("Basic ") else {
            return false;
        };
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .and_then(|d| d.split_once(':').map(|(_, p)| p.to_string()))
            .is_some_and(|token| grants.check(&token).is_some())
    });
    if !authorized {
        return Err("407 Proxy Authentication Required");
    }
    if method == "CONNECT" {
        let (host, port) = split_host_port(target, 443).ok_or("400 Bad Request")?;
        return Ok(Target::Tunnel { host, port });
    }
    let rest = target.strip_prefix("http://").ok_or("400 Bad Request")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = split_host_port(authority, 80).ok_or("400 Bad Request")?;
    let mut out = format!("{method} {path} {version}\r\n");
    for l in lines {
        let name = l.split(':').next().unwrap_or_default().trim();
        let hop = [
            "connection",
            "keep-alive",
            "proxy-authorization",
            "proxy-connection",
        ]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h));
        if hop || l.is_empty() {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    // One request per connection: a reused connection would send the next request (and its
    // proxy credentials) to this origin.
    out.push_str("Connection: close\r\n");
    Ok(Target::Forward {
        host,
        port,
        head: out.trim_end_matches("\r\n").as_bytes().to_vec(),
    })
}

async fn answer(conn: &mut UnixStream, status: &str) {
    let _ = conn
        .write_all(
            format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
}

/// Resolves `host` and connects to its first public address.
async fn connect(host: &str, port: u16) -> Result<TcpStream, &'static str> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| "502 Bad Gateway")?
        .collect();
    let own = local_addresses();
    let public: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|a| allowed(a.ip()) && !own.contains(&a.ip()))
        .collect();
    if public.is_empty() {
        return Err("403 Forbidden");
    }
    for addr in public {
        if let Ok(Ok(s)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            return Ok(s);
        }
    }
    Err("502 Bad Gateway")
}

/// Reads up to the end of the request head; `Ok(None)` when the caller went away.
async fn read_head(conn: &mut UnixStream) -> Result<Option<(Vec<u8>, usize)>, &'static str> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some((buf, i)));
        }
        if buf.len() >= MAX_HEAD {
            return Err("431 Request Header Fields Too Large");
        }
        let mut chunk = [0u8; 2048];
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn handle(mut conn: UnixStream, grants: Arc<Grants>, tunnels: Arc<Semaphore>) {
    let (mut buf, end) = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut conn)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return,
        Ok(Err(status)) => return answer(&mut conn, status).await,
        Err(_) => return answer(&mut conn, "408 Request Timeout").await,
    };
    let rest = buf.split_off(end + 4);
    let target = match parse(&buf[..end], &grants) {
        Ok(t) => t,
        Err(status) => return answer(&mut conn, status).await,
    };
    // Only an authenticated caller takes one of the shared tunnels.
    let Ok(_tunnel) = tunnels.try_acquire_owned() else {
        return answer(&mut conn, "503 Service Unavailable").await;
    };
    let (host, port) = match &target {
        Target::Tunnel { host, port } | Target::Forward { host, port, .. } => (host.clone(), *port),
    };
    let mut up = match connect(&host, port).await {
        Ok(s) => s,
        Err(status) => {
            tracing::info!(%host, port, status, "egress refused");
            return answer(&mut conn, status).await;
        }
    };
    tracing::debug!(%host, port, "egress");
    let ready = match &target {
        Target::Tunnel { .. } => conn
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .is_ok(),
        Target::Forward { head, .. } => {
            up.write_all(head).await.is_ok() && up.write_all(b"\r\n\r\n").await.is_ok()
        }
    };
    if !ready || up.write_all(&rest).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(
        TUNNEL_LIFETIME,
        tokio::io::copy_bidirectional(&mut conn, &mut up),
    )
    .await;
}

/// Serves the proxy on `socket` until the process ends.
pub async fn serve(socket: &Path, grants: Arc<Grants>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))?;
    let tunnels = Arc::new(Semaphore::new(MAX_TUNNELS));
    let pending = Arc::new(Semaphore::new(MAX_PENDING));
    loop {
        let (conn, _) = listener.accept().await?;
        // Past the bound a connection is closed at once (dropped).
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            continue;
        };
        let (grants, tunnels) = (grants.clone(), tunnels.clone());
        tokio::spawn(async move {
            handle(conn, grants, tunnels).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::Grant;

    #[test]
    fn only_public_addresses_are_reachable() {
        for blocked in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(!allowed(blocked.parse().unwrap()), "{blocked}");
        }
        for open in ["1.1.1.1", "93.184.216.34", "2606:4700:4700::1111"] {
            assert!(allowed(open.parse().unwrap()), "{open}");
        }
    }

    fn grants() -> (Grants, String) {
        let g = Grants::default();
        let t = g.grant(Grant {
            org_id: "o".into(),
            project_id: "p".into(),
            session_id: "s".into(),
            network: Default::default(),
        });
        (g, t)
    }

    fn auth(token: &str) -> String {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("karta:{token}"));
        format!("Proxy-Authorization: Basic {b}")
    }

    #[test]
    fn requests_need_a_live_session_token() {
        let (g, t) = grants();
        let head = format!(
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n{}",
            auth(&t)
        );
        assert_eq!(
            parse(head.as_bytes(), &g),
            Ok(Target::Tunnel {
                host: "example.com".into(),
                port: 443
            })
        );
        let none = "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com";
        assert_eq!(
            parse(none.as_bytes(), &g),
            Err("407 Proxy Authentication Required")
        );
        g.revoke("s");
        assert_eq!(
            parse(head.as_bytes(), &g),
            Err("407 Proxy Authentication Required")
        );
    }

    #[test]
    fn plain_http_is_rewritten_to_origin_form_without_proxy_headers() {
        let (g, t) = grants();
        let head = format!(
            "GET http://example.com:8080/a?b=1 HTTP/1.1\r\nHost: example.com:8080\r\n{}\r\nProxy-Connection: keep-alive\r\nAccept: */*",
            auth(&t)
        );
        match parse(head.as_bytes(), &g).unwrap() {
            Target::Forward { host, port, head } => {
                assert_eq!((host.as_str(), port), ("example.com", 8080));
                let text = String::from_utf8(head).unwrap();
                assert_eq!(
                    text,
                    "GET /a?b=1 HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\nConnection: close"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            split_host_port("[2606:4700::1]:8443", 443),
            Some(("2606:4700::1".into(), 8443))
        );
    }
}

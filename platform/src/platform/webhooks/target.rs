//! Where a webhook may be sent: request forgery is refused. Only `https` (plain `http` in
//! development); the host is resolved once, every address it resolves to must be public
//! unicast (no loopback, private, link-local and cloud metadata, CGNAT, multicast, unspecified,
//! nor their IPv6 and IPv4-mapped forms), and the connection goes to the address checked.

use std::net::{IpAddr, SocketAddr};

use reqwest::Url;

/// Checks a URL's form (and its address when it is an IP literal); the URL parsed.
pub fn check_url(raw: &str, development: bool) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("`{raw}` is not a URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if development => {}
        "http" => {
            return Err(
                "must be https (plain http only with [webhook_delivery] development = true)".into(),
            )
        }
        other => return Err(format!("must be https, not {other}")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("may not carry a user name or password".into());
    }
    let literal = match url.host() {
        None => return Err("has no host".into()),
        Some(url::Host::Ipv4(a)) => Some(IpAddr::V4(a)),
        Some(url::Host::Ipv6(a)) => Some(IpAddr::V6(a)),
        Some(url::Host::Domain(_)) => None,
    };
    if let Some(ip) = literal {
        allowed(ip, development)?;
    }
    Ok(url)
}

/// Whether `ip` may be reached.
pub fn allowed(ip: IpAddr, development: bool) -> Result<(), String> {
    if development || crate::sandbox::proxy::allowed(ip) {
        Ok(())
    } else {
        Err(format!(
            "{ip} is not a public address (loopback, private, link-local or reserved)"
        ))
    }
}

/// Resolves the URL's host once; every address must be allowed. The address to connect to.
pub async fn resolve(url: &Url, development: bool) -> Result<SocketAddr, String> {
    let host = url.host_str().ok_or("has no host")?;
    let port = url.port_or_known_default().ok_or("has no port")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("{host} does not resolve: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} does not resolve"));
    }
    for a in &addrs {
        allowed(a.ip(), development).map_err(|e| format!("{host} resolves to {e}"))?;
    }
    Ok(addrs[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_odd_targets_are_refused() {
        for bad in [
            "http://example.com/hook",
            "ftp://example.com/",
            "https://127.0.0.1/",
            "https://[::1]/",
            "https://10.1.2.3/",
            "https://192.168.0.1/",
            "https://172.16.0.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://224.0.0.1/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:169.254.169.254]/",
            "https://[fd00:ec2::254]/",
            "https://[fe80::1]/",
            "https://[::127.0.0.1]/",
            "https://[2002:7f00:1::]/",
            "https://[2002:a9fe:a9fe::]/",
            "https://[fec0::1]/",
            "https://user:pw@example.com/",
            "not a url",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad} was accepted");
        }
        assert!(check_url("https://hooks.example.com/karta", false).is_ok());
        assert!(check_url("https://93.184.216.34/x", false).is_ok());
        assert!(check_url("https://[2606:2800:220:1::]/x", false).is_ok());
        assert!(check_url("http://127.0.0.1:9000/x", true).is_ok());
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused() {
        let url = check_url("https://localhost:9/x", false).unwrap();
        let e = resolve(&url, false).await.unwrap_err();
        assert!(e.contains("localhost resolves to"), "{e}");
        assert!(resolve(&url, true).await.is_ok());
    }
}

//! Webhook signatures, Stripe-compatible: `Karta-Signature: t=<unix>,v1=<hex>[,v1=<hex>]`, where
//! each `v1` is HMAC-SHA256 under one of the endpoint's secrets of `"<t>.<body>"` (two while a
//! rotated secret is still in its overlap).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header's name.
pub const HEADER: &str = "Karta-Signature";
/// How old a signature a receiver should accept, in seconds (documented for receivers).
pub const TOLERANCE_SECONDS: i64 = 300;

fn hmac_hex(secret: &str, t: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The header's value for `body` sent at `t`, one `v1` per secret.
pub fn header_value(t: i64, body: &[u8], secrets: &[&str]) -> String {
    let mut out = format!("t={t}");
    for s in secrets {
        out.push_str(",v1=");
        out.push_str(&hmac_hex(s, t, body));
    }
    out
}

/// Whether `header` signs `body` with `secret` within the tolerance of `now` (what a receiver
/// does; Karta uses it in tests and documents it).
pub fn verify(header: &str, body: &[u8], secret: &str, now: i64) -> bool {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => sigs.push(v),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if (now - t).abs() > TOLERANCE_SECONDS {
        return false;
    }
    let expected = hmac_hex(secret, t, body);
    sigs.iter()
        .any(|s| subtle::ConstantTimeEq::ct_eq(s.as_bytes(), expected.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_with_either_secret_and_only_in_time() {
        let body = br#"{"id":"evt_1"}"#;
        let h = header_value(1_000, body, &["whsec_new", "whsec_old"]);
        assert!(h.starts_with("t=1000,v1="));
        assert!(verify(&h, body, "whsec_new", 1_100));
        assert!(verify(&h, body, "whsec_old", 1_100));
        assert!(!verify(&h, body, "whsec_other", 1_100));
        assert!(!verify(&h, b"{}", "whsec_new", 1_100));
        assert!(!verify(
            &h,
            body,
            "whsec_new",
            1_000 + TOLERANCE_SECONDS + 1
        ));
        // The reference value (HMAC-SHA256 of "1000.{...}" under "k").
        let v = header_value(1000, b"{}", &["k"]);
        assert_eq!(v.len(), "t=1000,v1=".len() + 64);
    }
}

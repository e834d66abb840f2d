//! Session tokens: short-lived, project-scoped HS256 JWTs that a builder's backend mints for a
//! browser, verified offline on every project-route request.
//!
//! HS256 is written out here on `hmac` + `sha2` rather than taken from a JWT crate: the crates
//! that do it bring RSA, ECDSA and EdDSA stacks (or a C crypto library) this build does not
//! otherwise need, and the format is small and fixed. Only `alg: HS256` is accepted; `none` and
//! every other algorithm are refused before any signature check.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The only scope minted: full consumer use of one project.
pub const PROJECT_SCOPE: &str = "project";
/// Default lifetime: 15 minutes.
pub const DEFAULT_TTL_SECONDS: i64 = 900;
/// Clock skew tolerated on `exp`.
const LEEWAY_SECONDS: i64 = 30;

/// What a session token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The org.
    pub org_id: String,
    /// The project (`prj_...`).
    pub project_id: String,
    /// The project's slug.
    pub project_slug: String,
    /// Always `project`.
    pub scope: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// The end user the token is bound to, when the minting backend named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts of JSON.
    #[error("malformed token")]
    Malformed,
    /// `alg` is not HS256.
    #[error("unsupported algorithm")]
    Algorithm,
    /// No configured secret signed it.
    #[error("bad signature")]
    Signature,
    /// Past `exp`.
    #[error("expired")]
    Expired,
    /// A scope this build does not grant.
    #[error("unsupported scope")]
    Scope,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// Signs and verifies session tokens. The first secret signs; every secret verifies (rotation).
#[derive(Clone)]
pub struct TokenKeys {
    secrets: Vec<Vec<u8>>,
}

impl TokenKeys {
    /// Keys from `KARTA_SESSION_TOKEN_SECRET` (comma-separated: current first, then previous
    /// ones still accepted). When it is unset a random secret is made, valid until the process
    /// stops; the second value says so.
    pub fn from_env() -> (TokenKeys, bool) {
        match std::env::var("KARTA_SESSION_TOKEN_SECRET") {
            // Empty entries (`"new,old,"`) would let anyone sign with an empty key: skip them.
            Ok(v) if v.split(',').any(|s| !s.trim().is_empty()) => (
                TokenKeys::new(
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| s.as_bytes().to_vec())
                        .collect(),
                ),
                false,
            ),
            _ => {
                let random = crate::store::random_base62(43);
                (TokenKeys::new(vec![random.into_bytes()]), true)
            }
        }
    }

    /// Keys from explicit secrets (current first). Empty secrets are dropped.
    pub fn new(secrets: Vec<Vec<u8>>) -> Self {
        Self {
            secrets: secrets.into_iter().filter(|s| !s.is_empty()).collect(),
        }
    }

    fn mac(secret: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length; this cannot fail.
        HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("hmac accepts any key"))
    }

    /// Signs `claims`.
    pub fn mint(&self, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{header}.{payload}");
        let mut mac = Self::mac(self.secrets.first().map(Vec::as_slice).unwrap_or_default());
        mac.update(signing_input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{sig}")
    }

    /// Checks algorithm, signature (constant time), expiry and scope.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Header = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if header.alg != "HS256" {
            return Err(TokenError::Algorithm);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| TokenError::Malformed)?;
        let signing_input = &token[..h.len() + 1 + p.len()];
        let signed = !self.secrets.is_empty()
            && self.secrets.iter().any(|secret| {
                let mut mac = Self::mac(secret);
                mac.update(signing_input.as_bytes());
                mac.verify_slice(&sig).is_ok()
            });
        if !signed {
            return Err(TokenError::Signature);
        }
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if now > claims.exp + LEEWAY_SECONDS {
            return Err(TokenError::Expired);
        }
        if claims.scope != PROJECT_SCOPE {
            return Err(TokenError::Scope);
        }
        Ok(claims)
    }
}

/// Whether a bearer credential looks like a JWT (three dot-separated parts).
pub fn looks_like_jwt(s: &str) -> bool {
    s.split('.').count() == 3 && s.starts_with("eyJ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJvcmdfaWQiOiJvcmdfN2YyYyIsInByb2plY3RfaWQiOiJwcmpfNDFkOSIsInByb2plY3Rfc2x1ZyI6ImFjbWUtaGVscGRlc2siLCJzY29wZSI6InByb2plY3QiLCJpYXQiOjE3NjcyMjU2MDAsImV4cCI6MTc2NzIyNjUwMH0.7Z6VYEftDKmUCz0Vm3iIbuJZu-3yGZ_EZlhMyCwBzBg";

    fn keys() -> TokenKeys {
        TokenKeys::new(vec![b"dev-only-session-token-secret-change-me".to_vec()])
    }

    #[test]
    fn the_documented_vector_verifies_and_mints_identically() {
        let claims = keys().verify(VECTOR, 1_767_225_700).unwrap();
        assert_eq!(claims.org_id, "org_7f2c");
        assert_eq!(claims.project_slug, "acme-helpdesk");
        assert_eq!(claims.exp, 1_767_226_500);
        assert_eq!(keys().mint(&claims), VECTOR);
    }

    #[test]
    fn expired_forged_and_other_algorithms_are_refused() {
        assert_eq!(
            keys().verify(VECTOR, 1_767_226_500 + 31),
            Err(TokenError::Expired)
        );
        assert!(
            keys().verify(VECTOR, 1_767_226_500 + 29).is_ok(),
            "30 s leeway"
        );
        let other = TokenKeys::new(vec![b"another-secret".to_vec()]);
        assert_eq!(
            other.verify(VECTOR, 1_767_225_700),
            Err(TokenError::Signature)
        );
        // Rotation: a previous secret still verifies.
        let rotated = TokenKeys::new(vec![
            b"new".to_vec(),
            b"dev-only-session-token-secret-change-me".to_vec(),
        ]);
        assert!(rotated.verify(VECTOR, 1_767_225_700).is_ok());
        // alg "none" with the signature stripped.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            VECTOR.split('.').nth(1).unwrap()
        );
        assert_eq!(
            keys().verify(&none, 1_767_225_700),
            Err(TokenError::Algorithm)
        );
        // A tampered payload.
        let mut parts: Vec<&str> = VECTOR.split('.').collect();
        let evil = URL_SAFE_NO_PAD.encode(br#"{"org_id":"org_evil","project_id":"p","project_slug":"s","scope":"project","iat":1,"exp":9999999999}"#);
        parts[1] = &evil;
        assert_eq!(
            keys().verify(&parts.join("."), 1_767_225_700),
            Err(TokenError::Signature)
        );
        assert_eq!(keys().verify("a.b", 0), Err(TokenError::Malformed));
        // An empty secret in a rotation list is ignored, not a key anyone can sign with.
        let with_empty = TokenKeys::new(vec![b"real".to_vec(), Vec::new()]);
        let forged_empty = TokenKeys {
            secrets: vec![Vec::new()],
        }
        .mint(&keys().verify(VECTOR, 1_767_225_700).unwrap());
        assert_eq!(
            with_empty.verify(&forged_empty, 1_767_225_700),
            Err(TokenError::Signature)
        );
        assert_eq!(
            keys().verify("not-base64.!!.??", 0),
            Err(TokenError::Malformed)
        );
    }
}

//! Secret references: a secret is never written in a config file, only where to find it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// `{ env = "NAME" }` or `{ file = "path" }`.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Secret {
    /// Read from an environment variable of the Karta process.
    #[serde(rename = "env")]
    Env(String),
    /// Read from a file (trailing newline trimmed).
    #[serde(rename = "file")]
    File(PathBuf),
}

// Never print a secret's value; only where it comes from.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Env(n) => write!(f, "Secret(env {n})"),
            Secret::File(p) => write!(f, "Secret(file {})", p.display()),
        }
    }
}

/// A secret reference that cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The environment variable is not set.
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    /// The file cannot be read.
    #[error("cannot read secret file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl Secret {
    /// Reads the secret's value now.
    pub fn resolve(&self) -> Result<String, SecretError> {
        match self {
            Secret::Env(name) => {
                std::env::var(name).map_err(|_| SecretError::MissingEnv(name.clone()))
            }
            Secret::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                }),
        }
    }

    /// Makes a relative `file` reference relative to `base`.
    pub fn rebase(&mut self, base: &Path) {
        if let Secret::File(p) = self {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

const SHAPE: &str =
    "a secret must be written as { env = \"NAME\" } or { file = \"path\" }, never inline";

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SHAPE)
            }
            // Deliberately does not echo the value: it is probably a pasted key.
            fn visit_str<E: de::Error>(self, _v: &str) -> Result<Secret, E> {
                Err(E::custom(SHAPE))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Secret, A::Error> {
                let mut out: Option<Secret> = None;
                while let Some(key) = map.next_key::<String>()? {
                    let value: String = map.next_value()?;
                    if out.is_some() {
                        return Err(de::Error::custom(SHAPE));
                    }
                    out = Some(match key.as_str() {
                        "env" => Secret::Env(value),
                        "file" => Secret::File(PathBuf::from(value)),
                        other => {
                            return Err(de::Error::custom(format!(
                                "unknown secret source `{other}`; {SHAPE}"
                            )))
                        }
                    });
                }
                out.ok_or_else(|| de::Error::custom(SHAPE))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_secret_is_refused_without_echoing_it() {
        let err = serde_json::from_str::<Secret>("\"sk-live-123\"").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("{ env = \"NAME\" }"), "{msg}");
        assert!(!msg.contains("sk-live-123"), "{msg}");
    }

    #[test]
    fn env_and_file_references_parse() {
        assert_eq!(
            serde_json::from_str::<Secret>(r#"{"env":"K"}"#).unwrap(),
            Secret::Env("K".into())
        );
        assert_eq!(
            serde_json::from_str::<Secret>(r#"{"file":"k.txt"}"#).unwrap(),
            Secret::File("k.txt".into())
        );
        assert!(serde_json::from_str::<Secret>(r#"{"env":"A","file":"b"}"#).is_err());
        assert!(serde_json::from_str::<Secret>(r#"{"vault":"x"}"#).is_err());
    }
}

//! Harness CLIs Karta can install for a newcomer: pinned versions from the npm registry, into
//! `<data_dir>/harnesses/<name>/`, where the drivers look first.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Claude Code version the driver is built and tested against.
pub const CLAUDE_CODE_VERSION: &str = "2.1.332";

/// The OpenCode version the driver is built and tested against.
pub const OPENCODE_VERSION: &str = "1.18.33";

/// Installation failures.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Not a harness Karta knows how to install.
    #[error("unknown harness `{0}` (known: claude-code, opencode)")]
    Unknown(String),
    /// npm is missing or failed.
    #[error("npm failed: {0}")]
    Npm(String),
}

/// Where an installed harness lives.
pub fn install_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("harnesses").join(name)
}

/// Installs a harness; returns the path of its command.
pub fn install(name: &str, data_dir: &Path) -> Result<PathBuf, InstallError> {
    let (package, bin) = match name {
        "claude-code" => (
            format!("@anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}"),
            "node_modules/.bin/claude",
        ),
        "opencode" => (
            format!("opencode-ai@{OPENCODE_VERSION}"),
            "node_modules/.bin/opencode",
        ),
        other => return Err(InstallError::Unknown(other.to_string())),
    };
    let dir = install_dir(data_dir, name);
    std::fs::create_dir_all(&dir)
        .map_err(|e| InstallError::Npm(format!("{}: {e}", dir.display())))?;
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .arg(&package)
        .status()
        .map_err(|e| {
            InstallError::Npm(format!(
                "cannot run npm ({e}); install Node.js and npm first"
            ))
        })?;
    if !status.success() {
        return Err(InstallError::Npm(format!(
            "`npm install {package}` exited with {status}"
        )));
    }
    Ok(dir.join(bin))
}

//! Finding a harness's command-line program, the same way for every first-party driver.

use std::path::{Path, PathBuf};

/// A program on `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The harness CLI: the configured command (a path, or a name looked up on `PATH`), else the
/// copy `karta harness install <harness>` put in `<data_dir>/harnesses/<harness>/`, else `bin` on
/// `PATH`. The error says how to install it.
pub fn locate(
    configured: Option<&str>,
    data_dir: Option<&Path>,
    harness: &str,
    bin: &str,
    product: &str,
) -> Result<PathBuf, String> {
    if let Some(c) = configured {
        if c.contains('/') {
            let p = PathBuf::from(c);
            return if p.is_file() {
                Ok(p)
            } else {
                Err(format!(
                    "the {product} CLI configured in settings.command ({c}) does not exist"
                ))
            };
        }
        if let Some(found) = on_path(c) {
            return Ok(found);
        }
    }
    if let Some(d) = data_dir {
        let installed = d
            .join("harnesses")
            .join(harness)
            .join("node_modules/.bin")
            .join(bin);
        if installed.is_file() {
            return Ok(installed);
        }
    }
    on_path(bin).ok_or_else(|| {
        format!(
            "{product} is not installed: run `karta harness install {harness}` \
             (or point [[drivers]] settings.command at a `{bin}` binary)"
        )
    })
}

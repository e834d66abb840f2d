//! `karta.jsonc` read once per change, not once per turn.
//!
//! Entries are keyed by the app folder and checked against the file's modification time, so an
//! edited file is read again; the map is bounded (`MAX_ENTRIES`) and simply cleared when full.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::AppSettings;

/// App folders remembered at most.
const MAX_ENTRIES: usize = 4096;

/// (modification time of `karta.jsonc`, or `None` when absent) -> settings.
type Entry = (Option<SystemTime>, Arc<AppSettings>);

/// Parsed `karta.jsonc` per app folder.
#[derive(Default)]
pub(crate) struct SettingsCache {
    entries: Mutex<HashMap<PathBuf, Entry>>,
}

impl SettingsCache {
    /// The settings of `app_dir` (blocking: a `stat`, and a read when the file changed).
    pub(crate) fn get(&self, app_dir: &Path) -> Result<Arc<AppSettings>, String> {
        let mtime = std::fs::metadata(app_dir.join("karta.jsonc"))
            .and_then(|m| m.modified())
            .ok();
        if let Some((at, s)) = self.lock().get(app_dir) {
            if *at == mtime {
                return Ok(s.clone());
            }
        }
        let settings = Arc::new(AppSettings::load(app_dir)?);
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(app_dir.to_path_buf(), (mtime, settings.clone()));
        Ok(settings)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edited_file_is_read_again() {
        let d = tempfile::tempdir().unwrap();
        let cache = SettingsCache::default();
        let first = cache.get(d.path()).unwrap();
        assert_eq!(first.raw, serde_json::Value::Null);
        std::fs::write(
            d.path().join("karta.jsonc"),
            r#"{"runtime": {"permission_mode": "autonomous"}}"#,
        )
        .unwrap();
        let second = cache.get(d.path()).unwrap();
        assert_eq!(second.raw["runtime"]["permission_mode"], "autonomous");
        // Unchanged: the same parsed value comes back.
        assert!(Arc::ptr_eq(&second, &cache.get(d.path()).unwrap()));
    }
}

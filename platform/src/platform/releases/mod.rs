//! Releases: publishing a harness app as an immutable, numbered tree, activating one (the
//! project's live release) and rolling back, and expiring previews.
//!
//! Publishing unpacks the archive into a folder of its own under `<data_dir>/releases/.incoming`,
//! validates it as the runtime would serve it, and renames it into
//! `<data_dir>/releases/<org>/<project>/<release id>`; only then is the row written (and, for a
//! production release, activated) in one transaction. Whatever fails leaves nothing behind.
//! Sessions read their app from the release they were created on, so activating or rolling back
//! changes what new sessions get and nothing else.

pub mod archive;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Duration;
use serde_json::json;

use crate::config::ReleasesConfig;
use crate::runtime::Runtime;
use crate::store::audit::{self, Actor};
use crate::store::models::Project;
use crate::store::releases::{self, Release};
use crate::store::{self, Store, StoreError};

/// A release's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseKind {
    /// Becomes the project's live release.
    Production,
    /// Reachable only as `<project>@v<N>`, until it expires.
    Preview,
}

impl ReleaseKind {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseKind::Production => "production",
            ReleaseKind::Preview => "preview",
        }
    }
}

/// How a release is built (detected; every kind runs its tree as it is today).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildKind {
    /// A `Dockerfile` at the root.
    Dockerfile,
    /// `buildpack = "..."` in `karta.toml`.
    Buildpack,
    /// The tree as it is.
    FileCopy,
}

impl BuildKind {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildKind::Dockerfile => "dockerfile",
            BuildKind::Buildpack => "buildpack",
            BuildKind::FileCopy => "file_copy",
        }
    }
}

/// Why a release was not published or activated.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The archive broke a rule (422).
    #[error("the archive was refused: {0}")]
    Archive(archive::ArchiveError),
    /// The unpacked app is not one Karta can serve (422).
    #[error("the harness app is invalid: {0}")]
    App(String),
    /// No such version (404).
    #[error("the project has no release v{0}")]
    NoVersion(i64),
    /// The release cannot be activated (409).
    #[error("{0}")]
    NotActivatable(String),
    /// Storage failed (500).
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ReleaseError {
    fn from(e: StoreError) -> Self {
        ReleaseError::Internal(e.to_string())
    }
}

/// An archive to publish (already on disk, in [`Releases::incoming`]).
pub struct Publish {
    /// The project.
    pub project: Project,
    /// The uploaded `.tar.gz`.
    pub archive: PathBuf,
    /// The archive's SHA-256 (hex), the commit when none is given.
    pub digest: String,
    /// The commit it was built from.
    pub commit_sha: Option<String>,
    /// What the deployer says about it.
    pub message: String,
    /// A preview instead of a production release.
    pub preview: bool,
    /// Make a production release live at once (else it waits, `ready`, for a roll forward).
    pub activate: bool,
}

/// The release service.
pub struct Releases {
    store: Store,
    root: PathBuf,
    cfg: ReleasesConfig,
    publishing: Arc<tokio::sync::Semaphore>,
}

const MIB: u64 = 1024 * 1024;

impl Releases {
    /// Releases kept under `<data_dir>/releases`. Uploads and staging folders a previous run
    /// left behind (killed mid-publish) are removed.
    pub fn new(store: Store, data_dir: &Path, cfg: ReleasesConfig) -> Self {
        let root = data_dir.join("releases");
        if let Ok(entries) = std::fs::read_dir(root.join(".incoming")) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
        let publishing = Arc::new(tokio::sync::Semaphore::new(
            cfg.max_concurrent_publishes.max(1),
        ));
        Self {
            store,
            root,
            cfg,
            publishing,
        }
    }

    /// A place among the publishes running at once (`[releases] max_concurrent_publishes`), or
    /// none when all are taken.
    pub fn try_publish_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.publishing.clone().try_acquire_owned().ok()
    }

    /// Removes the files of the project's production releases beyond the newest
    /// `[releases] keep_releases` (never the live one) and marks them `expired`.
    async fn prune(&self, org_id: &str, project_id: &str) -> Result<(), ReleaseError> {
        let keep = self.cfg.keep_releases.max(1);
        let (org, pid) = (org_id.to_string(), project_id.to_string());
        let all = self
            .store
            .read_async(move |c| releases::list(c, &org, &pid, 10_000))
            .await?;
        let old: Vec<Release> = all
            .into_iter()
            .filter(|r| r.kind == ReleaseKind::Production.as_str() && r.status != "expired")
            .skip(keep)
            .filter(|r| r.status != "active")
            .collect();
        for r in old {
            let path = PathBuf::from(&r.path);
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(path)).await;
            let id = r.id.clone();
            self.store
                .write_async(move |c| releases::mark_expired(c, &id))
                .await?;
            tracing::info!(project = %r.project_id, version = r.version, "old release removed");
        }
        Ok(())
    }

    /// Where uploads are written before they are unpacked (created on demand).
    pub fn incoming(&self) -> std::io::Result<PathBuf> {
        let dir = self.root.join(".incoming");
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The largest upload, in bytes.
    pub fn max_upload_bytes(&self) -> u64 {
        self.cfg.max_upload_mb.saturating_mul(MIB)
    }

    fn limits(&self) -> archive::Limits {
        archive::Limits {
            max_unpacked_bytes: self.cfg.max_unpacked_mb.saturating_mul(MIB),
            max_file_bytes: self.cfg.max_file_mb.saturating_mul(MIB),
            max_members: self.cfg.max_members,
            max_ratio: self.cfg.max_ratio.max(1),
        }
    }

    /// Publishes the archive: the existing release when the project already has this commit
    /// (`false`), else a new version (`true`), active at once unless it is a preview.
    pub async fn publish(
        &self,
        p: Publish,
        runtime: &Runtime,
        actor: Actor,
    ) -> Result<(Release, bool), ReleaseError> {
        let kind = if p.preview {
            ReleaseKind::Preview
        } else {
            ReleaseKind::Production
        };
        let commit = p.commit_sha.clone().unwrap_or_else(|| p.digest.clone());
        let (pid, c2) = (p.project.id.clone(), commit.clone());
        if let Some(existing) = self
            .store
            .read_async(move |c| releases::find_by_commit(c, &pid, &c2, kind.as_str()))
            .await?
        {
            return Ok((existing, false));
        }
        let id = store::new_id("rel");
        let staging = self
            .incoming()
            .map_err(|e| ReleaseError::Internal(e.to_string()))?
            .join(&id);
        let result = self.unpack_and_place(&p, &id, &staging, runtime).await;
        let _ = std::fs::remove_dir_all(&staging);
        let (dest, unpacked, build) = result?;
        let now = store::now();
        let mut rel = Release {
            id,
            org_id: p.project.org_id.clone(),
            project_id: p.project.id.clone(),
            version: 0,
            commit_sha: commit,
            message: p.message.clone(),
            kind: kind.as_str().into(),
            status: "ready".into(),
            build_kind: build.as_str().into(),
            path: dest.to_string_lossy().into_owned(),
            size_bytes: i64::try_from(unpacked.bytes).unwrap_or(i64::MAX),
            files: i64::try_from(unpacked.files).unwrap_or(i64::MAX),
            created_at: now,
            activated_at: None,
            expires_at: (kind == ReleaseKind::Preview).then(|| {
                now + Duration::seconds(
                    i64::try_from(self.cfg.preview_ttl_seconds).unwrap_or(7 * 24 * 3600),
                )
            }),
        };
        let row = rel.clone();
        let p_activate = p.activate;
        let stored = self
            .store
            .write_async(move |c| {
                let mut row = row;
                releases::lock_project(c, &row.project_id)?;
                row.version = releases::next_version(c, &row.project_id)?;
                releases::insert(c, &row)?;
                if kind == ReleaseKind::Production && p_activate {
                    let previous = releases::activate(c, &row.project_id, &row.id, row.created_at)?;
                    row.status = "active".into();
                    row.activated_at = Some(row.created_at);
                    activation_event(c, &row, previous.as_ref())?;
                }
                audit::record_by(
                    c,
                    Some(&row.org_id),
                    &actor,
                    "release.published",
                    &row.id,
                    &json!({"project_id": row.project_id, "version": row.version,
                        "commit_sha": row.commit_sha, "kind": row.kind,
                        "build_kind": row.build_kind, "active": row.status == "active"}),
                )?;
                Ok(row)
            })
            .await;
        match stored {
            Ok(row) => {
                rel = row;
                tracing::info!(project = %rel.project_id, version = rel.version, kind = %rel.kind, "release published");
                if let Err(e) = self.prune(&rel.org_id, &rel.project_id).await {
                    tracing::warn!(project = %rel.project_id, error = %e, "old releases not pruned");
                }
                Ok((rel, true))
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dest);
                // The same commit published at the same time: the other one stands.
                let (pid, sha) = (rel.project_id.clone(), rel.commit_sha.clone());
                match self
                    .store
                    .read_async(move |c| releases::find_by_commit(c, &pid, &sha, kind.as_str()))
                    .await
                {
                    Ok(Some(existing)) => Ok((existing, false)),
                    _ => Err(e.into()),
                }
            }
        }
    }

    /// Unpacks into `staging`, validates, and moves the tree to its final place.
    async fn unpack_and_place(
        &self,
        p: &Publish,
        id: &str,
        staging: &Path,
        runtime: &Runtime,
    ) -> Result<(PathBuf, archive::Unpacked, BuildKind), ReleaseError> {
        let (archive, dir, limits) = (p.archive.clone(), staging.to_path_buf(), self.limits());
        let unpacked = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            archive::unpack(&archive, &dir, &limits)
        })
        .await
        .map_err(|e| ReleaseError::Internal(e.to_string()))?
        .map_err(|e| match e {
            archive::ArchiveError::Io(io) => ReleaseError::Internal(io.to_string()),
            other => ReleaseError::Archive(other),
        })?;
        let build = build_kind(staging).map_err(ReleaseError::App)?;
        runtime
            .validate_app(&p.project, staging)
            .await
            .map_err(|m| {
                // Name files relative to the app, not the staging folder.
                let shown = m.replace(&format!("{}/", staging.display()), "");
                ReleaseError::App(shown.replace(&staging.display().to_string(), "."))
            })?;
        let dest = self
            .root
            .join(&p.project.org_id)
            .join(&p.project.id)
            .join(id);
        let (from, to) = (staging.to_path_buf(), dest.clone());
        tokio::task::spawn_blocking(move || {
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(&from, &to)
        })
        .await
        .map_err(|e| ReleaseError::Internal(e.to_string()))?
        .map_err(|e| ReleaseError::Internal(format!("cannot place the release: {e}")))?;
        Ok((dest, unpacked, build))
    }

    /// Makes version `version` the project's live release (a rollback, or a roll forward):
    /// the release now active and the one active before.
    pub async fn activate(
        &self,
        org_id: &str,
        project_id: &str,
        version: i64,
        actor: Actor,
    ) -> Result<(Release, Option<Release>), ReleaseError> {
        let (org, pid) = (org_id.to_string(), project_id.to_string());
        let target = self
            .store
            .read_async(move |c| releases::get_version(c, &org, &pid, version))
            .await
            .map_err(|e| match e {
                StoreError::NotFound => ReleaseError::NoVersion(version),
                other => other.into(),
            })?;
        if target.kind != ReleaseKind::Production.as_str() {
            return Err(ReleaseError::NotActivatable(format!(
                "v{version} is a preview; previews are never the project's live release"
            )));
        }
        if !Path::new(&target.path).is_dir() {
            return Err(ReleaseError::NotActivatable(format!(
                "v{version}'s files are gone; publish it again"
            )));
        }
        let t = target.clone();
        let (now_active, previous) = self
            .store
            .write_async(move |c| {
                let now = store::now();
                let previous = releases::activate(c, &t.project_id, &t.id, now)?;
                if previous.as_ref().is_none_or(|p| p.id != t.id) {
                    activation_event(c, &t, previous.as_ref())?;
                }
                audit::record_by(
                    c,
                    Some(&t.org_id),
                    &actor,
                    "release.activated",
                    &t.id,
                    &json!({"project_id": t.project_id, "version": t.version,
                        "previous_version": previous.as_ref().map(|p| p.version)}),
                )?;
                let now_active = releases::get_version(c, &t.org_id, &t.project_id, t.version)?;
                Ok((now_active, previous))
            })
            .await?;
        tracing::info!(project = %project_id, version, "release activated");
        Ok((now_active, previous.filter(|p| p.id != target.id)))
    }

    /// Sweeps expired previews every `[releases] sweep_seconds`, when this instance holds the
    /// job's lease (one instance sweeps when several share PostgreSQL). Runs forever.
    pub async fn sweep_forever(self: std::sync::Arc<Self>) {
        let holder = store::new_id("inst");
        let period = std::time::Duration::from_secs(self.cfg.sweep_seconds.max(1));
        let ttl =
            Duration::seconds(i64::try_from(self.cfg.sweep_seconds.max(1) * 2).unwrap_or(1800));
        let mut every = tokio::time::interval(period);
        loop {
            every.tick().await;
            let h = holder.clone();
            let mine = self
                .store
                .write_async(move |c| {
                    crate::store::jobs::try_lease(c, "releases.sweep", &h, store::now(), ttl)
                })
                .await;
            match mine {
                Ok(true) => {
                    if let Err(e) = self.sweep().await {
                        tracing::warn!(error = %e, "preview sweep failed");
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "preview sweep lease not taken"),
            }
        }
    }

    /// Expires previews past their time: their trees are removed, then they are marked (a tree
    /// removed twice is harmless). How many were expired.
    pub async fn sweep(&self) -> Result<usize, ReleaseError> {
        let due = self
            .store
            .read_async(|c| releases::expired_previews(c, store::now(), 100))
            .await?;
        let n = due.len();
        for r in due {
            let path = PathBuf::from(&r.path);
            tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            })
            .await
            .map_err(|e| ReleaseError::Internal(e.to_string()))?
            .map_err(|e| ReleaseError::Internal(e.to_string()))?;
            let id = r.id.clone();
            self.store
                .write_async(move |c| releases::mark_expired(c, &id))
                .await?;
            tracing::info!(project = %r.project_id, version = r.version, "preview expired");
        }
        Ok(n)
    }
}

/// Records `release.activated`, or `release.rolled_back` when an older version replaces a newer
/// one, in the activation's transaction.
fn activation_event(
    c: &mut store::Conn,
    now_live: &Release,
    previous: Option<&Release>,
) -> Result<(), StoreError> {
    let back = previous.is_some_and(|p| p.version > now_live.version);
    let ty = if back {
        "release.rolled_back"
    } else {
        "release.activated"
    };
    crate::store::org_events::insert(
        c,
        &crate::store::org_events::new_event(
            &now_live.org_id,
            ty,
            &json!({"project_id": now_live.project_id, "release_id": now_live.id,
                "version": now_live.version, "commit_sha": now_live.commit_sha,
                "previous_version": previous.map(|p| p.version)}),
        ),
    )?;
    Ok(())
}

/// The build kind of an unpacked app: a `Dockerfile`, a `buildpack` in `karta.toml`, or the
/// tree as it is. A `karta.toml` that is not valid TOML is refused with its line.
pub fn build_kind(dir: &Path) -> Result<BuildKind, String> {
    let toml = dir.join("karta.toml");
    let buildpack = match std::fs::read_to_string(&toml) {
        Ok(text) => {
            let doc = text.parse::<toml_edit::DocumentMut>().map_err(|e| {
                let line = e
                    .span()
                    .and_then(|s| text.get(..s.start))
                    .map(|before| before.lines().count().max(1));
                match line {
                    Some(l) => format!("karta.toml:{l}: {}", e.message()),
                    None => format!("karta.toml: {}", e.message()),
                }
            })?;
            doc.get("buildpack").is_some()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(format!("karta.toml: cannot read: {e}")),
    };
    Ok(if dir.join("Dockerfile").is_file() {
        BuildKind::Dockerfile
    } else if buildpack {
        BuildKind::Buildpack
    } else {
        BuildKind::FileCopy
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_kinds_are_detected_and_a_bad_karta_toml_names_its_line() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(build_kind(d.path()), Ok(BuildKind::FileCopy));
        std::fs::write(d.path().join("karta.toml"), "buildpack = \"node\"\n").unwrap();
        assert_eq!(build_kind(d.path()), Ok(BuildKind::Buildpack));
        std::fs::write(d.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        assert_eq!(build_kind(d.path()), Ok(BuildKind::Dockerfile));
        std::fs::write(d.path().join("karta.toml"), "name = \"x\"\nbroken =\n").unwrap();
        let e = build_kind(d.path()).unwrap_err();
        assert!(e.starts_with("karta.toml:2:"), "{e}");
    }
}

//! Packing a harness-app folder for `karta deploy`: a `.tar.gz` of its files, honouring
//! `.gitignore` (and `.karta-ignore`), without `.git`, and reproducible (sorted, no times, no
//! owners), so the same files give the same archive and the server's digest recognises them.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use flate2::write::GzEncoder;

/// What was packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packed {
    /// Files in the archive.
    pub files: u64,
    /// Their bytes before compression.
    pub bytes: u64,
}

/// Packs `dir` into `out`.
pub fn pack(dir: &Path, out: &Path) -> anyhow::Result<Packed> {
    let mut paths = Vec::new();
    let walk = ignore::WalkBuilder::new(dir)
        .hidden(false)
        .git_ignore(true)
        .git_exclude(false)
        .git_global(false)
        .require_git(false)
        .add_custom_ignore_filename(".karta-ignore")
        .follow_links(false)
        .filter_entry(|e| e.file_name() != ".git")
        .build();
    for entry in walk {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let Some(kind) = entry.file_type() else {
            continue;
        };
        // Only plain files: links would be refused by the server (and could point anywhere).
        if kind.is_file() {
            paths.push(entry.into_path());
        }
    }
    paths.sort();
    if paths.is_empty() {
        anyhow::bail!("{} has no files to deploy", dir.display());
    }
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let gz = GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    let mut packed = Packed { files: 0, bytes: 0 };
    for p in &paths {
        let rel = p.strip_prefix(dir).unwrap_or(p);
        let mut f = File::open(p).with_context(|| format!("reading {}", p.display()))?;
        tar.append_file(rel, &mut f)
            .with_context(|| format!("packing {}", rel.display()))?;
        packed.files += 1;
        packed.bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
    }
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .and_then(|mut f| f.flush())
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(packed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_files_and_git_stay_out_and_the_archive_is_reproducible() {
        let d = tempfile::tempdir().unwrap();
        let app = d.path().join("app");
        std::fs::create_dir_all(app.join(".git")).unwrap();
        std::fs::create_dir_all(app.join("node_modules/x")).unwrap();
        std::fs::create_dir_all(app.join(".claude/agents")).unwrap();
        std::fs::write(app.join(".git/HEAD"), "ref").unwrap();
        std::fs::write(app.join(".gitignore"), "node_modules/\n*.log\n").unwrap();
        std::fs::write(app.join("node_modules/x/i.js"), "x").unwrap();
        std::fs::write(app.join("debug.log"), "noise").unwrap();
        std::fs::write(app.join("CLAUDE.md"), "hi").unwrap();
        std::fs::write(app.join(".claude/agents/a.md"), "a").unwrap();
        let (a, b) = (d.path().join("a.tar.gz"), d.path().join("b.tar.gz"));
        let packed = pack(&app, &a).unwrap();
        assert_eq!(packed.files, 3, "CLAUDE.md, .gitignore and the agent");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::write(app.join("CLAUDE.md"), "hi").unwrap();
        pack(&app, &b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let mut names: Vec<String> =
            tar::Archive::new(flate2::read::GzDecoder::new(File::open(&a).unwrap()))
                .entries()
                .unwrap()
                .map(|e| e.unwrap().path().unwrap().display().to_string())
                .collect();
        names.sort();
        assert_eq!(names, [".claude/agents/a.md", ".gitignore", "CLAUDE.md"]);
    }
}

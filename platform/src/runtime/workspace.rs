//! Session workspaces: a private copy of the pinned harness app, the harness's working folder.

use std::io;
use std::path::Path;

/// Folders never copied into a workspace.
const SKIPPED: &[&str] = &[".git", "node_modules", ".karta"];

/// Copies the app folder into a new workspace. Symbolic links are not followed (and not
/// copied), so an app cannot pull files from outside its folder into a session.
pub fn copy_app(app: &Path, workspace: &Path) -> io::Result<()> {
    std::fs::create_dir_all(workspace)?;
    for entry in std::fs::read_dir(app)? {
        let entry = entry?;
        let name = entry.file_name();
        if SKIPPED.iter().any(|s| name == *s) {
            continue;
        }
        let kind = entry.file_type()?;
        let to = workspace.join(&name);
        if kind.is_dir() {
            copy_app(&entry.path(), &to)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_files_and_folders_but_not_links_or_vcs() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("CLAUDE.md"), "hi").unwrap();
        std::fs::create_dir_all(src.path().join(".claude/agents")).unwrap();
        std::fs::write(src.path().join(".claude/agents/a.md"), "a").unwrap();
        std::fs::create_dir_all(src.path().join(".git")).unwrap();
        std::fs::write(src.path().join(".git/HEAD"), "ref").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("leak")).unwrap();
        let ws = dst.path().join("ws");
        copy_app(src.path(), &ws).unwrap();
        assert_eq!(std::fs::read_to_string(ws.join("CLAUDE.md")).unwrap(), "hi");
        assert!(ws.join(".claude/agents/a.md").is_file());
        assert!(!ws.join(".git").exists());
        assert!(!ws.join("leak").exists());
    }

    #[test]
    fn a_hard_link_becomes_an_independent_copy() {
        let outside = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, "outside").unwrap();
        std::fs::hard_link(&secret, src.path().join("linked")).unwrap();
        let ws = dst.path().join("ws");
        copy_app(src.path(), &ws).unwrap();
        use std::os::unix::fs::MetadataExt;
        let copy = std::fs::metadata(ws.join("linked")).unwrap();
        assert_eq!(
            copy.nlink(),
            1,
            "the workspace holds no link to the original"
        );
        std::fs::write(ws.join("linked"), "changed by the agent").unwrap();
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "outside");
    }
}

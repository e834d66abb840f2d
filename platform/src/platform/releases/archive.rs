//! Guarded extraction of a release archive (`.tar.gz`). An archive comes from a client, so it
//! is hostile until proven otherwise: only plain files and folders are taken, every path must
//! stay inside the target, and sizes, member count and compression ratio are capped. A refusal
//! names the member and the rule; the caller removes the half-written target.

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use flate2::read::GzDecoder;
use tar::EntryType;

/// What an archive may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Unpacked bytes in all.
    pub max_unpacked_bytes: u64,
    /// Bytes of one file.
    pub max_file_bytes: u64,
    /// Members (files and folders).
    pub max_members: u64,
    /// Unpacked bytes per compressed byte (once past a mebibyte unpacked).
    pub max_ratio: u64,
}

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A member broke a rule.
    #[error("`{member}`: {rule}")]
    Refused {
        /// The member's path as written in the archive.
        member: String,
        /// The rule it broke.
        rule: String,
    },
    /// The archive is not a readable `.tar.gz`.
    #[error("not a readable .tar.gz archive: {0}")]
    Corrupt(String),
    /// Writing the tree failed.
    #[error("cannot write the release: {0}")]
    Io(#[from] std::io::Error),
}

/// What was unpacked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Files written.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Counts what passes through (the decompressed stream).
/// Counts what passes through (the decompressed stream) and stops it past `cap`: whatever the
/// tar reader consumes (headers, long names, PAX records, skipped data) is bounded, not only the
/// files written.
struct Counting<R> {
    inner: R,
    read: Rc<Cell<u64>>,
    cap: u64,
}

/// The error the capped stream gives.
const STREAM_CAP: &str = "karta: archive stream cap reached";

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.read.get() > self.cap {
            return Err(std::io::Error::other(STREAM_CAP));
        }
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

fn refuse(member: &str, rule: impl Into<String>) -> ArchiveError {
    ArchiveError::Refused {
        member: member.to_string(),
        rule: rule.into(),
    }
}

/// A folder that is a file in the archive (or the reverse) is the archive's fault, not ours.
fn clash(member: &str, e: std::io::Error) -> ArchiveError {
    match e.kind() {
        std::io::ErrorKind::AlreadyExists
        | std::io::ErrorKind::NotADirectory
        | std::io::ErrorKind::IsADirectory => refuse(
            member,
            "clashes with another member (a file and a folder of one name)",
        ),
        _ => ArchiveError::Io(e),
    }
}

/// The member's path made relative and checked: no absolute path, no `..`, nothing but plain
/// names. `None` for the archive's root (`./`).
pub fn safe_path(raw: &str) -> Result<Option<PathBuf>, ArchiveError> {
    let mut out = PathBuf::new();
    for c in Path::new(raw).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(refuse(raw, "a path may not go up (`..`)")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse(raw, "a path may not be absolute"))
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Unpacks `archive` into the folder `into` (which must exist and be empty).
pub fn unpack(archive: &Path, into: &Path, limits: &Limits) -> Result<Unpacked, ArchiveError> {
    let file = File::open(archive)?;
    let compressed = file.metadata()?.len().max(1);
    let read = Rc::new(Cell::new(0u64));
    // Headers and padding add a little to the files' bytes; past the unpacked cap (plus a MiB)
    // or the ratio, the stream itself stops.
    let cap = limits.max_unpacked_bytes.saturating_add(1024 * 1024).min(
        compressed
            .saturating_mul(limits.max_ratio)
            .max(2 * 1024 * 1024),
    );
    let stream = Counting {
        inner: GzDecoder::new(BufReader::new(file)),
        read: read.clone(),
        cap,
    };
    let capped = |e: &std::io::Error| e.to_string().contains(STREAM_CAP);
    let over = |member: &str| {
        refuse(
            member,
            format!(
                "the archive unpacks to more than {} bytes or expands more than {}-fold (a compression bomb)",
                limits.max_unpacked_bytes, limits.max_ratio
            ),
        )
    };
    let mut tar = tar::Archive::new(stream);
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut done = Unpacked::default();
    let mut members = 0u64;
    let entries = tar.entries().map_err(|e| match capped(&e) {
        true => over("(archive)"),
        false => ArchiveError::Corrupt(e.to_string()),
    })?;
    for entry in entries {
        let mut entry = entry.map_err(|e| match capped(&e) {
            true => over("(archive)"),
            false => ArchiveError::Corrupt(e.to_string()),
        })?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        // Extension records (PAX, GNU long names) describe other members; the reader applies
        // them (their bytes are bounded by the stream's cap).
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            continue;
        }
        members += 1;
        if members > limits.max_members {
            return Err(refuse(
                &raw,
                format!("the archive has more than {} members", limits.max_members),
            ));
        }
        let rel = safe_path(&raw)?;
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::Directory => {}
            EntryType::Symlink => return Err(refuse(&raw, "symbolic links are not allowed")),
            EntryType::Link => return Err(refuse(&raw, "hard links are not allowed")),
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(refuse(&raw, "device files and pipes are not allowed"))
            }
            other => {
                return Err(refuse(
                    &raw,
                    format!("entries of type {other:?} are not allowed"),
                ))
            }
        }
        let Some(rel) = rel else { continue };
        if !seen.insert(rel.clone()) {
            return Err(refuse(&raw, "the name appears twice in the archive"));
        }
        let target = into.join(&rel);
        if kind == EntryType::Directory {
            std::fs::create_dir_all(&target).map_err(|e| clash(&raw, e))?;
            continue;
        }
        // `size()` honours a PAX size record; the header's own field may not.
        let size = entry.size();
        if size > limits.max_file_bytes {
            return Err(refuse(
                &raw,
                format!("the file is larger than {} bytes", limits.max_file_bytes),
            ));
        }
        if done.bytes + size > limits.max_unpacked_bytes {
            return Err(refuse(
                &raw,
                format!(
                    "the archive unpacks to more than {} bytes",
                    limits.max_unpacked_bytes
                ),
            ));
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| clash(&raw, e))?;
        }
        let exec = entry.header().mode().unwrap_or(0) & 0o111 != 0;
        // `create_new`: a name can be written once (a folder of that name stops it too).
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if exec { 0o755 } else { 0o644 })
            .open(&target)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    refuse(&raw, "the name appears twice in the archive")
                }
                _ => clash(&raw, e),
            })?;
        let written = std::io::copy(&mut (&mut entry).take(size), &mut out).map_err(|e| {
            match capped(&e) {
                true => over(&raw),
                false => ArchiveError::Io(e),
            }
        })?;
        done.files += 1;
        done.bytes += written;
        let unpacked = read.get();
        if unpacked > 1024 * 1024 && unpacked / compressed > limits.max_ratio {
            return Err(refuse(
                &raw,
                format!(
                    "the archive expands more than {}-fold (a compression bomb)",
                    limits.max_ratio
                ),
            ));
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    const LIMITS: Limits = Limits {
        max_unpacked_bytes: 10 * 1024 * 1024,
        max_file_bytes: 4 * 1024 * 1024,
        max_members: 100,
        max_ratio: 50,
    };

    /// A raw tar header: the name written as is (the `tar` crate's builder refuses hostile
    /// names, which is what these tests need to write).
    fn header(name: &str, kind: EntryType, size: u64, link: &str) -> tar::Header {
        let mut h = tar::Header::new_old();
        let bytes = name.as_bytes();
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h
    }

    fn archive(dir: &Path, members: &[(&str, EntryType, Vec<u8>, &str)]) -> PathBuf {
        let path = dir.join("a.tar.gz");
        let gz = GzEncoder::new(File::create(&path).unwrap(), flate2::Compression::best());
        let mut b = tar::Builder::new(gz);
        for (name, kind, data, link) in members {
            let h = header(name, *kind, data.len() as u64, link);
            b.append(&h, &data[..]).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap().flush().unwrap();
        path
    }

    fn try_unpack(
        members: &[(&str, EntryType, Vec<u8>, &str)],
    ) -> (Result<Unpacked, ArchiveError>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let a = archive(dir.path(), members);
        let into = dir.path().join("out");
        std::fs::create_dir(&into).unwrap();
        (unpack(&a, &into, &LIMITS), dir)
    }

    fn refused(members: &[(&str, EntryType, Vec<u8>, &str)]) -> (String, String) {
        match try_unpack(members).0 {
            Err(ArchiveError::Refused { member, rule }) => (member, rule),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_app_unpacks() {
        let (r, dir) = try_unpack(&[
            ("./", EntryType::Directory, vec![], ""),
            ("CLAUDE.md", EntryType::Regular, b"hi".to_vec(), ""),
            ("skills/a/SKILL.md", EntryType::Regular, b"s".to_vec(), ""),
        ]);
        assert_eq!(r.unwrap(), Unpacked { files: 2, bytes: 3 });
        let out = dir.path().join("out");
        assert_eq!(
            std::fs::read_to_string(out.join("CLAUDE.md")).unwrap(),
            "hi"
        );
        assert!(out.join("skills/a/SKILL.md").is_file());
    }

    #[test]
    fn hostile_members_are_refused_by_name_and_rule() {
        let f = |n: &'static str, k: EntryType, link: &'static str| (n, k, vec![], link);
        let cases = [
            (f("../evil", EntryType::Regular, ""), "go up"),
            (f("a/../../evil", EntryType::Regular, ""), "go up"),
            (f("/etc/evil", EntryType::Regular, ""), "absolute"),
            (f("link", EntryType::Symlink, "/etc/passwd"), "symbolic"),
            (f("hard", EntryType::Link, "/etc/passwd"), "hard link"),
            (f("dev", EntryType::Char, ""), "device"),
            (f("fifo", EntryType::Fifo, ""), "device"),
        ];
        for (member, rule) in cases {
            let name = member.0;
            let (m, r) = refused(&[member]);
            assert_eq!(m, name);
            assert!(r.contains(rule), "{name}: {r}");
        }
        let (m, r) = refused(&[
            ("a", EntryType::Regular, b"1".to_vec(), ""),
            ("a/b", EntryType::Regular, b"2".to_vec(), ""),
        ]);
        assert_eq!(m, "a/b");
        assert!(r.contains("clashes"), "{r}");
        let (m, r) = refused(&[
            ("a.txt", EntryType::Regular, b"1".to_vec(), ""),
            ("./a.txt", EntryType::Regular, b"2".to_vec(), ""),
        ]);
        assert_eq!(m, "./a.txt");
        assert!(r.contains("twice"), "{r}");
    }

    #[test]
    fn bombs_and_crowds_are_refused() {
        // Compresses about a thousand-fold.
        let (m, r) = refused(&[("zeros", EntryType::Regular, vec![0u8; 3 * 1024 * 1024], "")]);
        assert_eq!(m, "zeros");
        assert!(r.contains("fold"), "{r}");
        // A bomb in a PAX header (read whole by the tar reader, never written as a file).
        let (_, r) = refused(&[
            ("pax", EntryType::XHeader, vec![b'0'; 8 * 1024 * 1024], ""),
            ("after", EntryType::Regular, b"x".to_vec(), ""),
        ]);
        assert!(r.contains("bomb"), "{r}");
        let big: Vec<u8> = (0..5 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let (_, r) = refused(&[("big", EntryType::Regular, big, "")]);
        assert!(r.contains("larger than"), "{r}");
        let names: Vec<String> = (0..101).map(|i| format!("f{i}")).collect();
        let many: Vec<_> = names
            .iter()
            .map(|n| (n.as_str(), EntryType::Regular, vec![], ""))
            .collect();
        let (_, r) = refused(&many);
        assert!(r.contains("more than 100 members"), "{r}");
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.tar.gz");
        std::fs::write(&junk, b"not gzip at all").unwrap();
        let into = dir.path().join("o");
        std::fs::create_dir(&into).unwrap();
        assert!(matches!(
            unpack(&junk, &into, &LIMITS),
            Err(ArchiveError::Corrupt(_))
        ));
    }
}

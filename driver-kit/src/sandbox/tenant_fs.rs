//! File operations the host does inside folders a tenant's processes can write (its workspace
//! and harness home). The host runs as root there, so it never goes through a path a tenant may
//! have swapped for a link: every step opens the next component relative to an open directory
//! with `O_NOFOLLOW`, and new entries are created exclusively and handed to the tenant at once.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

/// A tenant's uid and gid.
pub type Owner = (u32, u32);

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::other("a path holds a NUL byte"))
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Opens a directory, refusing a link as its last component.
fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: a valid C string; the returned descriptor is owned below.
    let fd = check(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a descriptor just opened and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_dir_at(dir: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: a valid directory descriptor and C string.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn stat_at(dir: &OwnedFd, name: &OsStr) -> io::Result<libc::stat> {
    let c = cstr(name)?;
    // SAFETY: zeroed plain-data struct filled by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, C string and out pointer.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

fn give(fd: &OwnedFd, owner: Option<Owner>) -> io::Result<()> {
    if let Some((uid, gid)) = owner {
        // SAFETY: a valid descriptor.
        check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })?;
    }
    Ok(())
}

/// Relative components only: no `..`, no root.
fn parts(rel: &Path) -> io::Result<Vec<&OsStr>> {
    rel.components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            Component::CurDir => Ok(OsStr::new(".")),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a plain relative path", rel.display()),
            )),
        })
        .filter(|p| !matches!(p, Ok(n) if *n == "."))
        .collect()
}

/// Creates `base/rel` folder by folder without following links, giving each folder it makes
/// to `owner`; returns the innermost folder, open.
pub fn ensure_dir(base: &Path, rel: &Path, owner: Option<Owner>) -> io::Result<OwnedFd> {
    let mut dir = open_dir(base)?;
    for name in parts(rel)? {
        let c = cstr(name)?;
        // SAFETY: valid descriptor and C string.
        let made = unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o700) };
        if made == -1 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e);
            }
        }
        let next = open_dir_at(&dir, name).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{}: not a folder Karta may use ({e})",
                    name.to_string_lossy()
                ),
            )
        })?;
        if made == 0 {
            give(&next, owner)?;
        }
        dir = next;
    }
    Ok(dir)
}

/// Writes `base/rel` unless it exists (returns whether it wrote), never through a link, and
/// gives it to `owner`.
pub fn write_new(
    base: &Path,
    rel: &Path,
    contents: &[u8],
    owner: Option<Owner>,
) -> io::Result<bool> {
    let name = rel
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let parent = rel.parent().unwrap_or(Path::new(""));
    let dir = ensure_dir(base, parent, owner)?;
    let c = cstr(name)?;
    // SAFETY: valid descriptor and C string.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd == -1 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EEXIST) {
            Ok(false)
        } else {
            Err(e)
        };
    }
    // SAFETY: a descriptor just opened and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    give(&fd, owner)?;
    let mut file = std::fs::File::from(fd);
    io::Write::write_all(&mut file, contents)?;
    Ok(true)
}

/// Opens `rel` beneath `base` for a harness's request (a file the agent asked its client to
/// read or write): the kernel resolves it without leaving `base` and without following any
/// link (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), so a link the agent planted
/// cannot point the host elsewhere. Only a regular file with one name is opened (never a FIFO
/// or device, which could block the host, nor a hard link to a file elsewhere). With `write`,
/// the file is created (and given to `owner`) or emptied; missing parent folders are made with
/// [`ensure_dir`]. Needs Linux 5.6 or later.
pub fn open_beneath(
    base: &Path,
    rel: &Path,
    write: bool,
    owner: Option<Owner>,
) -> io::Result<std::fs::File> {
    let name = rel
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let parent = rel.parent().unwrap_or(Path::new(""));
    parts(rel)?;
    let dir = if write {
        ensure_dir(base, parent, owner)?
    } else {
        let root = open_dir(base)?;
        if parent.as_os_str().is_empty() {
            root
        } else {
            openat2(
                &root,
                parent.as_os_str(),
                libc::O_RDONLY | libc::O_DIRECTORY,
            )?
        }
    };
    // Non-blocking while it is checked: opening a FIFO must not wait for a writer.
    let quiet = libc::O_NONBLOCK | libc::O_NOCTTY;
    let (fd, created) = if write {
        match openat2(
            &dir,
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | quiet,
        ) {
            Ok(fd) => (fd, true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                (openat2(&dir, name, libc::O_WRONLY | quiet)?, false)
            }
            Err(e) => return Err(e),
        }
    } else {
        (openat2(&dir, name, libc::O_RDONLY | quiet)?, false)
    };
    // SAFETY: zeroed plain-data struct filled by the kernel for a valid descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if st.st_nlink > 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a file with several names",
        ));
    }
    // SAFETY: valid descriptor; clears O_NONBLOCK for ordinary blocking I/O on a regular file.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, 0) })?;
    if write {
        check(unsafe { libc::ftruncate(fd.as_raw_fd(), 0) })?;
        if created {
            give(&fd, owner)?;
        }
    }
    Ok(std::fs::File::from(fd))
}

fn openat2(dir: &OwnedFd, name: &OsStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: a zeroed plain-data struct, then filled.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    how.mode = if flags & libc::O_CREAT != 0 { 0o644 } else { 0 };
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid descriptor, C string and `open_how` of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just opened and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Gives `dir` and everything under it that is not yet the tenant's to `owner` (links are
/// changed themselves, never followed), and makes `dir` private (0700). Folders that already
/// belong to the tenant are not descended into: everything the host puts inside them is created
/// with [`ensure_dir`] / [`write_new`], which hand it over at once.
pub fn chown_tree(dir: &Path, owner: Owner) -> io::Result<()> {
    let fd = open_dir(dir)?;
    // SAFETY: zeroed plain-data struct filled by the kernel for a valid descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    // SAFETY: a valid descriptor.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), 0o700) })?;
    if (st.st_uid, st.st_gid) != owner {
        give(&fd, Some(owner))?;
        walk(&fd, owner)?;
    }
    Ok(())
}

fn walk(dir: &OwnedFd, owner: Owner) -> io::Result<()> {
    // Read through the open descriptor: the listing is of this very folder.
    let listing = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
    for entry in listing {
        let entry = entry?;
        let name = entry.file_name();
        let Ok(st) = stat_at(dir, &name) else {
            continue;
        };
        if (st.st_uid, st.st_gid) == owner {
            continue;
        }
        let c = cstr(&name)?;
        // SAFETY: valid descriptor and C string.
        check(unsafe {
            libc::fchownat(
                dir.as_raw_fd(),
                c.as_ptr(),
                owner.0,
                owner.1,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            // Swapped for a link since the stat: opening refuses it.
            if let Ok(child) = open_dir_at(dir, &name) {
                walk(&child, owner)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_beneath_stays_inside_and_follows_no_link() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("ws");
        std::fs::create_dir(&base).unwrap();
        std::fs::write(d.path().join("secret"), "host secret").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), base.join("link")).unwrap();
        std::os::unix::fs::symlink(d.path(), base.join("up")).unwrap();
        let mut f = open_beneath(&base, Path::new("sub/new.txt"), true, None).unwrap();
        io::Write::write_all(&mut f, b"hello").unwrap();
        let mut s = String::new();
        io::Read::read_to_string(
            &mut open_beneath(&base, Path::new("sub/new.txt"), false, None).unwrap(),
            &mut s,
        )
        .unwrap();
        assert_eq!(s, "hello");
        for bad in ["link", "up/secret", "../secret", "/etc/passwd"] {
            assert!(
                open_beneath(&base, Path::new(bad), false, None).is_err(),
                "{bad}"
            );
            assert!(
                open_beneath(&base, Path::new(bad), true, None).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(d.path().join("secret")).unwrap(),
            "host secret"
        );
    }

    #[test]
    fn never_writes_through_a_link() {
        let base = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), base.path().join("evil")).unwrap();
        assert!(ensure_dir(base.path(), Path::new("evil/sub"), None).is_err());
        assert!(write_new(base.path(), Path::new("evil/file"), b"x", None).is_err());
        std::os::unix::fs::symlink(outside.path().join("new"), base.path().join("dangling"))
            .unwrap();
        // Something is there (a link): nothing is written, through it or over it.
        assert!(!matches!(
            write_new(base.path(), Path::new("dangling"), b"x", None),
            Ok(true)
        ));
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(ensure_dir(base.path(), Path::new("../x"), None).is_err());
    }

    #[test]
    fn writes_once_and_makes_folders() {
        let base = tempfile::tempdir().unwrap();
        assert!(write_new(base.path(), Path::new("a/b/c.json"), b"{}", None).unwrap());
        assert!(!write_new(base.path(), Path::new("a/b/c.json"), b"[]", None).unwrap());
        assert_eq!(
            std::fs::read_to_string(base.path().join("a/b/c.json")).unwrap(),
            "{}"
        );
    }
}

//! Finding a cgroup hierarchy Karta may make harness cgroups in.

use std::path::{Path, PathBuf};

use karta_driver_api::sandbox::CgroupSpec;

/// Whether a child folder can be made (and removed) in `dir`.
fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!("karta-probe-{}", std::process::id()));
    let ok = std::fs::create_dir(&probe).is_ok();
    if ok {
        let _ = std::fs::remove_dir(&probe);
    }
    ok
}

/// `root` when configured (a delegated cgroup v2 folder; `None` when it is not writable), else this process's own cgroups in
/// the v1 `memory` and `pids` hierarchies where they are writable. A pure cgroup v2 host needs
/// `root`: a cgroup that holds Karta itself cannot give controllers to children.
pub fn detect_cgroup(root: Option<&Path>) -> Option<CgroupSpec> {
    if let Some(root) = root {
        if writable(root) {
            return Some(CgroupSpec::V2 {
                parent: root.display().to_string(),
            });
        }
        return None;
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let find = |controller: &str| -> Option<PathBuf> {
        own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
            list.split(',').any(|c| c == controller).then(|| {
                Path::new("/sys/fs/cgroup")
                    .join(controller)
                    .join(path.trim_start_matches('/'))
            })
        })
    };
    let memory = find("memory").filter(|d| writable(d));
    let pids = find("pids").filter(|d| writable(d));
    if memory.is_none() && pids.is_none() {
        return None;
    }
    Some(CgroupSpec::V1 {
        memory: memory.map(|d| d.display().to_string()),
        pids: pids.map(|d| d.display().to_string()),
    })
}

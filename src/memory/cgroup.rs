//! Reading the daemon's own memory cgroup, v2 (unified) or v1, from `/proc/self/cgroup` and the
//! cgroup filesystem. Paths are parameters so tests can point at fixture trees.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Memory accounting of one cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CgroupMemory {
    /// `v2` or `v1`.
    pub version: &'static str,
    /// The cgroup directory read.
    pub path: PathBuf,
    /// Bytes charged to the cgroup now (`memory.current` / `memory.usage_in_bytes`).
    pub usage_bytes: Option<u64>,
    /// Hard limit (`memory.max` / `memory.limit_in_bytes`); `None` when unlimited.
    pub max_bytes: Option<u64>,
    /// Throttling limit (`memory.high`, v2 only); `None` when unlimited.
    pub high_bytes: Option<u64>,
}

/// v1 reports "no limit" as a huge page-aligned number rather than `max`.
const V1_UNLIMITED: u64 = 1 << 62;

fn read_u64(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    if text == "max" {
        return None;
    }
    text.parse().ok()
}

/// The memory cgroup of the process described by `proc_cgroup` (the text of
/// `/proc/self/cgroup`), under the cgroup filesystem mounted at `root`.
pub fn locate(proc_cgroup: &str, root: &Path) -> Option<CgroupMemory> {
    // v1: a line "N:memory:/path" (controllers may be comma-joined).
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, rel) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            let path = root.join("memory").join(rel.trim_start_matches('/'));
            if path.join("memory.usage_in_bytes").exists() {
                return Some(CgroupMemory {
                    version: "v1",
                    usage_bytes: read_u64(&path.join("memory.usage_in_bytes")),
                    max_bytes: read_u64(&path.join("memory.limit_in_bytes"))
                        .filter(|&l| l < V1_UNLIMITED),
                    high_bytes: None,
                    path,
                });
            }
        }
    }
    // v2: the line "0::/path".
    let rel = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let base = if root.join("cgroup.controllers").exists() {
        root.to_path_buf()
    } else {
        // Hybrid layouts mount the unified hierarchy at root/unified.
        root.join("unified")
    };
    let path = base.join(rel.trim_start_matches('/'));
    if !path.join("memory.current").exists() {
        return None;
    }
    Some(CgroupMemory {
        version: "v2",
        usage_bytes: read_u64(&path.join("memory.current")),
        max_bytes: read_u64(&path.join("memory.max")),
        high_bytes: read_u64(&path.join("memory.high")),
        path,
    })
}

/// The running daemon's memory cgroup, if it can be read.
pub fn current() -> Option<CgroupMemory> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    locate(&text, Path::new("/sys/fs/cgroup"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn reads_a_v2_tree() {
        let root = tempfile::tempdir().expect("tempdir");
        let g = root.path().join("system.slice/caxton.service");
        write(&root.path().join("cgroup.controllers"), "memory pids\n");
        write(&g.join("memory.current"), "123456\n");
        write(&g.join("memory.max"), "536870912\n");
        write(&g.join("memory.high"), "max\n");
        let m = locate("0::/system.slice/caxton.service\n", root.path()).expect("found");
        assert_eq!(m.version, "v2");
        assert_eq!(
            (m.usage_bytes, m.max_bytes, m.high_bytes),
            (Some(123456), Some(512 << 20), None)
        );
    }

    #[test]
    fn reads_a_v1_tree_and_treats_the_huge_default_as_unlimited() {
        let root = tempfile::tempdir().expect("tempdir");
        let g = root.path().join("memory/caxton");
        write(&g.join("memory.usage_in_bytes"), "4096\n");
        write(&g.join("memory.limit_in_bytes"), "9223372036854771712\n");
        let m = locate("9:pids:/\n4:memory:/caxton\n0::/\n", root.path()).expect("found");
        assert_eq!(
            (m.version, m.usage_bytes, m.max_bytes),
            ("v1", Some(4096), None)
        );
        write(&g.join("memory.limit_in_bytes"), "268435456\n");
        let m = locate("4:cpu,memory:/caxton\n", root.path()).expect("found");
        assert_eq!(m.max_bytes, Some(256 << 20));
    }

    #[test]
    fn nothing_to_read_is_none() {
        let root = tempfile::tempdir().expect("tempdir");
        assert_eq!(locate("0::/nowhere\n", root.path()), None);
    }
}

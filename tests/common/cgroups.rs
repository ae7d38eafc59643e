//! Memory cgroups made by tests (v2 where the memory controller is there, else v1), nested
//! when asked, removed on drop; and a co-tenant process that grows and frees memory in one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which hierarchy a group lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A memory cgroup made by a test; removed (after its processes are gone) on drop. Declare
/// children after their parent, so they are dropped first.
pub struct Group {
    pub dir: PathBuf,
    pub version: Version,
}

/// Where groups can be made here, or why not.
fn root() -> Result<(PathBuf, Version), String> {
    let v2 = Path::new("/sys/fs/cgroup");
    let controllers = std::fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "memory") {
        return Ok((v2.to_path_buf(), Version::V2));
    }
    let v1 = Path::new("/sys/fs/cgroup/memory");
    if v1.join("memory.limit_in_bytes").exists() {
        return Ok((v1.to_path_buf(), Version::V1));
    }
    Err("no cgroup v2 memory controller and no cgroup v1 memory hierarchy".into())
}

impl Group {
    /// A new top-level group `name` with `limit` bytes (none: unlimited), or why it cannot
    /// be made here (the caller prints the reason and skips).
    pub fn top(name: &str, limit: Option<u64>) -> Result<Group, String> {
        let (root, version) = root()?;
        if version == Version::V2 {
            // Children of the root get the memory controller only when the root hands it down.
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory");
        }
        Group::make(
            root.join(format!("{name}-{}", std::process::id())),
            version,
            limit,
        )
    }

    /// A child group of this one.
    pub fn child(&self, name: &str, limit: Option<u64>) -> Group {
        if self.version == Version::V2 {
            self.write("cgroup.subtree_control", "+memory");
        }
        Group::make(self.dir.join(name), self.version, limit)
            .unwrap_or_else(|e| panic!("cannot make a child group: {e}"))
    }

    fn make(dir: PathBuf, version: Version, limit: Option<u64>) -> Result<Group, String> {
        std::fs::create_dir(&dir)
            .map_err(|e| format!("cannot create {} ({e}); run as root", dir.display()))?;
        let g = Group { dir, version };
        if let Some(limit) = limit {
            g.write(g.limit_file(), &limit.to_string());
        }
        Ok(g)
    }

    fn limit_file(&self) -> &'static str {
        match self.version {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        }
    }

    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    pub fn write(&self, file: &str, value: &str) {
        std::fs::write(self.dir.join(file), value)
            .unwrap_or_else(|e| panic!("write {value} to {}/{file}: {e}", self.dir.display()));
    }

    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).expect("read cgroup file")
    }

    pub fn number(&self, file: &str) -> u64 {
        self.read(file).trim().parse().expect("number")
    }

    fn field(&self, file: &str, key: &str) -> u64 {
        self.read(file)
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Bytes charged to the group and its children.
    pub fn usage(&self) -> u64 {
        match self.version {
            Version::V1 => self.number("memory.usage_in_bytes"),
            Version::V2 => self.number("memory.current"),
        }
    }

    /// Usage less page cache: what reclaim cannot simply drop.
    pub fn working_set(&self) -> u64 {
        let cache = match self.version {
            Version::V1 => {
                self.field("memory.stat", "total_active_file")
                    + self.field("memory.stat", "total_inactive_file")
            }
            Version::V2 => {
                self.field("memory.stat", "active_file")
                    + self.field("memory.stat", "inactive_file")
            }
        };
        self.usage().saturating_sub(cache)
    }

    /// OOM kills the kernel counted in the group (and, on v2, below it).
    pub fn oom_kills(&self) -> u64 {
        match self.version {
            Version::V1 => self.field("memory.oom_control", "oom_kill"),
            Version::V2 => self.field("memory.events", "oom_kill"),
        }
    }

    /// Whether `pid` is in the group.
    pub fn holds(&self, pid: u32) -> bool {
        self.read("cgroup.procs")
            .lines()
            .any(|l| l.trim() == pid.to_string())
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A process that grows to `peak` bytes at `rate` bytes/s (touching every page, so it is
/// charged), holds them `hold`, frees them (unmapped, so they really go back), stays small
/// `quiet`, and starts again; killed on drop.
pub struct CoTenant {
    child: Child,
}

const COTENANT: &str = r#"
import mmap, sys, time
rate, peak, hold, quiet = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
step = max(rate // 20, 4096)
while True:
    maps, held, start = [], 0, time.monotonic()
    while held < peak:
        n = min(step, peak - held)
        m = mmap.mmap(-1, n)
        for i in range(0, n, 4096):
            m[i] = 1
        maps.append(m)
        held += n
        time.sleep(max(0.0, start + held / rate - time.monotonic()))
    time.sleep(hold)
    for m in maps:
        m.close()
    maps = None
    time.sleep(quiet)
"#;

impl CoTenant {
    /// Starts the co-tenant inside `group` (it joins before it allocates anything). `None`
    /// with the reason printed when python3 is not there.
    pub fn start(
        group: &Group,
        rate: u64,
        peak: u64,
        hold: Duration,
        quiet: Duration,
    ) -> Option<CoTenant> {
        if Command::new("python3").arg("--version").output().is_err() {
            super::skip::skip("python3 (the co-tenant) is not installed");
            return None;
        }
        let child = Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$PROCS\" && exec python3 -c \"$SCRIPT\" \"$@\"")
            .arg("cotenant")
            .arg(rate.to_string())
            .arg(peak.to_string())
            .arg(hold.as_secs_f64().to_string())
            .arg(quiet.as_secs_f64().to_string())
            .env("PROCS", group.procs())
            .env("SCRIPT", COTENANT)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn the co-tenant");
        Some(CoTenant { child })
    }

    /// Panics if the co-tenant died (an OOM kill, say).
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the co-tenant exited: {status}");
        }
    }
}

impl Drop for CoTenant {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

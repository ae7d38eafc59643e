//! The memory budget in force: a fixed size from the configuration, or `auto`, derived from
//! the lowest limit of the daemon's cgroup and its ancestors (the service's
//! `MemoryHigh=`/`MemoryMax=`, or a slice's), else from physical memory.

use serde::Serialize;

use super::hierarchy::{Kind, Level, lowest_limit};
use crate::config::Budget;

/// Share of the cgroup limit the models may take: the rest is the runtime, tokenizers, and
/// the activations of forward passes (tens of MiB per batch).
const CGROUP_SHARE: f64 = 0.75;
/// Share of physical memory when no cgroup limit applies: the device runs other services.
const PHYSICAL_SHARE: f64 = 0.5;

/// The budget in force and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    /// Bytes the models may hold together.
    pub bytes: u64,
    /// How it was derived, in words.
    pub from: String,
}

/// Resolves `setting` against the levels that bind the daemon (see
/// [`super::hierarchy::read`]) and the machine's physical memory.
pub fn resolve(setting: Budget, levels: &[Level], physical: u64) -> Resolved {
    if let Budget::Bytes(b) = setting {
        return Resolved {
            bytes: b.0,
            from: format!("memory.budget {b}"),
        };
    }
    let cgroups: Vec<Level> = levels
        .iter()
        .filter(|l| l.kind != Kind::System)
        .cloned()
        .collect();
    match lowest_limit(&cgroups).and_then(|l| Some((l, l.soft_bytes?))) {
        Some((l, v)) if v < physical => Resolved {
            bytes: (v as f64 * CGROUP_SHARE) as u64,
            from: format!(
                "auto: {:.0}% of cgroup {} {} ({} MiB) in {}",
                CGROUP_SHARE * 100.0,
                match l.kind {
                    Kind::V2 => "v2",
                    _ => "v1",
                },
                l.soft_name(),
                v >> 20,
                l.path.display()
            ),
        },
        _ => Resolved {
            bytes: (physical as f64 * PHYSICAL_SHARE) as u64,
            from: format!(
                "auto: {:.0}% of physical memory ({} MiB); no cgroup limit below it",
                PHYSICAL_SHARE * 100.0,
                physical >> 20
            ),
        },
    }
}

/// Physical memory of the machine, in bytes.
pub fn physical_memory() -> u64 {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    sys.total_memory()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;

    const GIB: u64 = 1 << 30;

    fn level(kind: Kind, path: &str, high: Option<u64>, max: Option<u64>) -> Level {
        Level {
            kind,
            path: path.into(),
            own: false,
            soft_bytes: match (high, max) {
                (Some(h), Some(m)) => Some(h.min(m)),
                (h, m) => h.or(m),
            },
            hard_bytes: max,
            working_set_bytes: 0,
            oom_kills: None,
        }
    }

    #[test]
    fn a_fixed_budget_is_taken_as_given() {
        let r = resolve(Budget::Bytes(ByteSize(512 << 20)), &[], 8 * GIB);
        assert_eq!(r.bytes, 512 << 20);
        assert_eq!(r.from, "memory.budget 512MiB");
    }

    #[test]
    fn auto_takes_the_lowest_limit_up_the_tree_then_physical_memory() {
        let own = level(Kind::V2, "/sys/fs/cgroup/caxton", Some(GIB), Some(2 * GIB));
        let r = resolve(Budget::Auto, std::slice::from_ref(&own), 8 * GIB);
        assert_eq!(r.bytes, 3 * GIB / 4);
        assert_eq!(
            r.from,
            "auto: 75% of cgroup v2 memory.high (1024 MiB) in /sys/fs/cgroup/caxton"
        );
        // A parent's lower limit binds: the slice's, not the service's.
        let slice = level(Kind::V2, "/sys/fs/cgroup/edge.slice", None, Some(GIB / 2));
        let r = resolve(Budget::Auto, &[own.clone(), slice], 8 * GIB);
        assert_eq!(r.bytes, 3 * GIB / 8);
        assert_eq!(
            r.from,
            "auto: 75% of cgroup v2 memory.max (512 MiB) in /sys/fs/cgroup/edge.slice"
        );
        let v1 = level(Kind::V1, "/sys/fs/cgroup/memory/x", None, Some(GIB));
        let r = resolve(Budget::Auto, &[v1], 8 * GIB);
        assert!(
            r.from
                .contains("cgroup v1 memory.limit_in_bytes (1024 MiB)"),
            "{}",
            r.from
        );
        let none = level(Kind::V2, "/sys/fs/cgroup/caxton", None, None);
        let system = level(Kind::System, "/proc/meminfo", None, Some(8 * GIB));
        let r = resolve(Budget::Auto, &[none, system], 8 * GIB);
        assert_eq!(r.bytes, 4 * GIB);
        assert_eq!(
            r.from,
            "auto: 50% of physical memory (8192 MiB); no cgroup limit below it"
        );
        // A limit above physical memory limits nothing.
        let big = level(Kind::V2, "/sys/fs/cgroup/caxton", None, Some(64 * GIB));
        let r = resolve(Budget::Auto, &[big], 8 * GIB);
        assert_eq!(r.bytes, 4 * GIB);
    }
}

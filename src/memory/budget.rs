//! The memory budget in force: a fixed size from the configuration, or `auto`, derived from
//! the limit of the daemon's own cgroup (the service's `MemoryHigh=`/`MemoryMax=`), else from
//! physical memory.

use serde::Serialize;

use super::cgroup::CgroupMemory;
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

/// Resolves `setting` against the daemon's cgroup and the machine's physical memory.
pub fn resolve(setting: Budget, cgroup: Option<&CgroupMemory>, physical: u64) -> Resolved {
    if let Budget::Bytes(b) = setting {
        return Resolved {
            bytes: b.0,
            from: format!("memory.budget {b}"),
        };
    }
    let limit = cgroup.and_then(|c| {
        let (name, v) = match (c.high_bytes, c.max_bytes) {
            (Some(h), _) => ("memory.high", h),
            (None, Some(m)) if c.version == "v1" => ("memory.limit_in_bytes", m),
            (None, Some(m)) => ("memory.max", m),
            (None, None) => return None,
        };
        Some((
            format!("{} {name}", c.version),
            c.path.display().to_string(),
            v,
        ))
    });
    match limit {
        Some((name, path, v)) if v < physical => Resolved {
            bytes: (v as f64 * CGROUP_SHARE) as u64,
            from: format!(
                "auto: {:.0}% of cgroup {name} ({} MiB) in {path}",
                CGROUP_SHARE * 100.0,
                v >> 20
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

    fn cg(version: &'static str, high: Option<u64>, max: Option<u64>) -> CgroupMemory {
        CgroupMemory {
            version,
            path: "/sys/fs/cgroup/caxton".into(),
            usage_bytes: Some(0),
            max_bytes: max,
            high_bytes: high,
        }
    }

    #[test]
    fn a_fixed_budget_is_taken_as_given() {
        let r = resolve(Budget::Bytes(ByteSize(512 << 20)), None, 8 * GIB);
        assert_eq!(r.bytes, 512 << 20);
        assert_eq!(r.from, "memory.budget 512MiB");
    }

    #[test]
    fn auto_prefers_memory_high_then_the_hard_limit_then_physical_memory() {
        let r = resolve(
            Budget::Auto,
            Some(&cg("v2", Some(GIB), Some(2 * GIB))),
            8 * GIB,
        );
        assert_eq!(r.bytes, 3 * GIB / 4);
        assert_eq!(
            r.from,
            "auto: 75% of cgroup v2 memory.high (1024 MiB) in /sys/fs/cgroup/caxton"
        );
        let r = resolve(Budget::Auto, Some(&cg("v2", None, Some(2 * GIB))), 8 * GIB);
        assert_eq!(r.bytes, 3 * GIB / 2);
        let r = resolve(Budget::Auto, Some(&cg("v1", None, Some(GIB))), 8 * GIB);
        assert!(
            r.from
                .contains("cgroup v1 memory.limit_in_bytes (1024 MiB)"),
            "{}",
            r.from
        );
        let r = resolve(Budget::Auto, Some(&cg("v2", None, None)), 8 * GIB);
        assert_eq!(r.bytes, 4 * GIB);
        assert_eq!(
            r.from,
            "auto: 50% of physical memory (8192 MiB); no cgroup limit below it"
        );
        // A limit above physical memory limits nothing.
        let r = resolve(Budget::Auto, Some(&cg("v2", None, Some(64 * GIB))), 8 * GIB);
        assert_eq!(r.bytes, 4 * GIB);
    }
}

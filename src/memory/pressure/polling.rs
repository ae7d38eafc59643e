//! The sources without a trigger, read at every tick: cgroup v2 files, the cgroup v1 memory
//! controller, and system-wide memory with `/proc/pressure/memory`.

use super::{Found, Probe, SourceKind};

/// Polling the daemon's cgroup v2, when it has the memory controller.
pub(super) fn cgroup_v2(found: &Found) -> Result<Probe, String> {
    let Some(dir) = found
        .dirs
        .v2
        .clone()
        .filter(|d| d.join("memory.current").exists())
    else {
        return Err("the daemon is in no cgroup v2 with the memory controller".into());
    };
    Ok(found.probe(
        SourceKind::CgroupV2,
        format!("polling {}", dir.display()),
        found.v2_psi.clone(),
        None,
    ))
}

/// Polling the daemon's cgroup v1 memory controller.
pub(super) fn cgroup_v1(found: &Found) -> Result<Probe, String> {
    let Some(dir) = found.dirs.v1.clone() else {
        return Err("the daemon is in no cgroup v1 memory controller".into());
    };
    Ok(found.probe(
        SourceKind::CgroupV1,
        format!("polling {}", dir.display()),
        None,
        None,
    ))
}

/// System-wide readings: always available.
pub(super) fn system(found: &Found) -> Probe {
    let psi = Some(found.paths.proc_pressure.clone()).filter(|p| p.exists());
    found.probe(
        SourceKind::System,
        "system-wide available memory and /proc/pressure/memory".into(),
        psi,
        None,
    )
}

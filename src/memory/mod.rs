//! Memory: what the daemon's models and process hold, the cgroup it runs in, the budget and
//! the policy that keeps models within it, pressure sources and shedding, and handing freed
//! memory back to the system.

pub mod budget;
pub mod cgroup;
pub mod governor;
pub mod hierarchy;
pub mod notify;
pub mod policy;
pub mod pressure;

/// Resident and peak resident set of this process, in bytes, from `/proc/self/status`.
pub fn process_rss() -> (Option<u64>, Option<u64>) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// What the C allocator holds, summed over every arena: bytes in live allocations, and bytes
/// in free chunks (including pages `malloc_trim` already handed back, so it can exceed RSS).
/// `None` off glibc. A leak grows the first; RSS that grows while it holds still is the heap
/// cut up by long-lived small allocations.
pub fn heap_usage() -> Option<(u64, u64)> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let info = unsafe { libc::mallinfo2() };
        // `uordblks` is in use in the arenas, `hblkhd` in whole mapped blocks; `fordblks` free.
        Some(((info.uordblks + info.hblkhd) as u64, info.fordblks as u64))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// Returns freed heap memory to the kernel. glibc keeps freed memory in its arenas, so dropping
/// a model's tensors alone does not lower RSS or the cgroup's usage; `malloc_trim` does.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Makes freed model memory really go back. glibc lets every thread that allocates take an
/// arena of its own (up to eight per core), and raises its mmap threshold to the size of the
/// largest mapped block freed (up to 32 MiB): after the first unload, weight tensors land on
/// arena heaps, interleaved with the next model's and the runtime's small allocations, where
/// `malloc_trim` cannot return what they pin, and RSS drifts tens of MiB above what the models
/// hold. Two arenas, and a fixed 1 MiB threshold (tensors are mapped and unmapped whole), keep
/// RSS at the daemon's base plus its models. Call before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

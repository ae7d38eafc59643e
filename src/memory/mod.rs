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

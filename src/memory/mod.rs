//! Memory: what the daemon's models and process hold, the cgroup it runs in, the budget and
//! the policy that keeps models within it, pressure sources and shedding, and handing freed
//! memory back to the system.

pub mod budget;
pub mod cgroup;
pub mod governor;
pub mod hierarchy;
pub mod monitor;
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

/// Caps glibc's malloc arenas at two. By default every thread that allocates may get an arena
/// of its own (up to eight per core); tokenization on the blocking pool and loads on loader
/// threads then scatter freed memory over many arenas, where `malloc_trim` cannot return what
/// small live allocations pin, and RSS drifts above what the models hold. Call before any
/// thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

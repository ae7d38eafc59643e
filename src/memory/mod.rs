//! Memory: what the daemon's models and process hold, the cgroup it runs in, the budget and
//! the policy that keeps models within it, pressure sources and shedding, and handing freed
//! memory back to the system.

pub mod budget;
pub mod cgroup;
pub mod footprints;
pub mod governor;
pub mod hierarchy;
pub mod load_queue;
pub mod notify;
pub mod policy;
pub mod pressure;
pub mod releasing;

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

/// Where glibc reads its allocator tunables from, once, as a process starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TUNABLES: &str = "GLIBC_TUNABLES";

/// Starts this program again, same process, arguments and descriptors, with glibc's per-thread
/// caches (tcache) off, unless they are already or the operator set a count. Each thread's
/// cache holds freed chunks as in use, pinning half-empty heap pages: with the caches on, a
/// daemon that loaded and unloaded a model 20 times (requests and a config reload between)
/// held 11.7 -> 14.6 MiB with no model loaded, still growing, heap in use 0.9 -> 2.1 MiB; with
/// them off 11.4 -> 12.0 MiB, flat from the fifth cycle, in use 1.2 MiB; speed unchanged within
/// the noise (one text and 32-text requests, 4 interleaved rounds). Only the environment can
/// set it, and only at start, so the process image is run anew. Call first, before any thread
/// starts; returns (with the caches on) only when that cannot be done.
pub fn without_thread_caches() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        const NO_TCACHE: &str = "glibc.malloc.tcache_count=0";
        let current = std::env::var(TUNABLES).unwrap_or_default();
        if tcache_count(&current).is_some() {
            return;
        }
        let tunables = match current.as_str() {
            "" => NO_TCACHE.to_string(),
            other => format!("{other}:{NO_TCACHE}"),
        };
        // The file's own path (from /proc/self/exe), not `/proc/self/exe` itself, whose name
        // the process would then carry in ps and the journal (`exe`).
        let program = match std::env::current_exe() {
            Ok(path) => path,
            Err(e) => {
                eprintln!(
                    "caxtond: cannot find its own program ({e}); glibc's per-thread caches stay on"
                );
                return;
            }
        };
        let mut args = std::env::args_os();
        let name = args.next().unwrap_or_else(|| "caxtond".into());
        let error = std::process::Command::new(program)
            .arg0(name)
            .args(args)
            .env(TUNABLES, tunables)
            .exec();
        eprintln!(
            "caxtond: cannot start again with glibc's per-thread caches off ({error}); running with them on"
        );
    }
}

/// How many chunks glibc's per-thread caches hold per size (`glibc.malloc.tcache_count` in
/// `GLIBC_TUNABLES`, as this process read it at start): 0 once [`without_thread_caches`] did
/// its work; `None` off glibc or when nothing set it (glibc's default, 7).
pub fn thread_cache_count() -> Option<u32> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        tcache_count(&std::env::var(TUNABLES).ok()?)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// The last `glibc.malloc.tcache_count` of a `GLIBC_TUNABLES` value (glibc's parser lets a
/// later setting win).
fn tcache_count(tunables: &str) -> Option<u32> {
    tunables
        .rsplit(':')
        .filter_map(|t| t.strip_prefix("glibc.malloc.tcache_count="))
        .find_map(|n| n.parse().ok())
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

#[cfg(test)]
mod tests {
    use super::tcache_count;

    #[test]
    fn the_thread_cache_count_is_the_last_one_set() {
        assert_eq!(tcache_count(""), None);
        assert_eq!(tcache_count("glibc.malloc.arena_max=4"), None);
        assert_eq!(tcache_count("glibc.malloc.tcache_count=0"), Some(0));
        assert_eq!(
            tcache_count("glibc.malloc.arena_max=4:glibc.malloc.tcache_count=3"),
            Some(3)
        );
        assert_eq!(
            tcache_count("glibc.malloc.tcache_count=3:glibc.malloc.tcache_count=0"),
            Some(0)
        );
        assert_eq!(tcache_count("glibc.malloc.tcache_count=lots"), None);
    }
}

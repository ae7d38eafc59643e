//! Memory: what the daemon's models and process hold, the cgroup it runs in, the budget and
//! the policy that keeps models within it, pressure sources and shedding, and handing freed
//! memory back to the system.

pub mod budget;
pub mod cgroup;
pub mod footprints;
pub mod governor;
pub mod hierarchy;
pub mod load_queue;
pub mod mapped;
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

/// Returns freed heap memory to the kernel. glibc keeps freed memory in its arenas (the
/// buffers of passes, a tokenizer's tables, a load's temporary copies), so dropping them alone
/// does not lower RSS or the cgroup's usage; `malloc_trim` does, in every arena. Weights need
/// no trim: they are unmapped as they drop ([`mapped`]).
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

/// How many chunks glibc's per-thread caches hold per size (`glibc.malloc.tcache_count` in
/// `GLIBC_TUNABLES`, as this process read it at start): what an operator set; `None` off
/// glibc or when nothing set it (glibc's default, 7). The daemon sets no allocator tunable:
/// model weights live in mappings of their own ([`mapped`]), so the allocator's defaults (an
/// arena per thread, per-thread caches) cost nothing when a model goes.
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

/// Fixes glibc's mmap threshold at 1 MiB, the one allocator setting the daemon makes. glibc
/// raises the threshold to the size of the largest mapped block freed (up to 32 MiB), and its
/// trim threshold to twice that; `malloc_trim` releases free chunks inside every arena but
/// never the top of a thread's arena, which only a free past the trim threshold shrinks. So a
/// load's temporary copies (widened f16 rows, a layer before it is packed), freed into the
/// top of the loader thread's arena, stayed resident: 25 of a 117 MiB load after its unload.
/// Fixed, blocks of 1 MiB and more are mapped and unmapped whole, and a top past 128 KiB
/// shrinks as it is freed. Arenas and per-thread caches keep glibc's defaults: capping them
/// made a 16-core box's threads queue on two locks (issue 60). Call before any thread starts.
pub fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before other threads exist.
    unsafe {
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

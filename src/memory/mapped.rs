//! Model weights in anonymous mappings of their own, outside the C allocator.
//!
//! glibc's malloc puts a block in whichever arena its thread uses and, once a large mapped
//! block has been freed, raises the size it maps whole (up to 32 MiB): after the first unload
//! a model's tensors landed on arena heaps beside the next model's and the runtime's small
//! blocks, where `malloc_trim` could not return what those pinned. Capping the arenas at two
//! and fixing the threshold kept RSS honest, but made every thread of a 16-core box queue on
//! two allocator locks (issue 60: a 16-core Xeon served no more than 4 cores). A weight buffer
//! here is its own `mmap`, unmapped whole when the model drops it: its pages leave RSS and the
//! cgroup's usage at once, whatever the allocator does with small blocks, and the allocator
//! keeps its defaults (an arena per thread, per-thread caches) for everything else.
//!
//! The mappings are named `[anon:caxton weights]` in `/proc/PID/maps` where the kernel names
//! anonymous mappings (`CONFIG_ANON_VMA_NAME`), and left out of core dumps. One of 2 MiB or
//! more starts on a 2 MiB boundary and asks for transparent huge pages (`MADV_HUGEPAGE`, which
//! the kernels' `madvise` mode needs): a pass streams every weight, and with 4 KiB pages one
//! short text in f32 (42 MB of MiniLM's weights) took 3.65 to 4.00 ms in process, with huge
//! pages 3.05 to 3.29 ms (Intel Xeon, 2 cores, 3 interleaved runs of `examples/single`).

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Element types a mapping may hold: plain numbers, for which the zero pages a fresh
/// anonymous mapping starts with are a valid value.
///
/// # Safety
/// Every bit pattern of zero bytes must be a valid `Self`, and `Self` must own nothing.
pub unsafe trait Plain: Copy + Send + Sync + 'static {}

// SAFETY: all-zero bytes are 0 (or 0.0) for every primitive number.
unsafe impl Plain for f32 {}
// SAFETY: as above.
unsafe impl Plain for i8 {}
// SAFETY: as above.
unsafe impl Plain for u8 {}
// SAFETY: as above.
unsafe impl Plain for i16 {}
// SAFETY: as above.
unsafe impl Plain for u16 {}
// SAFETY: as above.
unsafe impl Plain for i32 {}
// SAFETY: as above.
unsafe impl Plain for u32 {}

/// What `/proc/PID/maps` calls the mappings, where the kernel names them.
const NAME: &std::ffi::CStr = c"caxton weights";

/// Bytes mapped by live [`Mapped`] buffers (whole pages).
static BYTES: AtomicU64 = AtomicU64::new(0);

/// Every live mapping: start address → length in bytes (whole pages). Touched only when a
/// buffer is made or dropped (a model's load and unload), never by a pass.
static LIVE: Mutex<BTreeMap<usize, usize>> = Mutex::new(BTreeMap::new());

/// A fixed-length buffer of `T` in an anonymous mapping of its own (see the module's doc).
/// Derefs to a slice; unmapped on drop.
pub struct Mapped<T: Plain> {
    /// The mapping's start (dangling when `len` is 0: nothing is mapped).
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: the buffer owns its mapping and `T` is plain data, `Send` and `Sync`.
unsafe impl<T: Plain> Send for Mapped<T> {}
// SAFETY: shared access only reads through `&[T]`.
unsafe impl<T: Plain> Sync for Mapped<T> {}

/// Bytes of the pages that hold `len` values of `T`.
fn mapped_len<T>(len: usize) -> usize {
    let bytes = len
        .checked_mul(std::mem::size_of::<T>())
        .expect("a weight buffer's size overflows");
    bytes.div_ceil(page_size()) * page_size()
}

fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .map_or(4096, |p| p as usize)
    })
}

impl<T: Plain> Mapped<T> {
    /// `len` zeros in a new mapping. Like `Vec`, aborts the process when the kernel has no
    /// memory to map (`handle_alloc_error`).
    pub fn zeroed(len: usize) -> Self {
        let Some(bytes) = NonZeroUsize::new(mapped_len::<T>(len)) else {
            return Mapped {
                ptr: NonNull::dangling(),
                len: 0,
            };
        };
        let Ok(start) = map(bytes) else {
            let layout = std::alloc::Layout::from_size_align(bytes.get(), page_size())
                .unwrap_or(std::alloc::Layout::new::<T>());
            std::alloc::handle_alloc_error(layout);
        };
        advise(start, bytes);
        BYTES.fetch_add(bytes.get() as u64, Ordering::Relaxed);
        live().insert(start.as_ptr() as usize, bytes.get());
        Mapped {
            ptr: start.cast(),
            len,
        }
    }

    /// A copy of `values` in a new mapping.
    pub fn from_slice(values: &[T]) -> Self {
        let mut m = Self::zeroed(values.len());
        m.copy_from_slice(values);
        m
    }

    /// Bytes of the values (not of the whole pages).
    pub fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
}

/// Transparent huge pages: a buffer of at least this many bytes starts on such a boundary, so
/// its whole 2 MiB stretches can be backed by huge pages (its tail stays in small pages, never
/// rounded up).
const HUGE: usize = 2 << 20;

/// A new mapping of `bytes` (whole pages), starting on a [`HUGE`] boundary when it is at
/// least that long.
fn map(bytes: NonZeroUsize) -> nix::Result<NonNull<c_void>> {
    use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags, madvise, mmap_anonymous, munmap};
    let huge = bytes.get() >= HUGE;
    let len = match huge {
        true => bytes.saturating_add(HUGE - page_size()),
        false => bytes,
    };
    // SAFETY: a fresh private anonymous mapping at an address the kernel picks aliases
    // nothing.
    let start = unsafe {
        mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE,
        )?
    };
    if !huge {
        return Ok(start);
    }
    let base = start.as_ptr() as usize;
    let aligned = base.next_multiple_of(HUGE);
    let end = base + len.get();
    let tail = aligned + bytes.get();
    // SAFETY: both ranges lie inside the mapping just made, outside the part kept.
    unsafe {
        if let Some(head) = NonNull::new(base as *mut c_void).filter(|_| aligned > base) {
            munmap(head, aligned - base)?;
        }
        if let Some(rest) = NonNull::new(tail as *mut c_void).filter(|_| end > tail) {
            munmap(rest, end - tail)?;
        }
    }
    let kept = NonNull::new(aligned as *mut c_void).unwrap_or(start);
    // SAFETY: the kept range is the mapping's; the advice changes no contents. Where the
    // kernel has no transparent huge pages it refuses, and small pages serve.
    let _ = unsafe { madvise(kept, bytes.get(), MmapAdvise::MADV_HUGEPAGE) };
    Ok(kept)
}

/// Names the mapping and leaves it out of core dumps, where the kernel can: neither changes
/// what the buffer holds, so a refusal is ignored.
fn advise(start: NonNull<c_void>, bytes: NonZeroUsize) {
    let _ = nix::sys::prctl::set_vma_anon_name(start, bytes, Some(NAME));
    // SAFETY: the range is the mapping just made; MADV_DONTDUMP changes no contents.
    let _ = unsafe {
        nix::sys::mman::madvise(
            start,
            bytes.get(),
            nix::sys::mman::MmapAdvise::MADV_DONTDUMP,
        )
    };
}

fn live() -> std::sync::MutexGuard<'static, BTreeMap<usize, usize>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T: Plain> Drop for Mapped<T> {
    fn drop(&mut self) {
        let bytes = mapped_len::<T>(self.len);
        if bytes == 0 {
            return;
        }
        live().remove(&(self.ptr.as_ptr() as usize));
        BYTES.fetch_sub(bytes as u64, Ordering::Relaxed);
        // SAFETY: the mapping is this buffer's own, `bytes` long, and nothing borrows it once
        // the buffer drops.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), bytes) };
    }
}

impl<T: Plain> Deref for Mapped<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `len` values, initialised (zero pages at least), live as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Plain> DerefMut for Mapped<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`, and `&mut self` is the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Plain> Default for Mapped<T> {
    fn default() -> Self {
        Self::zeroed(0)
    }
}

impl<T: Plain> Clone for Mapped<T> {
    fn clone(&self) -> Self {
        Self::from_slice(self)
    }
}

impl<T: Plain + std::fmt::Debug> std::fmt::Debug for Mapped<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Plain + PartialEq> PartialEq for Mapped<T> {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl<'a, T: Plain> IntoIterator for &'a Mapped<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T: Plain> From<Vec<T>> for Mapped<T> {
    /// Moves the values into a mapping; the vector's heap block is freed at once.
    fn from(values: Vec<T>) -> Self {
        Self::from_slice(&values)
    }
}

impl<T: Plain> From<&[T]> for Mapped<T> {
    fn from(values: &[T]) -> Self {
        Self::from_slice(values)
    }
}

impl<T: Plain> FromIterator<T> for Mapped<T> {
    /// Collects into a vector first (the length is not known ahead): for small buffers; a
    /// large one is better filled in place from [`Mapped::zeroed`].
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Self::from(iter.into_iter().collect::<Vec<T>>())
    }
}

/// Bytes of every live weight mapping in this process (whole pages).
pub fn mapped_bytes() -> u64 {
    BYTES.load(Ordering::Relaxed)
}

/// Every live weight mapping as (start address, bytes): what tests look for in
/// `/proc/self/maps`.
pub fn mappings() -> Vec<(usize, usize)> {
    live().iter().map(|(&a, &b)| (a, b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `[start, start + len)` lies inside a mapping of `/proc/self/maps`.
    fn mapped(start: usize, len: usize) -> bool {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
        maps.lines().any(|l| {
            let range = l.split_whitespace().next().unwrap_or("");
            let (a, b) = range.split_once('-').unwrap_or(("", ""));
            let a = usize::from_str_radix(a, 16).unwrap_or(usize::MAX);
            let b = usize::from_str_radix(b, 16).unwrap_or(0);
            a <= start && start + len <= b
        })
    }

    #[test]
    fn a_buffer_is_a_mapping_of_its_own_until_it_drops() {
        let mut m = Mapped::<f32>::zeroed(300_000);
        assert!(m.iter().all(|&v| v == 0.0));
        m[299_999] = 2.5;
        let (start, len) = (m.as_ptr() as usize, mapped_len::<f32>(m.len()));
        assert_eq!(start % page_size(), 0, "a mapping starts on a page");
        assert!(mappings().contains(&(start, len)));
        assert!(mapped(start, len));
        assert_eq!(m.bytes(), 1_200_000);
        let copy = m.clone();
        assert_eq!(copy[299_999], 2.5);
        assert_ne!(copy.as_ptr(), m.as_ptr());
        drop(m);
        // Other tests map and unmap at the same time, so the range itself may be reused at
        // once; tests/weights_mapped.rs checks /proc in a process of its own.
        assert!(!mappings().contains(&(start, len)));
    }

    #[test]
    fn empty_buffers_map_nothing_and_conversions_keep_the_values() {
        let e = Mapped::<i8>::zeroed(0);
        assert!(e.is_empty());
        assert_eq!(Mapped::<u16>::default().len(), 0);
        let v: Mapped<i32> = vec![1, -2, 3].into();
        assert_eq!(&v[..], &[1, -2, 3]);
        let c: Mapped<u8> = (0..10u8).collect();
        assert_eq!(c.iter().map(|&x| x as u32).sum::<u32>(), 45);
        assert_eq!(Mapped::from(&[1.5f32][..]), Mapped::from(vec![1.5f32]));
        let starts = [v.as_ptr() as usize, c.as_ptr() as usize];
        assert!(starts.iter().all(|s| mappings().iter().any(|m| m.0 == *s)));
    }
}

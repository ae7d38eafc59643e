//! Issue 60: a loaded model's weights sit in anonymous mappings of their own, outside the C
//! allocator, and are unmapped when the model goes, whatever the allocator does with the
//! small blocks around them. Until then two malloc arenas and a fixed mmap threshold kept
//! tensors out of arena heaps, and made every thread of a 16-core box queue on two locks.
//!
//! In process (its own test binary, one test, so nothing else maps or frees meanwhile): the
//! bundled model in every precision this CPU runs.

mod common;

use std::time::{Duration, Instant};

use caxton::engine::{Cut, Precision, VectorShape};
use caxton::memory::mapped;

/// The mappings of `/proc/self/maps` as (start, end).
fn maps() -> Vec<(usize, usize)> {
    std::fs::read_to_string("/proc/self/maps")
        .expect("/proc/self/maps")
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect()
}

/// Whether any byte of `[start, start + len)` is mapped.
fn touches(maps: &[(usize, usize)], (start, len): (usize, usize)) -> bool {
    maps.iter().any(|&(a, b)| a < start + len && start < b)
}

/// Bytes the allocator holds in live blocks (glibc's `mallinfo2`, mapped blocks included).
fn heap_in_use() -> u64 {
    caxton::memory::heap_usage().map_or(0, |h| h.0)
}

#[test]
fn a_models_weights_are_mappings_of_their_own_and_go_with_it() {
    if !cfg!(target_os = "linux") {
        common::skip::skip("needs /proc/self/maps (Linux)");
        return;
    }
    let package = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("bundled-models/all-MiniLM-L6-v2.tar.zst");
    let mut precisions = vec![Precision::F32, Precision::Int8, Precision::Int8Fast];
    if common::engine::bf16_runs_here() {
        precisions.push(Precision::Bf16);
    }
    let rt = common::engine::runtime();
    for precision in precisions {
        let state = tempfile::tempdir().expect("tempdir");
        assert_eq!(mapped::mapped_bytes(), 0, "mappings before the load");
        let heap_before = heap_in_use();
        let model = common::engine::load_package(&package, state.path(), precision);
        caxton::memory::trim();
        let ranges = mapped::mappings();
        let total: usize = ranges.iter().map(|r| r.1).sum();
        let weights = model.weight_bytes;
        let heap_grown = heap_in_use().saturating_sub(heap_before);
        println!(
            "{precision}: weights {} KiB in {} mappings of {} KiB; the allocator grew by {} KiB",
            weights >> 10,
            ranges.len(),
            total >> 10,
            heap_grown >> 10
        );
        // Every weight is in a mapping (a mapping is whole pages, a buffer a few of them).
        assert_eq!(total as u64, mapped::mapped_bytes());
        assert!(
            total as u64 >= weights,
            "{total} mapped < {weights} of weights"
        );
        assert!(
            (total as u64) < weights + ranges.len() as u64 * 4096,
            "{total} mapped for {weights} of weights in {} buffers",
            ranges.len()
        );
        let now = maps();
        assert!(ranges.iter().all(|r| maps_whole(&now, *r)), "{ranges:x?}");
        // The allocator holds the tokenizer, the engine thread's pass buffers (kept until it
        // idles) and the runtime, not the weights: with them it grew by more than they are.
        assert!(
            heap_grown < weights,
            "{precision}: the allocator grew by {heap_grown} bytes beside {weights} of weights"
        );
        let text = model
            .tokenizer
            .encode_cut("the weights serve from their mappings", Cut::End)
            .expect("tokenized");
        let v = rt
            .block_on(model.embed(vec![text], VectorShape::default()))
            .expect("embedded");
        assert_eq!(v[0].len(), 384);

        // Small blocks allocated between the load and the unload, as requests leave them:
        // they pinned arena pages under tensors once; mappings do not care.
        let pins: Vec<String> = (0..20_000).map(|i| format!("pin {i}")).collect();
        let mut freed = model.freed();
        drop(model);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !*freed.borrow_and_update() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            *freed.borrow(),
            "{precision}: the engine thread never freed the model"
        );
        assert_eq!(mapped::mapped_bytes(), 0, "{precision}: mappings left");
        let now = maps();
        let left: Vec<_> = ranges.iter().filter(|r| touches(&now, **r)).collect();
        assert!(left.is_empty(), "{precision}: still mapped: {left:x?}");
        drop(pins);
    }
}

/// Whether `[start, start + len)` lies inside one mapping.
fn maps_whole(maps: &[(usize, usize)], (start, len): (usize, usize)) -> bool {
    maps.iter().any(|&(a, b)| a <= start && start + len <= b)
}

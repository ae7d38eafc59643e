//! N threads allocating a pass's buffers at once, under the allocator settings the daemon
//! had until issue 60 (`--capped`: two arenas, a fixed 1 MiB mmap threshold; run it with
//! `GLIBC_TUNABLES=glibc.malloc.tcache_count=0` for the per-thread caches off, as the daemon
//! did) or those it has now (a fixed 1 MiB mmap threshold, glibc's arenas and caches).
//! `bench/allocator` runs both at 1 to 16 threads and prints the table.
//!
//! What each thread allocates, per request, is what a batch-32 request of short texts made
//! the daemon allocate: per text the tokenizer's strings and id vectors, the pass's token
//! vectors (600 rows of 384 floats), a vector per text, and the JSON answer grown as
//! serde_json grows it. Each block is written to, so its pages are touched as real ones are.
//!
//!   cargo run --release --example alloc_threads -- [--capped] [--threads 1,2,4,8,16] [--seconds S]

use std::hint::black_box;
use std::time::{Duration, Instant};

/// One request's worth of allocations; returns a checksum so nothing is optimised away.
// The vectors are the point: each is an allocation a request makes.
#[allow(clippy::useless_vec)]
fn request(seed: usize) -> usize {
    let mut sum = 0usize;
    let mut texts = Vec::with_capacity(32);
    for t in 0..32 {
        // The tokenizer: ~19 token strings, ids, type ids, offsets, a mask.
        let tokens: Vec<String> = (0..19)
            .map(|i| format!("tok{}", (seed + t * 31 + i) % 977))
            .collect();
        let ids: Vec<u32> = (0..19).map(|i| (seed + i) as u32).collect();
        let types = vec![0u32; 19];
        let offsets: Vec<(usize, usize)> = (0..19).map(|i| (i, i + 3)).collect();
        let mask = vec![1u32; 19];
        sum += tokens.iter().map(String::len).sum::<usize>() + ids.len() + types.len();
        texts.push((tokens, ids, offsets, mask));
    }
    // The pass's token vectors and a pooled vector per text.
    let mut x = vec![0f32; 600 * 384];
    let at = seed % x.len();
    x[at] = 1.0;
    let vectors: Vec<Vec<f32>> = (0..32).map(|i| vec![i as f32; 384]).collect();
    // The answer, grown as a writer grows it.
    let mut json = String::new();
    for v in &vectors {
        for f in v.iter().take(384) {
            json.push_str(&f.to_string());
            json.push(',');
        }
    }
    sum += json.len() + x.len() + black_box(&texts).len();
    sum
}

fn main() {
    let mut capped = false;
    let mut threads = vec![1, 2, 4, 8, 16];
    let mut seconds = 2.0f64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--capped" => capped = true,
            "--threads" => {
                threads = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|n| n.parse().ok())
                    .collect()
            }
            "--seconds" => seconds = args.next().and_then(|s| s.parse().ok()).unwrap_or(2.0),
            _ => {
                eprintln!("usage: alloc_threads [--capped] [--threads 1,2,4,8,16] [--seconds S]");
                std::process::exit(2);
            }
        }
    }
    // SAFETY: mallopt only sets allocator parameters; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        if capped {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
    let caches = caxton::memory::thread_cache_count()
        .map_or("7 (glibc's default)".into(), |n| n.to_string());
    println!(
        "allocator: {}, per-thread cache count {caches}",
        if capped {
            "two arenas, mmap threshold 1 MiB"
        } else {
            "glibc's arenas, mmap threshold 1 MiB"
        }
    );
    for &n in &threads {
        let run = Duration::from_secs_f64(seconds);
        let started = Instant::now();
        let counts: Vec<usize> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..n)
                .map(|t| {
                    s.spawn(move || {
                        let mut done = 0;
                        let mut sum = 0;
                        while started.elapsed() < run {
                            sum += request(t * 7919 + done);
                            done += 1;
                        }
                        black_box(sum);
                        done
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap_or(0)).collect()
        });
        let total: usize = counts.iter().sum();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "threads {n:>2}: {:>8.0} requests' allocations/s",
            total as f64 / secs
        );
    }
}

//! How a linear layer's product is cut into tasks for the compute pool. A layer is a grid of
//! row blocks × column units (f32 panels, or int8 panel groups); a task takes a rectangle of
//! it. Few tasks leave threads idle: MiniLM's 384-wide layers are 4 f32 panels, so a batch
//! cut by panels alone ran on 4 of 16 cores. Small tasks cost what every task costs again
//! (gemm packs its operands per call; an int8 tile reuses a row's activations across its
//! panels). So the cut is the one whose tasks end soonest on the pool, counting a task's
//! cost as its share of the grid, and among those the one with the largest tasks.

/// Rounds of `tasks` equal tasks on `threads` threads.
fn rounds(tasks: usize, threads: usize) -> usize {
    tasks.div_ceil(threads.max(1))
}

/// How many column units a task takes, at most `most` (what the kernel's tile takes at once):
/// `most` while that makes a task for every thread; else the count whose tasks
/// (`row_tasks` × ⌈`units` / count⌉ of them) end soonest on `threads` threads, and the largest
/// count at a tie.
pub fn units_per_task(units: usize, most: usize, row_tasks: usize, threads: usize) -> usize {
    let most = most.clamp(1, units.max(1));
    if row_tasks * units.div_ceil(most) >= threads {
        return most;
    }
    // The span of the last round, in units per row block: rounds × units per task.
    (1..=most)
        .rev()
        .min_by_key(|&per| rounds(row_tasks * units.div_ceil(per), threads) * per)
        .unwrap_or(1)
}

/// Into how many chunks of rows (each at least `min_rows`, but at least one chunk) a product
/// of `rows` rows over `units` column units is cut, one task per chunk and unit: the count
/// whose tasks end soonest on `threads` threads, and the smallest count at a tie.
pub fn row_chunks(rows: usize, units: usize, min_rows: usize, threads: usize) -> usize {
    let most = (rows / min_rows.max(1)).max(1);
    // A chunk count `c` ends after rounds(units · c) tasks of 1/c of the rows each. Compared
    // as fractions, rounds_a / c_a < rounds_b / c_b, so no float rounding picks a tie's
    // larger count.
    let mut best = (rounds(units, threads), 1);
    for chunks in 2..=most {
        let r = rounds(units * chunks, threads);
        if r * best.1 < best.0 * chunks {
            best = (r, chunks);
        }
    }
    best.1
}

/// The first row and row count of chunk `chunk` of `chunks` over `rows` rows (the last ones
/// may be short, or empty when rounding left them nothing).
pub fn chunk_rows(rows: usize, chunks: usize, chunk: usize) -> (usize, usize) {
    let size = rows.div_ceil(chunks.max(1));
    let first = (chunk * size).min(rows);
    (first, size.min(rows - first))
}

/// Runs `task(first_row, rows, unit)` on the pool for every chunk of rows × unit of the cut
/// [`row_chunks`] picks for `threads` threads (chunks of at least `min_rows`), a chunk's units
/// in a row, so a thread's run of tasks keeps its rows in cache.
pub fn for_each_chunk(
    rows: usize,
    units: usize,
    min_rows: usize,
    threads: usize,
    task: impl Fn(usize, usize, usize) + Send + Sync,
) {
    use rayon::prelude::*;
    let chunks = row_chunks(rows, units, min_rows, threads);
    (0..chunks * units).into_par_iter().for_each(|t| {
        let (first_row, count) = chunk_rows(rows, chunks, t / units);
        if count > 0 {
            task(first_row, count, t % units);
        }
    });
}

/// `f` on a compute pool of its own with `threads` threads (more than the cores is fine): a
/// kernel's cut for a machine of that many cores, on any machine.
#[cfg(test)]
pub fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
        .install(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The share of the pool's time a cut keeps busy: work / (threads × the last task's end),
    /// with every task's cost its rows × units.
    fn efficiency(rows: usize, units: usize, chunks: usize, threads: usize) -> f64 {
        let mut ends = vec![0usize; threads];
        for c in 0..chunks {
            let (_, count) = chunk_rows(rows, chunks, c);
            for _ in 0..units {
                // Greedy list scheduling, as a pool hands out tasks.
                let least = ends.iter_mut().min().expect("threads > 0");
                *least += count;
            }
        }
        let end = ends.into_iter().max().unwrap_or(0);
        (rows * units) as f64 / (threads * end) as f64
    }

    #[test]
    fn two_threads_keep_the_cut_they_had() {
        // MiniLM (384, 1,152 and 1,536 outputs: 4, 12 and 16 panels) and MPNet (8, 24, 32
        // panels) over 32 short texts: one task per panel, all rows, as before.
        for panels in [4, 8, 12, 16, 24, 32] {
            assert_eq!(row_chunks(420, panels, 32, 2), 1, "{panels} panels");
        }
        // int8-fast's tiles of 4 panels of 16 outputs, one text (one row block).
        assert_eq!(units_per_task(24, 4, 1, 2), 4);
        assert_eq!(units_per_task(96, 4, 1, 2), 4);
    }

    #[test]
    fn sixteen_threads_all_have_work_on_a_narrow_layer() {
        // The cut by panels alone: 4 panels on 16 threads keep a quarter of them busy.
        assert!(efficiency(420, 4, 1, 16) <= 0.25);
        for (rows, panels) in [
            (420, 4),
            (420, 12),
            (420, 16),
            (4096, 4),
            (4096, 8),
            (200, 4),
        ] {
            for threads in [2, 4, 8, 16] {
                let chunks = row_chunks(rows, panels, 32, threads);
                let (_, size) = chunk_rows(rows, chunks, 0);
                assert!(chunks == 1 || size >= 32, "{rows} rows in chunks of {size}");
                let e = efficiency(rows, panels, chunks, threads);
                assert!(
                    e >= 0.74,
                    "{rows} rows × {panels} panels on {threads} threads: {chunks} chunks keep {e:.2} busy"
                );
            }
        }
        // One text through int8-fast's 384-wide layer (24 panels of 16) on 16 threads: tiles
        // of 2 panels, 12 tasks, all ending in one round (4 per task left 10 threads idle).
        assert_eq!(units_per_task(24, 4, 1, 16), 2);
        assert_eq!(units_per_task(96, 4, 1, 16), 4);
        assert_eq!(units_per_task(24, 4, 9, 16), 4);
    }

    #[test]
    fn too_few_rows_for_a_second_chunk_stay_whole() {
        assert_eq!(row_chunks(40, 4, 32, 16), 1);
        assert_eq!(row_chunks(0, 4, 32, 16), 1);
        assert_eq!(chunk_rows(10, 4, 3), (9, 1));
        assert_eq!(chunk_rows(9, 4, 3), (9, 0));
        assert_eq!(units_per_task(0, 4, 1, 16), 1);
        assert_eq!(units_per_task(3, 4, 1, 1), 3);
    }
}

//! Scaled dot-product attention of every head of every text over that text's own tokens,
//! straight out of the fused query-key-value projection, in blocks of queries: a block's
//! scores are all a thread holds, so memory grows with the text's length, not its square (an
//! 8,192-token text needs 8 MiB of scores per thread, where whole rows would need 256 MiB).
//! Optionally within a window of nearby tokens (ModernBERT's local layers), causal (each token
//! sees itself and the tokens before it: Qwen3), with grouped-query heads (several query heads
//! reading one key and value head), and with MPNet's relative position bias.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::engine::blueprint::Heads;
use crate::engine::kernels::{self, Mat};
use crate::memory::mapped::Mapped;

/// Queries per block: texts up to this long run as one block per head, as before blocks
/// existed; longer ones split.
const QUERY_BLOCK: usize = 256;

/// Attention work (query × key × width, summed over tasks) below which one thread does every
/// task: a short text's heads are too little to hand to the pool.
const PARALLEL_MIN: usize = 1 << 21;

thread_local! {
    /// Attention scores of the block a compute thread is working on.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Frees this thread's scores (the engine does it on every pool thread once idle).
pub(super) fn release_scratch() {
    SCORES.with_borrow_mut(|s| *s = Vec::new());
}

/// Bytes of scores one thread holds for a pass whose longest text has `len` tokens.
pub(super) fn scratch_bytes(len: usize, window: Option<usize>) -> usize {
    let keys = window.map_or(len, |r| (QUERY_BLOCK + 2 * r).min(len));
    QUERY_BLOCK.min(len) * keys * 4
}

/// MPNet's `[buckets, heads]` bias table unrolled per head over every relative position a
/// pass can meet, so attention adds a contiguous slice per query instead of looking up
/// buckets.
pub(super) struct RelativeBias {
    rows: Mapped<f32>,
    positions: usize,
}

impl RelativeBias {
    pub(super) fn new(table: &[f32], buckets: usize, heads: usize, positions: usize) -> Self {
        let span = 2 * positions - 1;
        let mut rows = Mapped::zeroed(heads * span);
        for head in 0..heads {
            for (i, v) in rows[head * span..(head + 1) * span].iter_mut().enumerate() {
                let rel = i as i64 - (positions as i64 - 1);
                *v = table[crate::engine::checkpoint::mpnet::bucket(rel, buckets) * heads + head];
            }
        }
        RelativeBias { rows, positions }
    }

    pub(super) fn len(&self) -> usize {
        self.rows.len()
    }

    /// The bias of query `i` against keys `k0..k1` in `head`.
    fn row(&self, head: usize, i: usize, k0: usize, k1: usize) -> &[f32] {
        let centre = head * (2 * self.positions - 1) + self.positions - 1;
        &self.rows[centre + k0 - i..centre + k1 - i]
    }
}

/// What one layer's attention is.
pub(super) struct Attention<'a> {
    pub heads: Heads,
    /// Tokens a query sees on each side, when the layer attends within a window.
    pub window: Option<usize>,
    /// Whether a query sees no token after its own.
    pub causal: bool,
    pub relative: Option<&'a RelativeBias>,
    /// Each text's tokens that are attended to: its first `keys[text]` (fewer than its length
    /// where its last tokens are output but not attended to, ColBERT's query expansion).
    pub keys: &'a [usize],
}

/// A buffer pointer shared by attention tasks, which read it or each write their own block
/// of it.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: tasks only read the buffers they share, or write disjoint blocks (see `run`).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// One block of a text's queries and the keys they may see.
#[derive(Clone, Copy)]
struct Block {
    text: usize,
    /// Its queries, `q0..q1` of the text.
    q0: usize,
    q1: usize,
    /// The keys any of them sees, `k0..k1` of the text.
    k0: usize,
    k1: usize,
}

/// Where a layer's heads lie in the fused projection's rows and the context's.
#[derive(Clone, Copy)]
struct Layout {
    /// Query heads and their width.
    heads: usize,
    d: usize,
    /// Query heads per key and value head.
    group: usize,
    /// Width of a context row (every query head).
    h: usize,
    /// Width of a `qkv` row.
    stride: usize,
    /// Offsets of the key heads and the value heads in a `qkv` row.
    key_at: usize,
    value_at: usize,
    scale: f32,
}

impl Attention<'_> {
    /// `qkv` holds each token's query, key and value heads side by side (as [`Heads`] lays
    /// them out); `context` receives each token's query heads' results side by side.
    pub(super) fn run(&self, qkv: &[f32], starts: &[usize], lens: &[usize], context: &mut [f32]) {
        let layout = self.layout();
        let rows = starts.last().zip(lens.last()).map_or(0, |(s, l)| s + l);
        assert!(qkv.len() >= rows * layout.stride && context.len() >= rows * layout.h);
        let (blocks, work) = self.blocks(lens);
        assert!(self.keys.len() == lens.len() && self.keys.iter().zip(lens).all(|(k, l)| k <= l));
        let tasks = blocks.len() * layout.heads;
        let blocks = &blocks;
        let out = Shared(context.as_mut_ptr());
        let qkv = Shared(qkv.as_ptr() as *mut f32);
        let run = move |task: usize| {
            let (out, qkv) = (out, qkv);
            let (block, head) = (task / layout.heads, task % layout.heads);
            let block = blocks[block];
            let start = starts[block.text];
            // SAFETY: `blocks` lie inside their texts, whose rows `qkv` and `context` hold
            // (asserted above); each task writes only its own block's rows in its own head's
            // columns.
            unsafe { self.block_head(&layout, block, head, start, qkv, out) };
        };
        if work < PARALLEL_MIN {
            (0..tasks).for_each(run);
        } else {
            (0..tasks).into_par_iter().for_each(run);
        }
    }

    fn layout(&self) -> Layout {
        let Heads {
            query: heads,
            dim: d,
            ..
        } = self.heads;
        let h = self.heads.q_width();
        Layout {
            heads,
            d,
            // Query head `i` reads key and value head `i / group`, as transformers' `repeat_kv`.
            group: heads / self.heads.kv,
            h,
            stride: self.heads.qkv_width(),
            key_at: h,
            value_at: h + self.heads.kv_width(),
            scale: 1.0 / (d as f32).sqrt(),
        }
    }

    /// Each text's blocks of queries with the keys they see, and the work of them all
    /// (query × key × width, over every head).
    fn blocks(&self, lens: &[usize]) -> (Vec<Block>, usize) {
        let (heads, d) = (self.heads.query, self.heads.dim);
        let mut blocks = Vec::new();
        let mut work = 0;
        for (text, &len) in lens.iter().enumerate() {
            for q0 in (0..len).step_by(QUERY_BLOCK) {
                let q1 = (q0 + QUERY_BLOCK).min(len);
                let keys = self.keys[text];
                let (k0, mut k1) = match self.window {
                    None => (0, keys),
                    Some(r) => (q0.saturating_sub(r).min(keys), (q1 + r).min(keys)),
                };
                if self.causal {
                    // No query of the block sees past its last.
                    k1 = k1.min(q1);
                }
                work += (q1 - q0) * (k1 - k0) * d * heads;
                blocks.push(Block {
                    text,
                    q0,
                    q1,
                    k0,
                    k1,
                });
            }
        }
        (blocks, work)
    }

    /// One task: `head`'s attention for `block`'s queries (its text's rows from `start`):
    /// scores, softmax, context, with this thread's scores.
    ///
    /// # Safety
    /// The block's rows of `qkv` (rows of `stride`) and of `out` (rows of `h`) must exist,
    /// and no other thread may write this block's rows in this head's columns of `out`.
    #[inline]
    unsafe fn block_head(
        &self,
        l: &Layout,
        block: Block,
        head: usize,
        start: usize,
        qkv: Shared,
        out: Shared,
    ) {
        let Block { q0, q1, k0, k1, .. } = block;
        let (bq, bk, d, stride) = (q1 - q0, k1 - k0, l.d, l.stride);
        let kv_head = head / l.group;
        SCORES.with_borrow_mut(|scores| {
            if scores.len() < bq * bk {
                scores.resize(bq * bk, 0.0);
            }
            let scores = &mut scores[..bq * bk];
            // SAFETY: every offset below stays inside the text's rows of `qkv` and of
            // `context` (the caller's contract), and this task alone writes its block's query
            // rows in its head's `d` columns.
            unsafe {
                let q = qkv.0.add((start + q0) * stride + head * d);
                let k = qkv.0.add((start + k0) * stride + l.key_at + kv_head * d);
                let v = qkv.0.add((start + k0) * stride + l.value_at + kv_head * d);
                // scores = scale · Q Kᵀ: Kᵀ(i, j) is K(j, i).
                kernels::matmul(
                    (bq, bk, d),
                    Mat::row_major(scores.as_mut_ptr(), bk),
                    Mat::row_major(q, stride),
                    Mat {
                        ptr: k,
                        row: 1,
                        col: stride as isize,
                    },
                    l.scale,
                    false,
                    gemm::Parallelism::None,
                );
                for (r, row) in scores.chunks_exact_mut(bk).enumerate() {
                    self.softmax_row(row, head, q0 + r, k0, k1);
                }
                kernels::matmul(
                    (bq, d, bk),
                    Mat::row_major(out.0.add((start + q0) * l.h + head * d), l.h),
                    Mat::row_major(scores.as_mut_ptr(), bk),
                    Mat::row_major(v, stride),
                    1.0,
                    false,
                    gemm::Parallelism::None,
                );
            }
        });
    }

    /// Query `i`'s scores against keys `k0..k1` (`row`) in `head` become its weights: the
    /// relative bias added, softmax over the keys it sees, zero for the others.
    #[inline]
    fn softmax_row(&self, row: &mut [f32], head: usize, i: usize, k0: usize, k1: usize) {
        if let Some(rel) = self.relative {
            let bias = rel.row(head, i, k0, k1);
            row.iter_mut().zip(bias).for_each(|(s, b)| *s += b);
        }
        // Keys i - reach ..= i + reach within a window, none after i when causal, all of the
        // text's otherwise.
        let (mut lo, mut hi) = (k0, k1);
        if let Some(reach) = self.window {
            lo = i.saturating_sub(reach).max(k0);
            hi = (i + reach + 1).min(k1);
        }
        if self.causal {
            hi = hi.min(i + 1);
        }
        // An unattended token beyond every key of its window sees none.
        lo = lo.min(hi);
        if (lo, hi) == (k0, k1) {
            kernels::softmax(row);
        } else {
            let (lo, hi) = (lo - k0, hi - k0);
            kernels::softmax(&mut row[lo..hi]);
            row[..lo].fill(0.0);
            row[hi..].fill(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention computed the plain way, in f64: every query against its text's keys (within
    /// `window`, none after it when `causal`), softmax, values.
    // The oracle takes each switch of `Attention` as an argument of its own.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        qkv: &[f32],
        starts: &[usize],
        lens: &[usize],
        keys: &[usize],
        heads: Heads,
        window: Option<usize>,
        causal: bool,
        bias: Option<&dyn Fn(usize, i64) -> f64>,
    ) -> Vec<f32> {
        let (d, width, stride) = (heads.dim, heads.q_width(), heads.qkv_width());
        let group = heads.query / heads.kv;
        let rows: usize = lens.iter().sum();
        let mut out = vec![0f32; rows * width];
        // Part 0: query head `head`; 1 and 2: the key and value head it reads.
        let at = |row: usize, part: usize, head: usize, j: usize| {
            let offset = match part {
                0 => head * d,
                1 => width + head / group * d,
                _ => width + heads.kv_width() + head / group * d,
            };
            qkv[row * stride + offset + j] as f64
        };
        for ((&start, &len), &seen) in starts.iter().zip(lens).zip(keys) {
            for head in 0..heads.query {
                for i in 0..len {
                    let keys: Vec<usize> = (0..seen)
                        .filter(|&j| window.is_none_or(|r| i.abs_diff(j) <= r))
                        .filter(|&j| !causal || j <= i)
                        .collect();
                    let scores: Vec<f64> = keys
                        .iter()
                        .map(|&j| {
                            let dot: f64 = (0..d)
                                .map(|c| at(start + i, 0, head, c) * at(start + j, 1, head, c))
                                .sum();
                            dot / (d as f64).sqrt()
                                + bias.map_or(0.0, |b| b(head, j as i64 - i as i64))
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                    for c in 0..d {
                        let v: f64 = keys
                            .iter()
                            .zip(&scores)
                            .map(|(&j, s)| (s - max).exp() / total * at(start + j, 2, head, c))
                            .sum();
                        out[(start + i) * width + head * d + c] = v as f32;
                    }
                }
            }
        }
        out
    }

    fn seeded(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    #[test]
    fn blocks_windows_causality_grouped_heads_and_the_relative_bias_equal_plain_attention() {
        // Texts shorter than, equal to and several times a block, packed back to back.
        let lens = [3, QUERY_BLOCK, 2 * QUERY_BLOCK + 37];
        let starts = [0, 3, 3 + QUERY_BLOCK];
        let rows: usize = lens.iter().sum();
        let table = seeded(32 * 4, 11);
        let positions = 1024;
        let bias = |head: usize, rel: i64| {
            table[crate::engine::checkpoint::mpnet::bucket(rel, 32) * 2 + head] as f64
        };
        let plain = Heads {
            query: 2,
            kv: 2,
            dim: 8,
        };
        // Qwen3's shape in small: 4 query heads over 2 key-value heads, wider than hidden / heads.
        let grouped = Heads {
            query: 4,
            kv: 2,
            dim: 6,
        };
        let relative = RelativeBias::new(&table[..32 * 2], 32, 2, positions);
        // Every text attends to all its tokens, or its last few (the first text's last, the
        // other texts' last 12) are output but not attended to (ColBERT's query expansion).
        let unattended = [1, 12, 12];
        let fewer: Vec<usize> = lens.iter().zip(unattended).map(|(l, u)| l - u).collect();
        for (heads, window, causal, rel, keys) in [
            (plain, None, false, false, &lens[..]),
            (plain, None, false, false, &fewer[..]),
            (plain, Some(64), false, false, &fewer[..]),
            (grouped, None, false, false, &fewer[..]),
            (plain, None, false, true, &fewer[..]),
            (plain, Some(64), false, false, &lens[..]),
            (plain, Some(3), false, false, &lens[..]),
            (plain, None, false, true, &lens[..]),
            (plain, None, true, false, &lens[..]),
            (grouped, None, false, false, &lens[..]),
            (grouped, None, true, false, &lens[..]),
            (grouped, Some(5), true, false, &lens[..]),
        ] {
            let qkv = seeded(rows * heads.qkv_width(), 7);
            let mut got = vec![f32::NAN; rows * heads.q_width()];
            Attention {
                heads,
                window,
                causal,
                relative: rel.then_some(&relative),
                keys,
            }
            .run(&qkv, &starts, &lens, &mut got);
            let want = naive(
                &qkv,
                &starts,
                &lens,
                keys,
                heads,
                window,
                causal,
                rel.then_some(&bias as &dyn Fn(usize, i64) -> f64),
            );
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                // A NaN (an output never written) stays the worst.
                .fold(0f32, |m, d| if d.is_nan() || d > m { d } else { m });
            assert!(
                worst < 1e-4,
                "{heads:?}, window {window:?}, causal {causal}, bias {rel}, keys {keys:?}: off by {worst}"
            );
        }
    }

    #[test]
    fn a_long_text_holds_one_block_of_scores() {
        assert_eq!(scratch_bytes(8192, None), 256 * 8192 * 4);
        assert_eq!(scratch_bytes(8192, Some(64)), 256 * 384 * 4);
        assert_eq!(scratch_bytes(10, None), 10 * 10 * 4);
    }
}

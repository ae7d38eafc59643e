//! Rotary position embeddings: each query and key head rotated by its token's position within
//! its own text, as GPT-NeoX's `rotate_half` does (the first half of the rotated values
//! against the second), with the cosines and sines computed once at load.

use rayon::prelude::*;

use crate::engine::blueprint::{Heads, Rotary};
use crate::engine::kernels::PARALLEL_MIN;
use crate::memory::mapped::Mapped;

/// Cosines and sines of every (position, pair) for one base.
struct Table {
    /// `positions × dims/2`.
    cos: Mapped<f32>,
    sin: Mapped<f32>,
}

impl Table {
    fn new(base: f64, divisor: f64, dims: usize, positions: usize) -> Table {
        let half = dims / 2;
        // In f64: position 8,191 times a frequency near 1 is an angle of thousands of radians,
        // where f32 would already be off in the third decimal.
        let inv: Vec<f64> = (0..half)
            .map(|i| base.powf(-((2 * i) as f64) / dims as f64) / divisor)
            .collect();
        let mut cos = Mapped::zeroed(positions * half);
        let mut sin = Mapped::zeroed(positions * half);
        for p in 0..positions {
            for (i, f) in inv.iter().enumerate() {
                let (s, c) = (p as f64 * f).sin_cos();
                cos[p * half + i] = c as f32;
                sin[p * half + i] = s as f32;
            }
        }
        Table { cos, sin }
    }

    fn bytes(&self) -> usize {
        (self.cos.len() + self.sin.len()) * 4
    }
}

/// The tables of a model's rotary embeddings (one per base).
pub(super) struct Tables {
    global: Table,
    /// The windowed layers' own, when their base differs.
    local: Option<Table>,
    dims: usize,
}

impl Tables {
    /// Tables for texts of up to `positions` tokens.
    pub(super) fn new(r: &Rotary, positions: usize) -> Tables {
        Tables {
            global: Table::new(r.base, r.divisor, r.dims, positions),
            local: r
                .local_base
                .map(|b| Table::new(b, r.divisor, r.dims, positions)),
            dims: r.dims,
        }
    }

    pub(super) fn bytes(&self) -> usize {
        self.global.bytes() + self.local.as_ref().map_or(0, Table::bytes)
    }

    /// Rotates the queries and keys in `qkv` (each row a token's `[q | k | v]` heads, laid
    /// out as `heads` says), each token by its position in its text; `local` for a windowed
    /// layer.
    pub(super) fn apply(
        &self,
        qkv: &mut [f32],
        starts: &[usize],
        lens: &[usize],
        heads: Heads,
        local: bool,
    ) {
        let table = match (&self.local, local) {
            (Some(t), true) => t,
            _ => &self.global,
        };
        let (head, stride) = (heads.dim, heads.qkv_width());
        let rotated = heads.q_width() + heads.kv_width();
        let half = self.dims / 2;
        let rotate = |(row, pos): (&mut [f32], usize)| {
            let cos = &table.cos[pos * half..(pos + 1) * half];
            let sin = &table.sin[pos * half..(pos + 1) * half];
            // Queries and keys: the row's values before its value heads.
            for h in row[..rotated].chunks_exact_mut(head) {
                let (a, b) = h[..self.dims].split_at_mut(half);
                for (((x1, x2), c), s) in a.iter_mut().zip(b.iter_mut()).zip(cos).zip(sin) {
                    let (u, v) = (*x1, *x2);
                    *x1 = u * c - v * s;
                    *x2 = v * c + u * s;
                }
            }
        };
        let rows = starts.last().zip(lens.last()).map_or(0, |(s, l)| s + l);
        let positions = starts
            .iter()
            .zip(lens)
            .flat_map(|(_, &len)| 0..len)
            .collect::<Vec<_>>();
        let qkv = &mut qkv[..rows * stride];
        if qkv.len() < PARALLEL_MIN {
            qkv.chunks_exact_mut(stride).zip(positions).for_each(rotate);
        } else {
            qkv.par_chunks_exact_mut(stride)
                .zip(positions)
                .for_each(rotate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_each_head_by_its_position_in_its_own_text() {
        let r = Rotary::plain(10_000.0, 4, 8);
        let t = Tables::new(&r, 8);
        // Two texts of 1 and 2 tokens, hidden 4 (one head of 4), every value 1.
        let mut qkv = vec![1f32; 3 * 12];
        let heads = Heads {
            query: 1,
            kv: 1,
            dim: 4,
        };
        t.apply(&mut qkv, &[0, 1], &[1, 2], heads, false);
        // Position 0 leaves a row as it is: the first token of each text.
        assert_eq!(&qkv[..12], &[1.0; 12]);
        assert_eq!(&qkv[12..24], &[1.0; 12]);
        // Position 1: pair i turns by 10000^(-i/2) radians; values stay untouched.
        let row = &qkv[24..36];
        for (i, f) in [1f64, 0.01].into_iter().enumerate() {
            let (s, c) = (f.sin() as f32, f.cos() as f32);
            for part in [0, 4] {
                assert!((row[part + i] - (c - s)).abs() < 1e-6, "{row:?}");
                assert!((row[part + i + 2] - (c + s)).abs() < 1e-6, "{row:?}");
            }
        }
        assert_eq!(&row[8..], &[1.0; 4]);
    }

    #[test]
    fn rotates_every_query_head_and_the_fewer_key_heads_but_no_value() {
        let r = Rotary::plain(10_000.0, 4, 8);
        let t = Tables::new(&r, 8);
        // Grouped-query layout: 2 query heads, 1 key and 1 value head, of 4 values each.
        let heads = Heads {
            query: 2,
            kv: 1,
            dim: 4,
        };
        let mut qkv = vec![1f32; 2 * 16];
        t.apply(&mut qkv, &[0], &[2], heads, false);
        let row = &qkv[16..];
        let (s, c) = (1f32.sin(), 1f32.cos());
        for head in [0, 4, 8] {
            assert!(
                (row[head] - (c - s)).abs() < 1e-6,
                "head at {head}: {row:?}"
            );
            assert!(
                (row[head + 2] - (c + s)).abs() < 1e-6,
                "head at {head}: {row:?}"
            );
        }
        assert_eq!(&row[12..], &[1.0; 4], "the value head turned");
    }
}

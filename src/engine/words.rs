//! The word embedding table of an encoder, in f32 or, with `models.precision: int8`, as int8
//! rows with a scale per block of [`INT8_BLOCK`] values (half of MiniLM's weights are this
//! table) — the int8 storage format of packages, so a table stored int8 is taken as it is.

use super::kernels;
use super::stored;
use crate::memory::mapped::Mapped;
use crate::package::{INT8_BLOCK, quantize_int8_block};

/// The word embedding table: f32, or int8 rows with block scales (`models.precision: int8`).
pub(super) enum Words {
    F32(Mapped<f32>),
    /// Row `id`'s block `j` (values `32j..32j + 32`) has scale `scales[id · blocks + j]`,
    /// `blocks` being the row's width in blocks, the last one possibly short.
    Int8 {
        rows: Mapped<i8>,
        scales: Mapped<f32>,
    },
    /// A table the package stores in int8, as it was read (the same blocks).
    Stored(stored::Int8Rows),
}

impl Words {
    /// Each row quantized symmetrically block by block, a block's largest magnitude → 127.
    pub(super) fn int8(table: &[f32], width: usize) -> Words {
        let mut rows = Vec::with_capacity(table.len());
        let mut scales = Vec::with_capacity(table.len() / INT8_BLOCK + 1);
        for row in table.chunks_exact(width) {
            for block in row.chunks(INT8_BLOCK) {
                scales.push(quantize_int8_block(block, &mut rows));
            }
        }
        Words::Int8 {
            rows: rows.into(),
            scales: scales.into(),
        }
    }

    pub(super) fn bytes(&self) -> usize {
        match self {
            Words::F32(t) => t.len() * 4,
            Words::Int8 { rows, scales } => rows.len() + scales.len() * 4,
            Words::Stored(rows) => rows.bytes(),
        }
    }

    /// `out = word row id + other`.
    pub(super) fn add_row(&self, id: usize, width: usize, other: &[f32], out: &mut [f32]) {
        match self {
            Words::F32(t) => kernels::add_into(out, &t[id * width..(id + 1) * width], other),
            Words::Int8 { rows, scales } => {
                let blocks = width.div_ceil(INT8_BLOCK);
                let row = &rows[id * width..(id + 1) * width];
                let s = &scales[id * blocks..(id + 1) * blocks];
                let parts = row
                    .chunks(INT8_BLOCK)
                    .zip(other.chunks(INT8_BLOCK))
                    .zip(out.chunks_mut(INT8_BLOCK));
                for (((q, b), o), &s) in parts.zip(s) {
                    for ((o, &q), &b) in o.iter_mut().zip(q).zip(b) {
                        *o = f32::from(q) * s + b;
                    }
                }
            }
            Words::Stored(rows) => rows.add_row(id, other, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_rows_keep_each_block_within_half_a_step() {
        // A ragged last block (40 = 32 + 8), and blocks of very different magnitudes.
        let width = 40;
        let table: Vec<f32> = (0..3 * width)
            .map(|i| {
                if i % width < 32 {
                    (i as f32).sin()
                } else {
                    (i as f32).cos() * 1e-3
                }
            })
            .collect();
        let words = Words::int8(&table, width);
        let zeros = vec![0f32; width];
        for id in 0..3 {
            let mut out = vec![0f32; width];
            words.add_row(id, width, &zeros, &mut out);
            for (j, (&o, &t)) in out.iter().zip(&table[id * width..]).enumerate() {
                let step = if j < 32 { 1.0 / 127.0 } else { 1e-3 / 127.0 };
                assert!(
                    (o - t).abs() <= step / 2.0 + 1e-7,
                    "row {id} value {j}: {o} vs {t}"
                );
            }
        }
        assert_eq!(words.bytes(), 3 * width + 3 * 2 * 4);
    }
}

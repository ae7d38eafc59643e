//! The word embedding table of an encoder, in f32 or, with `models.precision: int8`, as int8
//! rows with a scale each (half of MiniLM's weights are this table).

use super::kernels;

/// The word embedding table: f32, or int8 rows with a scale each (`models.precision: int8`).
pub(super) enum Words {
    F32(Vec<f32>),
    Int8 { rows: Vec<i8>, scales: Vec<f32> },
}

impl Words {
    /// Each row quantized symmetrically, its largest magnitude → 127.
    pub(super) fn int8(table: &[f32], width: usize) -> Words {
        let mut rows = Vec::with_capacity(table.len());
        let mut scales = Vec::with_capacity(table.len() / width.max(1));
        for row in table.chunks_exact(width) {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
            scales.push(scale);
            rows.extend(row.iter().map(|v| (v / scale).round_ties_even() as i8));
        }
        Words::Int8 { rows, scales }
    }

    pub(super) fn bytes(&self) -> usize {
        match self {
            Words::F32(t) => t.len() * 4,
            Words::Int8 { rows, scales } => rows.len() + scales.len() * 4,
        }
    }

    /// `out = word row id + other`.
    pub(super) fn add_row(&self, id: usize, width: usize, other: &[f32], out: &mut [f32]) {
        match self {
            Words::F32(t) => kernels::add_into(out, &t[id * width..(id + 1) * width], other),
            Words::Int8 { rows, scales } => {
                let s = scales[id];
                let row = &rows[id * width..(id + 1) * width];
                for ((o, &q), &b) in out.iter_mut().zip(row).zip(other) {
                    *o = f32::from(q) * s + b;
                }
            }
        }
    }
}

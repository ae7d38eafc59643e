//! The f32 weight layout: `Wᵀ` cut into panels of [`WIDTH`] outputs, each panel `inputs ×
//! width` row-major and contiguous. A few-row product then streams each panel from memory
//! front to back, which the prefetchers follow. Read straight from a 1,536-wide `Wᵀ`, each
//! input's slice of a column block lies 6 KiB after the last: a new page every step, which no
//! hardware prefetcher crosses, and only two L1 sets for all of them. A batch runs `gemm` once
//! per panel (and block of rows), reading the panel as a row-major matrix of its own width.

use crate::memory::mapped::Mapped;

/// Outputs per panel: a whole number of every f32 tile width (32 and 16 floats) and of
/// MiniLM's and MPNet's widths (384, 768, 1,152, 1,536, 2,304, 3,072). Measured on whole
/// passes against 64: the same few-row speed, and batches of 256 × 256 tokens as fast as
/// from unpanelled `Wᵀ`, where 64 was 4-6% slower (gemm's tiles fit 96 columns better).
pub const WIDTH: usize = 96;

/// `Wᵀ` in panels of [`WIDTH`] outputs (the last one narrower when the outputs are not a
/// multiple of it).
pub struct Panels {
    data: Mapped<f32>,
    inputs: usize,
    outputs: usize,
}

/// One panel: outputs `first..first + width`, `inputs` rows of `width` floats.
pub struct Panel<'a> {
    pub first: usize,
    pub width: usize,
    pub data: &'a [f32],
}

impl Panels {
    /// From `Wᵀ` (`[inputs, outputs]` row-major).
    pub fn from_wt(wt: &[f32], inputs: usize, outputs: usize) -> Panels {
        assert_eq!(wt.len(), inputs * outputs, "Wᵀ of the wrong size");
        let mut data = Mapped::zeroed(wt.len());
        let mut at = 0;
        for first in (0..outputs).step_by(WIDTH) {
            let width = WIDTH.min(outputs - first);
            for row in wt.chunks_exact(outputs) {
                data[at..at + width].copy_from_slice(&row[first..first + width]);
                at += width;
            }
        }
        Panels {
            data,
            inputs,
            outputs,
        }
    }

    /// From PyTorch's `[outputs, inputs]` weight, without a transposed copy in between: each
    /// panel (`inputs × width`, a few hundred KiB) is filled from its outputs' rows while it
    /// sits in L2 (the whole transposed matrix first was 9% of a model's load).
    pub fn from_torch(weight: &[f32], outputs: usize, inputs: usize) -> Panels {
        assert_eq!(weight.len(), inputs * outputs, "a weight of the wrong size");
        let mut data = Mapped::zeroed(weight.len());
        for first in (0..outputs).step_by(WIDTH) {
            let width = WIDTH.min(outputs - first);
            let panel = &mut data[first * inputs..(first + width) * inputs];
            for (c, row) in weight[first * inputs..(first + width) * inputs]
                .chunks_exact(inputs.max(1))
                .enumerate()
            {
                for (i, &w) in row.iter().enumerate() {
                    panel[i * width + c] = w;
                }
            }
        }
        Panels {
            data,
            inputs,
            outputs,
        }
    }

    /// Back to `Wᵀ` (for a layer that is concatenated or converted to another precision).
    pub fn to_wt(&self) -> Vec<f32> {
        let (k, n) = (self.inputs, self.outputs);
        let mut wt = vec![0f32; k * n];
        for p in self.iter() {
            for (i, src) in p.data.chunks_exact(p.width).enumerate() {
                wt[i * n + p.first..i * n + p.first + p.width].copy_from_slice(src);
            }
        }
        wt
    }

    /// The panels, first outputs first.
    pub fn iter(&self) -> impl Iterator<Item = Panel<'_>> + '_ {
        (0..self.outputs)
            .step_by(WIDTH)
            .map(move |first| self.panel_at(first))
    }

    /// How many panels there are.
    pub fn count(&self) -> usize {
        self.outputs.div_ceil(WIDTH)
    }

    /// The panel whose outputs start at `first` (a multiple of [`WIDTH`]).
    pub fn panel_at(&self, first: usize) -> Panel<'_> {
        debug_assert_eq!(first % WIDTH, 0);
        let width = WIDTH.min(self.outputs - first);
        Panel {
            first,
            width,
            data: &self.data[first * self.inputs..(first + width) * self.inputs],
        }
    }

    /// Width of an input row.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Bytes of the weights.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_round_trip_and_hold_their_outputs_contiguously() {
        // 214 outputs: two whole panels and one of 22.
        let (k, n) = (5, 214);
        let wt: Vec<f32> = (0..k * n).map(|i| i as f32).collect();
        let panels = Panels::from_wt(&wt, k, n);
        assert_eq!(panels.to_wt(), wt);
        // PyTorch's layout, W = (Wᵀ)ᵀ, makes the same panels.
        let torch: Vec<f32> = (0..n * k).map(|j| wt[(j % k) * n + j / k]).collect();
        assert_eq!(Panels::from_torch(&torch, n, k).data, panels.data);
        let widths: Vec<(usize, usize)> = panels.iter().map(|p| (p.first, p.width)).collect();
        assert_eq!(widths, vec![(0, 96), (96, 96), (192, 22)]);
        let last = panels.panel_at(192);
        // Input row 3 of the last panel is Wᵀ[3][192..214].
        assert_eq!(&last.data[3 * 22..4 * 22], &wt[3 * n + 192..3 * n + 214]);
    }
}

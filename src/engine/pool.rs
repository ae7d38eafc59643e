//! Pooling token vectors into one text vector, and L2 normalisation.

use crate::package::Pooling;

/// Pools one text's token vectors. `hidden` holds `seq` rows of `dim` floats (the text's row
/// of the padded batch); only the first `len` rows are real tokens, the rest is padding and is
/// ignored, which is what keeps a text's vector independent of its batch.
pub fn pool(hidden: &[f32], dim: usize, len: usize, pooling: Pooling) -> Vec<f32> {
    match pooling {
        // (A two-tower model's towers pool themselves, in `super::vision`.)
        Pooling::Cls | Pooling::Towers => hidden[..dim].to_vec(),
        // A multi-vector model's: every token's row.
        Pooling::Tokens => hidden[..len * dim].to_vec(),
        Pooling::LastToken => hidden[(len.max(1) - 1) * dim..len.max(1) * dim].to_vec(),
        Pooling::Mean | Pooling::Sum => {
            let mut out = vec![0f32; dim];
            for row in hidden[..len * dim].chunks_exact(dim) {
                for (o, x) in out.iter_mut().zip(row) {
                    *o += x;
                }
            }
            if pooling == Pooling::Mean {
                // sentence-transformers divides by the mask sum clamped at 1e-9.
                let n = (len as f32).max(1e-9);
                out.iter_mut().for_each(|o| *o /= n);
            }
            out
        }
        // (A sparse model's pooling runs on its term weights, `super::sparse`; over token
        // vectors it means the same.)
        Pooling::Max => hidden[..len.max(1) * dim].chunks_exact(dim).fold(
            vec![f32::NEG_INFINITY; dim],
            |mut m, row| {
                m.iter_mut().zip(row).for_each(|(m, &x)| *m = m.max(x));
                m
            },
        ),
    }
}

/// Scales `v` to unit length, as torch's `normalize(p=2, eps=1e-12)` does.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_ignores_padding_rows() {
        // Two real tokens, one padding row full of junk.
        let hidden = [1.0, 2.0, 3.0, 4.0, 100.0, 100.0];
        assert_eq!(pool(&hidden, 2, 2, Pooling::Mean), vec![2.0, 3.0]);
        // Last-token pooling takes the last real row, not the padding after it.
        assert_eq!(pool(&hidden, 2, 2, Pooling::LastToken), vec![3.0, 4.0]);
    }

    #[test]
    fn cls_takes_the_first_row() {
        let hidden = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(pool(&hidden, 2, 2, Pooling::Cls), vec![1.0, 2.0]);
    }

    #[test]
    fn normalizes_to_unit_length_and_survives_zero() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut z = vec![0.0, 0.0];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0.0, 0.0]);
    }
}

//! The rotation int8-fast quantizes activations after: each block of inputs turned by the
//! (unnormalised) Hadamard matrix of its size, by the fast Walsh–Hadamard transform
//! (`log2(block)` rounds of butterflies `(a, b) → (a + b, a − b)` at distances 1, 2, 4, …).
//!
//! Rounds at a distance of a vector's width or more are plain loops the compiler vectorises.
//! The rounds within a vector are not (left to the compiler they became scalar code or
//! gathers, and the rotation took more time than the products it serves): on x86-64 each is
//! one permutation and one multiply-add by a vector of ±1 (`x·sign + partner`), with AVX-512
//! or AVX2; aarch64 and other CPUs take the scalar rounds.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use super::super::{Isa, isa};

/// Turns each block of `block` values of `x` (a power of two; `x` a whole number of blocks) by
/// the unnormalised Hadamard matrix, in place.
pub(super) fn hadamard(x: &mut [f32], block: usize) {
    debug_assert!(block.is_power_of_two() && x.len().is_multiple_of(block));
    #[cfg(target_arch = "x86_64")]
    {
        match isa() {
            // SAFETY: `isa` found the features the functions are compiled for.
            Isa::Avx512 if block >= 16 => return unsafe { avx512(x, block) },
            // SAFETY: as above.
            Isa::Avx512 | Isa::Avx2 if block >= 8 => return unsafe { avx2(x, block) },
            _ => {}
        }
    }
    rounds(x, block, 1);
}

/// The rounds at distances `from`, `2·from`, … below `block`, as plain loops.
#[inline(always)]
fn rounds(x: &mut [f32], block: usize, from: usize) {
    for b in x.chunks_exact_mut(block) {
        let mut h = from;
        while h < block {
            for pair in b.chunks_exact_mut(2 * h) {
                let (lo, hi) = pair.split_at_mut(h);
                for (l, r) in lo.iter_mut().zip(hi.iter_mut()) {
                    let (a, c) = (*l, *r);
                    *l = a + c;
                    *r = a - c;
                }
            }
            h *= 2;
        }
    }
}

/// The four rounds within each 16 values on zmm registers, then the rest as loops.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn avx512(x: &mut [f32], block: usize) {
    // Lane i's partner at distance h is lane i ^ h; the lower of a pair adds, the upper
    // subtracts itself from its partner. (Plain arrays, loaded here: a closure returning a
    // vector is compiled without this function's features, and its result's alignment was
    // not kept.)
    let mut p = [_mm512_setzero_si512(); 4];
    let mut s = [_mm512_setzero_ps(); 4];
    for (round, (p, s)) in p.iter_mut().zip(&mut s).enumerate() {
        let h = 1 << round;
        let partner: [i32; 16] = std::array::from_fn(|i| (i ^ h) as i32);
        let sign: [f32; 16] = std::array::from_fn(|i| if i & h == 0 { 1.0 } else { -1.0 });
        // SAFETY: 16 lanes each.
        unsafe {
            *p = _mm512_loadu_si512(partner.as_ptr() as *const _);
            *s = _mm512_loadu_ps(sign.as_ptr());
        }
    }
    for c in x.chunks_exact_mut(16) {
        // SAFETY: `c` holds 16 floats.
        unsafe {
            let mut v = _mm512_loadu_ps(c.as_ptr());
            for (p, s) in p.iter().zip(&s) {
                v = _mm512_fmadd_ps(v, *s, _mm512_permutexvar_ps(*p, v));
            }
            _mm512_storeu_ps(c.as_mut_ptr(), v);
        }
    }
    rounds(x, block, 16);
}

/// The three rounds within each 8 values on ymm registers, then the rest as loops.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2(x: &mut [f32], block: usize) {
    let sign =
        |h: usize| -> [f32; 8] { std::array::from_fn(|i| if i & h == 0 { 1.0 } else { -1.0 }) };
    // SAFETY: 8 floats each.
    let (s1, s2, s4) = unsafe {
        (
            _mm256_loadu_ps(sign(1).as_ptr()),
            _mm256_loadu_ps(sign(2).as_ptr()),
            _mm256_loadu_ps(sign(4).as_ptr()),
        )
    };
    for c in x.chunks_exact_mut(8) {
        // SAFETY: `c` holds 8 floats.
        unsafe {
            let mut v = _mm256_loadu_ps(c.as_ptr());
            // Distance 1: swap neighbours; 2: swap pairs (within each 128-bit half); 4: the
            // halves.
            v = _mm256_fmadd_ps(v, s1, _mm256_permute_ps::<0b10_11_00_01>(v));
            v = _mm256_fmadd_ps(v, s2, _mm256_permute_ps::<0b01_00_11_10>(v));
            v = _mm256_fmadd_ps(v, s4, _mm256_permute2f128_ps::<0x01>(v, v));
            _mm256_storeu_ps(c.as_mut_ptr(), v);
        }
    }
    rounds(x, block, 8);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product by the Hadamard matrix written out: `H[i][j] = (−1)^popcount(i & j)`.
    fn reference(x: &[f32], block: usize) -> Vec<f32> {
        x.chunks_exact(block)
            .flat_map(|b| {
                (0..block).map(move |i| {
                    (0..block)
                        .map(|j| {
                            if (i & j).count_ones() % 2 == 0 {
                                b[j]
                            } else {
                                -b[j]
                            }
                        })
                        .sum::<f32>()
                })
            })
            .collect()
    }

    #[test]
    fn every_path_multiplies_by_the_hadamard_matrix() {
        for block in [1, 2, 4, 8, 16, 32, 128] {
            let x: Vec<f32> = (0..block * 3)
                .map(|i| ((i * 37 % 101) as f32) - 50.0)
                .collect();
            let want = reference(&x, block);
            let mut got = x.clone();
            hadamard(&mut got, block);
            assert_eq!(got, want, "block {block}");
            let mut plain = x.clone();
            rounds(&mut plain, block, 1);
            assert_eq!(plain, want, "block {block}, plain loops");
        }
    }
}

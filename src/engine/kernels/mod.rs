//! The arithmetic of the encoders' forward pass on plain `f32` slices: linear layers
//! ([`linear`]: the `gemm` crate for batches, a weight-streaming dot product for a few rows,
//! or AMX tiles for bf16), the strided products of attention ([`gemm`]), and the fused
//! elementwise steps around them ([`elementwise`]: bias + residual, LayerNorm, softmax, GELU).
//!
//! This file is the dispatch: the instruction sets the kernels are compiled for, the one
//! detection of what the CPU runs, and `simd!`, which compiles a portable loop once per
//! instruction set and picks at run time, so one binary runs everywhere (aarch64 and plain
//! x86-64 included) and still uses AVX2 or AVX-512 where the CPU has them. Hand-written
//! kernels for one instruction set live in a file of their own ([`amx`]).

/// The instruction sets the kernels are compiled for, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Isa {
    /// AVX-512 F/BW/DQ/VL (with AVX2 and FMA).
    Avx512,
    /// AVX2 with FMA.
    Avx2,
    /// Whatever the target guarantees (SSE2 on x86-64, NEON on aarch64).
    Baseline,
}

/// The best [`Isa`] this CPU runs (std caches the detection).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vl")
        {
            return Isa::Avx512;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

/// Compiles `$generic` (an `#[inline(always)]` fn) again for AVX-512 and AVX2+FMA and calls
/// the best the CPU offers.
macro_rules! simd {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $generic:ident) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? { $generic($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? { $generic($($arg),*) }
                match isa() {
                    // SAFETY: `isa` found every feature the function was compiled for.
                    Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    Isa::Baseline => {}
                }
            }
            $generic($($arg),*)
        }
    };
}

#[cfg(target_arch = "x86_64")]
pub mod amx;
mod elementwise;
mod gemm;
mod linear;

pub use elementwise::{
    Activation, PARALLEL_MIN, activate, add_into, for_rows, layer_norm, layer_norm_rows, softmax,
};
pub use gemm::{Mat, matmul, parallelism};
pub use linear::{Linear, SMALL_ROWS};

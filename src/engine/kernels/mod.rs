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

/// The instruction sets the f32 kernels are compiled for, best first.
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

/// How far up the instruction sets the kernels may go: `CAXTON_ISA` (read once) caps what
/// the CPU offers, so the lower paths can be run, tested and measured on a machine that has
/// more. Ordered: a cap allows itself and everything below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cap {
    /// Only the portable code.
    Portable,
    /// aarch64's NEON kernels (on x86-64, the same as `Portable`).
    Neon,
    /// aarch64's NEON with the dot-product extension (int8-fast's `sdot`; elsewhere the
    /// same as `Neon`).
    NeonDot,
    /// Up to AVX2 with FMA.
    Avx2,
    /// Up to AVX-VNNI (256-bit VNNI without AVX-512).
    AvxVnni,
    /// Everything (AVX-512, with VNNI where present).
    Avx512,
}

impl Cap {
    /// The spelling of `CAXTON_ISA`.
    pub fn name(self) -> &'static str {
        match self {
            Cap::Portable => "portable",
            Cap::Neon => "neon",
            Cap::NeonDot => "neon-dotprod",
            Cap::Avx2 => "avx2",
            Cap::AvxVnni => "avx-vnni",
            Cap::Avx512 => "avx512",
        }
    }

    fn parse(s: &str) -> Option<Cap> {
        [
            Cap::Portable,
            Cap::Neon,
            Cap::NeonDot,
            Cap::Avx2,
            Cap::AvxVnni,
            Cap::Avx512,
        ]
        .into_iter()
        .find(|c| c.name() == s)
    }
}

/// The cap from `CAXTON_ISA`, read once; unset, or a value that names no cap (said once on
/// stderr and in the journal), allows everything.
pub fn cap() -> Cap {
    static CAP: std::sync::OnceLock<Cap> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| match std::env::var("CAXTON_ISA") {
        Err(_) => Cap::Avx512,
        Ok(v) => Cap::parse(v.trim()).unwrap_or_else(|| {
            tracing::warn!(
                "CAXTON_ISA={v:?} names no instruction set (portable, neon, neon-dotprod, avx2, avx-vnni, avx512); ignored"
            );
            Cap::Avx512
        }),
    })
}

/// The best [`Isa`] this CPU runs within [`cap`], decided once: every `simd!` call asks, and
/// asking std's detection each time took 1% of `examples/single int8-fast 32`'s samples.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(detect_isa)
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn detect_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let cap = cap();
        if cap >= Cap::Avx512
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vl")
        {
            return Isa::Avx512;
        }
        if cap >= Cap::Avx2
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

/// The kernels a model's linear layers run on in `precision` on this machine (within
/// `CAXTON_ISA`): `avx512`, `avx2`, `neon` or `portable` for f32 (our own loops; gemm picks
/// its own for large batches), `amx` for bf16, the int8 kernel's name for int8.
pub fn kernel_name(precision: crate::config::Precision) -> &'static str {
    use crate::config::Precision;
    match precision {
        Precision::F32 => match isa() {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            // aarch64's baseline is NEON, which the compiler vectorises our loops for.
            Isa::Baseline if cfg!(target_arch = "aarch64") => "neon",
            Isa::Baseline => "portable",
        },
        Precision::Bf16 => "amx",
        Precision::Int8 => int8::Kernel::best().name(),
        Precision::Int8Fast => int8_fast::Kernel::best().name(),
    }
}

/// Calls `$f::<M, P>$args` for a tile of `$mr` rows × `$np` panels known only at run time,
/// instantiated for each of the listed row and panel counts (the x86 int8 and int8-fast tiles
/// take both as const generics, so their sums stay in registers). Used inside an `unsafe fn`
/// whose contract covers the call.
#[cfg(target_arch = "x86_64")]
macro_rules! tile_shape {
    ($f:ident $args:tt, $mr:expr, [$($m:literal),*], $np:expr, $ps:tt) => {
        match $mr {
            $($m => tile_shape!(@panels $f $args, $m, $np, $ps),)*
            mr => unreachable!("a tile of {mr} rows"),
        }
    };
    (@panels $f:ident $args:tt, $m:literal, $np:expr, [$($p:literal),*]) => {
        match $np {
            // SAFETY: the enclosing function's contract, passed on.
            $($p => unsafe { $f::<$m, $p> $args },)*
            np => unreachable!("a tile of {np} panels"),
        }
    };
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

/// Asks for the cache line at `p` ahead of its use. A hint: it never faults, whatever `p`.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, even at an address that is not mapped.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Asks for the first and last lines of the outputs (and residuals) a tile is about to write,
/// columns `cols` of `rows`, rows `ldo` apart, before it multiplies: written cold, each line
/// waited for its fetch and the products for the stores (int8-fast over 32 texts: 1.25×).
#[inline(always)]
pub(crate) fn prefetch_tile(
    out: *const f32,
    residual: Option<&[f32]>,
    rows: std::ops::Range<usize>,
    ldo: usize,
    cols: std::ops::Range<usize>,
) {
    for r in rows {
        for i in [r * ldo + cols.start, r * ldo + cols.end - 1] {
            prefetch(out.wrapping_add(i));
            if let Some(res) = residual {
                prefetch(res.as_ptr().wrapping_add(i));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub mod amx;
mod elementwise;
mod gemm;
pub mod int8;
pub mod int8_fast;
mod linear;
mod tasks;

pub use elementwise::{
    Activation, PARALLEL_MIN, activate, add_into, for_rows, gate, layer_norm, layer_norm_rows,
    rms_norm, rms_norm_rows, softmax,
};
pub use gemm::{Mat, matmul, parallelism};
pub use linear::{Linear, SMALL_ROWS};

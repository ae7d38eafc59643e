//! bf16 linear layers on Intel AMX (Advanced Matrix Extensions, Sapphire Rapids and later).
//! One thing at length (the permission, the packing and the tile kernels belong together).
//!
//! One AMX tile multiply (`tdpbf16ps`) does 16×16×32 bf16 multiply-adds into f32. Measured
//! on this project's 2-core Xeon: 3,100 GFLOP/s on one core in a register-only loop, against
//! 218 for AVX-512 f32 FMAs and 104 for AVX512-BF16 `vdpbf16ps` (which is why the reduced
//! precision path is AMX or nothing: `vdpbf16ps` is slower here than plain f32).
//!
//! Weights are rounded to bf16 once, at load, and packed tile by tile ([`Packed`]); each call
//! rounds its input rows to bf16 and accumulates in f32, starting from the bias or from what
//! the output holds (bias and residual, filled in by the caller).
//!
//! Rust has no stable AMX intrinsics, so the tile instructions are inline assembly. Linux
//! hands the 8 KiB tile state to a process only on request (`arch_prctl`), which
//! [`available`] makes once.

use std::arch::asm;
use std::arch::x86_64::__cpuid_count;
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::memory::mapped::Mapped;

/// Rows of a tile (and of the input rows one A tile holds).
const ROWS: usize = 16;
/// bf16 values in a tile row (64 bytes): the depth of one tile multiply.
const DEPTH: usize = 32;
/// f32 columns of an output tile.
const COLS: usize = 16;
/// Output columns one kernel call covers: two output tiles side by side.
const BLOCK_COLS: usize = 2 * COLS;
/// Input rows one kernel call covers: two output tiles stacked.
const BLOCK_ROWS: usize = 2 * ROWS;
/// Bytes of one packed weight tile.
const TILE_BYTES: usize = ROWS * DEPTH * 2;

/// Whether this process may use AMX bf16 tiles; the reason when not. Checked (and the tile
/// state requested from the kernel) once.
pub fn available() -> Result<(), String> {
    static STATE: OnceLock<Result<(), String>> = OnceLock::new();
    STATE.get_or_init(enable).clone()
}

fn enable() -> Result<(), String> {
    let features = __cpuid_count(7, 0);
    let (amx_bf16, amx_tile) = (features.edx & (1 << 22) != 0, features.edx & (1 << 24) != 0);
    if !(amx_bf16 && amx_tile) {
        return Err("this CPU has no AMX-BF16 (Intel Sapphire Rapids or later)".into());
    }
    // Palette 1 must offer what the kernel configures: 8 tiles of 16 rows × 64 bytes.
    // Leaf 0x1D exists when AMX-TILE is set.
    let palette = __cpuid_count(0x1d, 1);
    let (row_bytes, names, max_rows) = (
        palette.ebx & 0xffff,
        palette.ebx >> 16,
        palette.ecx & 0xffff,
    );
    // The input rounding is compiled for AVX-512, which every AMX CPU so far has.
    let avx512 = std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl");
    if !avx512 {
        return Err("this CPU has AMX but not AVX-512 F/BW/VL".into());
    }
    if row_bytes < 64 || names < 8 || max_rows < ROWS as u32 {
        return Err(format!(
            "the CPU's AMX tiles are too small ({names} tiles of {max_rows} rows × {row_bytes} bytes)"
        ));
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain syscall with integer arguments; it only changes this process's
    // permission to use the tile state.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    if r != 0 {
        return Err(format!(
            "the kernel refused the AMX tile state (arch_prctl: {}; Linux 5.16 or later is needed)",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Rounds to the nearest bf16, ties to even (NaN stays NaN).
#[inline(always)]
fn bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    // A select, not a branch, so the rounding loop vectorises.
    let quiet_nan = (bits >> 16) | 0x40;
    (if x.is_nan() { quiet_nan } else { rounded }) as u16
}

/// A weight matrix rounded to bf16 and laid out as AMX B tiles: for each 16-column block,
/// its 32-deep slices one after another, each 16 rows of (column, pair of depths) — the
/// "VNNI" order `tdpbf16ps` multiplies. Depth and columns are padded with zeros to whole
/// tiles (and to an even number of column blocks).
pub struct Packed {
    tiles: Mapped<u16>,
    inputs: usize,
    outputs: usize,
    depth_tiles: usize,
    column_blocks: usize,
}

impl Packed {
    /// Packs `Wᵀ` (`inputs × outputs`, row-major).
    pub fn new(weight_t: &[f32], inputs: usize, outputs: usize) -> Packed {
        debug_assert_eq!(weight_t.len(), inputs * outputs);
        let depth_tiles = inputs.div_ceil(DEPTH);
        let column_blocks = outputs.div_ceil(BLOCK_COLS) * 2;
        let mut tiles = Mapped::zeroed(column_blocks * depth_tiles * TILE_BYTES / 2);
        for (cb, block) in tiles
            .chunks_exact_mut(depth_tiles * TILE_BYTES / 2)
            .enumerate()
        {
            for (dt, tile) in block.chunks_exact_mut(TILE_BYTES / 2).enumerate() {
                for (pair, row) in tile.chunks_exact_mut(2 * COLS).enumerate() {
                    for c in 0..COLS {
                        let n = cb * COLS + c;
                        for e in 0..2 {
                            let k = dt * DEPTH + 2 * pair + e;
                            if n < outputs && k < inputs {
                                row[2 * c + e] = bf16(weight_t[k * outputs + n]);
                            }
                        }
                    }
                }
            }
        }
        Packed {
            tiles,
            inputs,
            outputs,
            depth_tiles,
            column_blocks,
        }
    }

    /// Bytes the packed weights occupy.
    pub fn bytes(&self) -> usize {
        self.tiles.len() * 2
    }

    /// `out = x·Wᵀ + bias` for `rows` rows of `x` (`rows × inputs`) into `out`
    /// (`rows × outputs`), or `out += x·Wᵀ` without a bias. [`available`] must have returned
    /// `Ok`.
    pub fn forward(&self, x: &[f32], rows: usize, bias: Option<&[f32]>, out: &mut [f32]) {
        let (k, n) = (self.inputs, self.outputs);
        assert!(x.len() >= rows * k && out.len() >= rows * n);
        assert!(bias.is_none_or(|b| b.len() == n));
        assert!(
            available().is_ok(),
            "AMX used without checking amx::available"
        );
        // Tasks are (chunk of rows, group of column blocks). A chunk's rounded rows stay in
        // the task's L2 while the group's weights pass over them; rows are split first (each
        // thread then reads all weights but only its own rows), columns when there are too
        // few rows to keep every thread busy (a single text: each thread reads half the
        // weights).
        let threads = rayon::current_num_threads();
        let pairs = self.column_blocks / 2;
        let chunks = rows.div_ceil(CHUNK_ROWS);
        let parallel = threads > 1 && rows * n * k >= SERIAL_MAX;
        let groups = if parallel {
            (2 * threads).div_ceil(chunks).min(pairs)
        } else {
            1
        };
        let per_group = pairs.div_ceil(groups);
        let out_ptr = OutPtr(out.as_mut_ptr());
        let run = |task: usize| {
            let (chunk, group) = (task / groups, task % groups);
            let first_row = chunk * CHUNK_ROWS;
            let rows_here = CHUNK_ROWS.min(rows - first_row);
            let first = group * per_group;
            let columns = first..pairs.min(first + per_group);
            ROUNDED.with_borrow_mut(|a| {
                a.fill(
                    &x[first_row * k..(first_row + rows_here) * k],
                    k,
                    self.depth_tiles,
                );
                // SAFETY: tasks write disjoint (rows, columns) blocks of `out`, which
                // outlives them; `available()` is Ok.
                unsafe { self.run(a, rows_here, bias, out_ptr.offset(first_row * n), columns) };
            });
        };
        if parallel {
            (0..chunks * groups).into_par_iter().for_each(run);
        } else {
            (0..chunks * groups).for_each(run);
        }
    }

    /// Column-block pairs `pairs` of the product for the rows in `a`, on the calling thread.
    ///
    /// # Safety
    /// `out` points at `rows × outputs` f32s that no one else touches in these columns, and
    /// `available()` is `Ok`.
    unsafe fn run(
        &self,
        a: &Rounded,
        rows: usize,
        bias: Option<&[f32]>,
        out: OutPtr,
        pairs: std::ops::Range<usize>,
    ) {
        let whole = rows / BLOCK_ROWS * BLOCK_ROWS;
        if whole > 0 {
            // SAFETY: tile state was granted (`available`).
            unsafe { TileConfig::new(ROWS, ROWS).load() };
            for pair in pairs.clone() {
                for row in (0..whole).step_by(BLOCK_ROWS) {
                    // SAFETY: rows `row..row + 32` exist in `a` and `out`.
                    unsafe { self.block(a, row, BLOCK_ROWS, bias, out, pair) };
                }
            }
        }
        // The last rows: tiles configured with fewer rows read and write only those, so
        // neither the input nor the output needs padding rows.
        let tail = rows - whole;
        if tail > 0 {
            let upper = tail.min(ROWS);
            // SAFETY: as above.
            unsafe { TileConfig::new(upper, (tail - upper).max(1)).load() };
            for pair in pairs {
                // SAFETY: rows `whole..rows` exist in `a` and `out`.
                unsafe { self.block(a, whole, tail, bias, out, pair) };
            }
        }
        // SAFETY: releases the tiles this thread configured.
        unsafe { asm!("tilerelease", options(nostack)) };
    }

    /// Rows `row..row + count` (`count` ≤ 32, matching the loaded tile configuration) of
    /// column-block pair `pair`, straight into `out`, or through a buffer at a ragged right
    /// edge. The output tiles start from the bias (every row loads the same 64 bytes: a
    /// zero stride) or from `out`.
    ///
    /// # Safety
    /// As for [`Packed::run`]; those rows exist in `a` and `out`.
    unsafe fn block(
        &self,
        a: &Rounded,
        row: usize,
        count: usize,
        bias: Option<&[f32]>,
        out: OutPtr,
        pair: usize,
    ) {
        let n = self.outputs;
        let col = pair * BLOCK_COLS;
        let depth = self.depth_tiles;
        let b_stride = depth * TILE_BYTES;
        // SAFETY: `pair` < column_blocks / 2, so both column blocks lie inside `tiles`.
        let b = unsafe { (self.tiles.as_ptr() as *const u8).add(2 * pair * b_stride) };
        let a_ptr = a.row(row);
        let product = |from: (*const f32, usize), c: *mut f32, c_stride: usize| {
            let init = Init {
                ptr: from.0,
                stride: from.1,
            };
            // SAFETY: the caller's rows and this pair's columns lie inside `c` and `init`.
            unsafe {
                if count > ROWS {
                    tiles_32(a_ptr, a.stride, b, b_stride, init, c, c_stride, depth)
                } else {
                    tiles_16(a_ptr, a.stride, b, b_stride, init, c, c_stride, depth)
                }
            }
        };
        if col + BLOCK_COLS <= n {
            // SAFETY: inside `out`.
            let c = unsafe { out.at(row * n + col) };
            let from = match bias {
                Some(b) => (b[col..].as_ptr(), 0),
                None => (c as *const f32, n * 4),
            };
            product(from, c, n * 4);
            return;
        }
        let columns = n - col;
        let mut edge = Edge([0f32; BLOCK_ROWS * BLOCK_COLS]);
        for r in 0..count {
            for c in 0..columns {
                edge.0[r * BLOCK_COLS + c] = match bias {
                    Some(b) => b[col + c],
                    // SAFETY: inside `out`'s rows and this task's columns.
                    None => unsafe { *out.at((row + r) * n + col + c) },
                };
            }
        }
        let c = edge.0.as_mut_ptr();
        product((c as *const f32, BLOCK_COLS * 4), c, BLOCK_COLS * 4);
        for r in 0..count {
            for c in 0..columns {
                // SAFETY: as above.
                unsafe { *out.at((row + r) * n + col + c) = edge.0[r * BLOCK_COLS + c] };
            }
        }
    }
}

/// `c += a·b` for up to 32 rows × 32 columns: `a` holds the rounded input rows, `b` two
/// packed column blocks `b_stride` bytes apart, over `depth_tiles` slices. Rows past the
/// 16th come from the second row of tiles (as many as the configuration gives them).
///
/// # Safety
/// The tiles are configured; `a`, `b` and `c` cover the rows, slices and columns read.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tiles_32(
    a: *const u8,
    a_stride: usize,
    b: *const u8,
    b_stride: usize,
    init: Init,
    c: *mut f32,
    c_stride: usize,
    depth_tiles: usize,
) {
    // tmm0..3: the four 16×16 output tiles; tmm4, 5: upper and lower input rows;
    // tmm6, 7: the two column blocks' weights.
    unsafe {
        asm!(
            "tileloadd tmm0, [{i} + {is}*1]",
            "tileloadd tmm1, [{i} + {is}*1 + 64]",
            "tileloadd tmm2, [{i2} + {is}*1]",
            "tileloadd tmm3, [{i2} + {is}*1 + 64]",
            "2:",
            "tileloadd tmm4, [{a} + {as}*1]",
            "tileloadd tmm5, [{a2} + {as}*1]",
            "tileloadd tmm6, [{b} + {bs}*1]",
            "tileloadd tmm7, [{b2} + {bs}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a}, 64",
            "add {a2}, 64",
            "add {b}, {tile}",
            "add {b2}, {tile}",
            "dec {k}",
            "jnz 2b",
            "tilestored [{c} + {cs}*1], tmm0",
            "tilestored [{c} + {cs}*1 + 64], tmm1",
            "tilestored [{c2} + {cs}*1], tmm2",
            "tilestored [{c2} + {cs}*1 + 64], tmm3",
            i = in(reg) init.ptr,
            i2 = in(reg) init.ptr.byte_add(ROWS * init.stride),
            is = in(reg) init.stride,
            c = in(reg) c,
            c2 = in(reg) c.byte_add(ROWS * c_stride),
            cs = in(reg) c_stride,
            a = inout(reg) a => _,
            a2 = inout(reg) a.add(ROWS * a_stride) => _,
            as = in(reg) a_stride,
            b = inout(reg) b => _,
            b2 = inout(reg) b.add(b_stride) => _,
            bs = in(reg) 2 * 2 * COLS,
            tile = const TILE_BYTES,
            k = inout(reg) depth_tiles => _,
            options(nostack),
        );
    }
}

/// [`tiles_32`] for at most 16 rows (a single text): half the tile work.
///
/// # Safety
/// As for [`tiles_32`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tiles_16(
    a: *const u8,
    a_stride: usize,
    b: *const u8,
    b_stride: usize,
    init: Init,
    c: *mut f32,
    c_stride: usize,
    depth_tiles: usize,
) {
    unsafe {
        asm!(
            "tileloadd tmm0, [{i} + {is}*1]",
            "tileloadd tmm1, [{i} + {is}*1 + 64]",
            "2:",
            "tileloadd tmm4, [{a} + {as}*1]",
            "tileloadd tmm6, [{b} + {bs}*1]",
            "tileloadd tmm7, [{b2} + {bs}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "add {a}, 64",
            "add {b}, {tile}",
            "add {b2}, {tile}",
            "dec {k}",
            "jnz 2b",
            "tilestored [{c} + {cs}*1], tmm0",
            "tilestored [{c} + {cs}*1 + 64], tmm1",
            i = in(reg) init.ptr,
            is = in(reg) init.stride,
            c = in(reg) c,
            cs = in(reg) c_stride,
            a = inout(reg) a => _,
            as = in(reg) a_stride,
            b = inout(reg) b => _,
            b2 = inout(reg) b.add(b_stride) => _,
            bs = in(reg) 2 * 2 * COLS,
            tile = const TILE_BYTES,
            k = inout(reg) depth_tiles => _,
            options(nostack),
        );
    }
}

/// Multiply-adds up to which a product stays on the calling thread. With AMX a few texts'
/// products take microseconds, less than waking the pool: one 14-token text took 1.5
/// against 2.2 ms per pass on one thread, 4 texts 3.9 against 5.4 ms; 8 texts (112 rows)
/// ran faster on two (9.4 against 10.3 ms).
const SERIAL_MAX: usize = 1 << 25;

/// Rows of input a task rounds and keeps in cache: 128 rows of 1,536 bf16 are 384 KiB.
const CHUNK_ROWS: usize = 128;

thread_local! {
    /// Each compute thread's rounded input rows, reused from call to call (at most
    /// `CHUNK_ROWS` rows: under 1 MiB even for 3,072-wide inputs).
    static ROUNDED: std::cell::RefCell<Rounded> = const {
        std::cell::RefCell::new(Rounded { data: Vec::new(), stride: 0 })
    };
}

/// Input rows rounded to bf16, padded with zeros to whole slices.
struct Rounded {
    data: Vec<u16>,
    /// Bytes from one row to the next.
    stride: usize,
}

impl Rounded {
    /// Rounds `x` (rows of width `k`) in place of the previous contents.
    fn fill(&mut self, x: &[f32], k: usize, depth_tiles: usize) {
        let width = depth_tiles * DEPTH;
        let rows = x.len() / k;
        // Tiles read only the configured rows, so no padding rows; the depth past `k` must
        // be zeros.
        if self.data.len() < rows * width {
            self.data.resize(rows * width, 0);
        }
        for (dst, src) in self.data.chunks_exact_mut(width).zip(x.chunks_exact(k)) {
            round_row(&mut dst[..k], src);
            dst[k..].fill(0);
        }
        self.stride = width * 2;
    }

    fn row(&self, row: usize) -> *const u8 {
        // SAFETY: callers pass a row inside the padded block.
        unsafe { (self.data.as_ptr() as *const u8).add(row * self.stride) }
    }
}

/// Rounds a row to bf16; compiled for AVX-512, which every AMX CPU has (16 lanes at once).
fn round_row(dst: &mut [u16], src: &[f32]) {
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn avx512(dst: &mut [u16], src: &[f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = bf16(s);
        }
    }
    // SAFETY: `enable` checked AVX-512 before AMX was reported available.
    unsafe { avx512(dst, src) }
}

/// Tile configuration (palette 1): every tile 64 bytes wide; the output and input tiles
/// of the upper 16 rows (tmm0, 1, 4) get `upper` rows, those of the lower 16 (tmm2, 3, 5)
/// `lower`, the weight tiles (tmm6, 7) 16 rows of depth pairs.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new(upper: usize, lower: usize) -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        let rows = [upper, upper, lower, lower, upper, lower, ROWS, ROWS];
        for (t, r) in rows.into_iter().enumerate() {
            c[16 + 2 * t] = 64;
            c[48 + t] = r as u8;
        }
        TileConfig(c)
    }

    /// Makes this the calling thread's tile configuration (which zeroes every tile).
    ///
    /// # Safety
    /// The process holds the tile state (`available`).
    unsafe fn load(&self) {
        unsafe { asm!("ldtilecfg [{}]", in(reg) self.0.as_ptr(), options(nostack)) };
    }
}

/// Where output tiles start from: rows `stride` bytes apart (0: the same row, a bias).
#[derive(Clone, Copy)]
struct Init {
    ptr: *const f32,
    stride: usize,
}

#[repr(C, align(64))]
struct Edge([f32; BLOCK_ROWS * BLOCK_COLS]);

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint blocks (see `Packed::forward`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The element `i` floats on.
    ///
    /// # Safety
    /// `i` stays inside the output.
    unsafe fn at(self, i: usize) -> *mut f32 {
        unsafe { self.0.add(i) }
    }

    fn offset(self, i: usize) -> OutPtr {
        OutPtr(self.0.wrapping_add(i))
    }
}

#[cfg(test)]
mod tests;

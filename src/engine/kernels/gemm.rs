//! Strided matrix products on the `gemm` crate (attention's scores and context), and how many
//! threads a product is worth.

/// A strided matrix operand: element `(i, j)` lives at `ptr + i·row + j·col`.
#[derive(Clone, Copy)]
pub struct Mat {
    /// Element `(0, 0)`.
    pub ptr: *mut f32,
    /// Elements from one row to the next.
    pub row: isize,
    /// Elements from one column to the next.
    pub col: isize,
}

impl Mat {
    /// Rows `row_stride` elements apart, columns adjacent.
    pub fn row_major(ptr: *mut f32, row_stride: usize) -> Mat {
        Mat {
            ptr,
            row: row_stride as isize,
            col: 1,
        }
    }
}

/// `dst (m×n) = scale · lhs (m×k) · rhs (k×n)`, added to what `dst` holds if `accumulate`.
///
/// # Safety
/// Every operand must be valid for its shape and strides, and `dst` must not overlap the
/// others.
pub unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: Mat,
    lhs: Mat,
    rhs: Mat,
    scale: f32,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            dst.col,
            dst.row,
            accumulate,
            lhs.ptr,
            lhs.col,
            lhs.row,
            rhs.ptr,
            rhs.col,
            rhs.row,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Threads for a GEMM of `work` multiply-adds: tiny ones are not worth waking a second core.
pub fn parallelism(work: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && work >= 1 << 16 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

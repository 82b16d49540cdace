//! A bounds-checked f32 matrix product over the `gemm` crate.

use moemla_core::{Error, Result};

/// A read-only strided f32 matrix view: element (r, c) is `data[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    /// The backing elements.
    pub data: &'a [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance between consecutive rows.
    pub row_stride: usize,
    /// Distance between consecutive columns.
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A contiguous row-major `rows x cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose (a view; nothing is copied).
    pub fn t(self) -> Self {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Whether every element lies inside `data`.
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1)
            .checked_mul(self.row_stride)
            .zip((self.cols - 1).checked_mul(self.col_stride))
            .and_then(|(r, c)| r.checked_add(c));
        last.is_some_and(|l| l < self.data.len())
    }
}

/// `dst = a @ b` (or `dst += a @ b` with `accumulate`), `dst` contiguous row-major
/// `a.rows x b.cols`, single-threaded (callers parallelise over independent products).
pub fn matmul(dst: &mut [f32], a: MatRef<'_>, b: MatRef<'_>, accumulate: bool) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || dst.len() != m * n || !a.in_bounds() || !b.in_bounds() {
        return Err(Error::Device {
            backend: crate::NAME.to_string(),
            call: "gemm".to_string(),
            message: format!(
                "inconsistent product: a {}x{} ({} elements), b {}x{} ({}), dst {}",
                a.rows,
                a.cols,
                a.data.len(),
                b.rows,
                b.cols,
                b.data.len(),
                dst.len()
            ),
        });
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return Ok(());
    }
    // SAFETY: `a` and `b` were checked above to keep every element (r, c) at an index below
    // their slice lengths, and `dst` holds exactly m * n elements addressed row-major with
    // strides (n, 1); the shared borrows of `a` and `b` cannot alias the exclusive `dst`.
    // The strides fit in isize because they index live slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_with_transposed_view_matches_hand_computed_values() {
        // a = [[1, 2, 3], [4, 5, 6]]; w = [[1, 0, 1], [2, 1, 0]]; a @ w^T = [[4, 4], [10, 13]].
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let w = [1.0, 0.0, 1.0, 2.0, 1.0, 0.0];
        let mut dst = [0.0; 4];
        let (am, wm) = (MatRef::row_major(&a, 2, 3), MatRef::row_major(&w, 2, 3));
        matmul(&mut dst, am, wm.t(), false).unwrap();
        assert_eq!(dst, [4.0, 4.0, 10.0, 13.0]);
        matmul(&mut dst, am, wm.t(), true).unwrap();
        assert_eq!(dst, [8.0, 8.0, 20.0, 26.0]);
    }

    #[test]
    fn out_of_bounds_views_are_rejected() {
        let a = [1.0; 5];
        let mut dst = [0.0; 4];
        let bad = MatRef::row_major(&a, 2, 3);
        assert!(matmul(&mut dst, bad, bad.t(), false).is_err());
    }
}

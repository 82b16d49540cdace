//! Bounds-checked f32 matrix products: a general one over the `gemm` crate, and
//! [`matmul_nt`] (rows times rows) on AVX-512 where the CPU has it.

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

/// Columns of `k` per pass of [`matmul_nt`]'s kernel: with `a` rows streamed once, a
/// pass's packed `b` rows (for the experts: one expert's tokens) stay in L2 at DeepSeek-V3's
/// hidden size (7168 = 4 passes).
const KC: usize = 2048;

/// `out[r * n + c] = a[r] . b[c]` for the `m` rows of `a` [m, k] and the `n` rows of `b`
/// [n, k] (f32, row-major), each an f32 sum; `out` [m, n] is overwritten. Single-threaded
/// (callers parallelise over independent tiles). On CPUs with AVX-512F a register-tiled
/// kernel reads `a` in place and a copy of each pass's columns of `b`, packed so that a
/// tile reads them as one stream; elsewhere [`matmul`].
///
/// A `k` of 0, lengths that do not make whole rows of `k`, or an `out` that is not
/// `m * n` long are [`Error::Device`]; nothing is written then. The packed copy (at most
/// `n * (KC + 15)` elements) is allocated fallibly ([`Error::OutOfMemory`]).
pub fn matmul_nt(a: &[f32], b: &[f32], k: usize, out: &mut [f32]) -> Result<()> {
    let (m, n) = nt_shape(a.len(), b.len(), k, out.len())?;
    if m == 0 || n == 0 {
        // Nothing to write (and no row of the other operand to offset into).
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        const WHAT: &str = "cpu gemm nt packed columns";
        let steps = KC.min(k).div_ceil(x86::LANES);
        // No overflow at any `b` that fits in memory; an impossible size is an allocation
        // that fails.
        let len = n
            .checked_mul(steps * x86::LANES)
            .ok_or(Error::OutOfMemory {
                what: WHAT.to_string(),
                bytes: usize::MAX,
            })?;
        let mut packed = moemla_core::alloc::try_filled_vec(len, WHAT)?;
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            x86::pack(b, k, (k0, kc), &mut packed);
            // SAFETY: AVX-512F was detected at run time; `nt_shape` checked that `a` holds
            // m >= 1 rows of k and `out` m * n elements; columns k0..k0 + kc of every row
            // lie inside its k, and `packed` holds n * ceil(kc / 16) * 16 elements (the
            // pass's columns of `b`, as `pack` lays them out; kc <= KC).
            unsafe { x86::gemm_nt(a, &packed, (m, n, k), (k0, kc), out) };
        }
        return Ok(());
    }
    portable_nt(a, b, (m, n, k), out)
}

/// `(m, n)` when `a` and `b` are whole rows of `k >= 1` and `out` is m x n, else
/// [`Error::Device`].
fn nt_shape(a: usize, b: usize, k: usize, out: usize) -> Result<(usize, usize)> {
    let rows = |len: usize| Some(len / k.max(1)).filter(|r| k > 0 && r * k == len);
    match rows(a).zip(rows(b)) {
        Some((m, n)) if m.checked_mul(n) == Some(out) => Ok((m, n)),
        _ => Err(Error::Device {
            backend: crate::NAME.to_string(),
            call: "gemm nt".to_string(),
            message: format!(
                "a ({a} elements) and b ({b}) must be whole rows of k = {k} >= 1, out ({out}) \
                 rows(a) x rows(b)"
            ),
        }),
    }
}

/// [`matmul_nt`] through the `gemm` crate (`a @ b^T`).
fn portable_nt(
    a: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
    out: &mut [f32],
) -> Result<()> {
    let b_t = MatRef::row_major(b, n, k).t();
    matmul(out, MatRef::row_major(a, m, k), b_t, false)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// f32 lanes of one AVX-512 register: columns per step.
    pub const LANES: usize = 16;
    /// Rows of `a` per register tile.
    const MR: usize = 4;
    /// Rows of `b` per register tile (4 x 6 = 24 accumulators, 6 `b` vectors and one of
    /// `a` in the 32 registers).
    const NR: usize = 6;

    /// Copies columns `k0..k0 + kc` of `b`'s rows (of `k`) into `packed`, in groups of
    /// [`NR`] rows (the last group shorter): group by group, step by step (16 columns),
    /// the group's rows one after the other, zero-padded to a whole last step. A tile then
    /// reads its rows of `b` as one stream: rows `k` floats apart (a power of two at the
    /// experts' shapes) would map every row's step to the same L1 set. `packed` must hold
    /// at least `n * ceil(kc / 16) * 16` elements for the `n` rows of `b` (the rest is
    /// left as it is).
    pub fn pack(b: &[f32], k: usize, (k0, kc): (usize, usize), packed: &mut [f32]) {
        let steps = kc.div_ceil(LANES);
        let packed = &mut packed[..b.len() / k * steps * LANES];
        let mut rows = b.chunks_exact(k);
        for group in packed.chunks_mut(NR * steps * LANES) {
            let nr = group.len() / (steps * LANES);
            for (j, row) in rows.by_ref().take(nr).enumerate() {
                let row = &row[k0..k0 + kc];
                for (s, cols) in row.chunks(LANES).enumerate() {
                    let at = (s * nr + j) * LANES;
                    group[at..at + cols.len()].copy_from_slice(cols);
                    group[at + cols.len()..at + LANES].fill(0.0);
                }
            }
        }
    }

    /// Columns `k0..k0 + kc` of [`super::matmul_nt`] from `b` packed by [`pack`]: 4 x 6
    /// register tiles (4 x 1..5 at the last group of `b`, 1 x 1..6 at the last rows of
    /// `a`) of 16-wide FMA steps, `a`'s last step masked; the first pass (`k0` 0) stores,
    /// later ones add to `out`. The first tile of each block of `a`'s rows prefetches the
    /// next block.
    ///
    /// # Safety
    /// AVX-512F must be available; `a` holds `m * k` and `out` `m * n` elements,
    /// `k0 + kc <= k`, and `packed` holds `n * ceil(kc / 16) * 16`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn gemm_nt(
        a: &[f32],
        packed: &[f32],
        (m, n, k): (usize, usize, usize),
        (k0, kc): (usize, usize),
        out: &mut [f32],
    ) {
        let (a, b, o) = (a.as_ptr().add(k0), packed.as_ptr(), out.as_mut_ptr());
        let t = Tile {
            k,
            steps: kc / LANES,
            tail: kc % LANES,
            ldo: n,
            add: k0 > 0,
        };
        let group = kc.div_ceil(LANES) * LANES;
        let mut r = 0;
        while r < m {
            let mr = if m - r >= MR { MR } else { 1 };
            let mut c = 0;
            while c < n {
                let nr = (n - c).min(NR);
                // SAFETY (all): rows r..r + mr of a exist (mr clipped to m), columns
                // k0..k0 + kc lie in k; the group of b's rows c..c + nr starts c * group
                // into `packed` (every earlier group is NR rows) and holds nr * group;
                // out[(r + i) * n + c + j] for i < mr, j < nr is inside the m * n.
                let (ap, bp, op) = (a.add(r * k), b.add(c * group), o.add(r * n + c));
                if mr == MR && c == 0 && r + 2 * MR <= m {
                    // As in bf16dot: the first pass over these rows of `a` prefetches
                    // the next MR rows' columns (which exist: r + 2 MR <= m) into L2
                    // (A/B at the experts' shapes, weights from memory: ~10-25% faster).
                    t.dispatch::<MR, true>(nr, ap, bp, op, ap.add(MR * k));
                } else if mr == MR {
                    t.dispatch::<MR, false>(nr, ap, bp, op, ap);
                } else {
                    t.dispatch::<1, false>(nr, ap, bp, op, ap);
                }
                c += nr;
            }
            r += mr;
        }
    }

    /// One register tile's geometry: rows of `a` `k` apart, `steps` whole steps and a
    /// masked `tail` of columns, `out` rows `ldo` apart, added to (`add`) or stored.
    #[derive(Clone, Copy)]
    struct Tile {
        k: usize,
        steps: usize,
        tail: usize,
        ldo: usize,
        add: bool,
    }

    impl Tile {
        /// [`Tile::run`] for `R` rows of `a` and `nr` (1..=NR) packed rows of `b`.
        #[inline(always)]
        unsafe fn dispatch<const R: usize, const PF: bool>(
            self,
            nr: usize,
            a: *const f32,
            b: *const f32,
            out: *mut f32,
            next: *const f32,
        ) {
            match nr {
                6 => self.run::<R, 6, PF>(a, b, out, next),
                5 => self.run::<R, 5, PF>(a, b, out, next),
                4 => self.run::<R, 4, PF>(a, b, out, next),
                3 => self.run::<R, 3, PF>(a, b, out, next),
                2 => self.run::<R, 2, PF>(a, b, out, next),
                _ => self.run::<R, 1, PF>(a, b, out, next),
            }
        }

        /// `out[i * ldo + j] (+)= a_i . b_j` for `R` rows of `a` and the `C` packed rows
        /// of `b` at `b`; with `PF`, the same columns of the `R` rows at `next` (which
        /// must exist) are prefetched into L2 along the way.
        #[target_feature(enable = "avx512f")]
        unsafe fn run<const R: usize, const C: usize, const PF: bool>(
            self,
            a: *const f32,
            b: *const f32,
            out: *mut f32,
            next: *const f32,
        ) {
            let mut acc = [[_mm512_setzero_ps(); C]; R];
            steps::<R, C, PF>(&mut acc, a, b, next, self.k, self.steps);
            if self.tail > 0 {
                // Masked-off elements of `a` are neither read nor faulted on, and load as
                // zero; the packed step of `b` is whole (zero-padded).
                let (off, mask) = (self.steps * LANES, ((1u32 << self.tail) - 1) as u16);
                for (i, row) in acc.iter_mut().enumerate() {
                    let av = _mm512_maskz_loadu_ps(mask, a.add(i * self.k + off));
                    for (j, s) in row.iter_mut().enumerate() {
                        let bj = _mm512_loadu_ps(b.add((self.steps * C + j) * LANES));
                        *s = _mm512_fmadd_ps(av, bj, *s);
                    }
                }
            }
            for (i, row) in acc.iter().enumerate() {
                for (j, &s) in row.iter().enumerate() {
                    let o = out.add(i * self.ldo + j);
                    let sum = _mm512_reduce_add_ps(s);
                    *o = if self.add { *o + sum } else { sum };
                }
            }
        }
    }

    /// The whole steps of [`Tile::run`], `acc += a_i * b_j` step by step. Not inlined: in
    /// one function with the tail and the reductions, LLVM kept the 24 accumulators in 16
    /// registers and spilled the rest on every step (seen in the disassembly, and ~30%
    /// slower in an A/B).
    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    unsafe fn steps<const R: usize, const C: usize, const PF: bool>(
        acc_out: &mut [[__m512; C]; R],
        a: *const f32,
        b: *const f32,
        next: *const f32,
        k: usize,
        steps: usize,
    ) {
        let mut acc = *acc_out;
        for st in 0..steps {
            let off = st * LANES;
            if PF {
                for i in 0..R {
                    _mm_prefetch::<_MM_HINT_T1>(next.add(i * k + off).cast());
                }
            }
            let mut bv = [_mm512_setzero_ps(); C];
            for (j, v) in bv.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(b.add((st * C + j) * LANES));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_loadu_ps(a.add(i * k + off));
                for (s, &bj) in row.iter_mut().zip(&bv) {
                    *s = _mm512_fmadd_ps(av, bj, *s);
                }
            }
        }
        *acc_out = acc;
    }
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

    /// `a` [m, k] times `b` [n, k] transposed in f64, with the bound of an f32 sum
    /// (k + 16 roundings of at most eps times the sum of |products|).
    fn nt_reference(a: &[f32], b: &[f32], k: usize) -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        for ar in a.chunks_exact(k) {
            for br in b.chunks_exact(k) {
                let p = ar.iter().zip(br).map(|(&x, &y)| x as f64 * y as f64);
                let abs: f64 = p.clone().map(f64::abs).sum();
                out.push((p.sum(), (k + 16) as f64 * f32::EPSILON as f64 * abs));
            }
        }
        out
    }

    #[test]
    fn nt_product_matches_an_f64_reference_at_odd_and_tail_shapes() {
        // k: below one step, odd, one pass with a tail, exactly one pass, more than one
        // pass (KC 2048) with a shorter last one; m and n cover full 4 x 6 tiles and every
        // remainder (n 1..=9 and 33: groups of 6 rows of b and a last shorter one, also in
        // a shorter last pass).
        let mut rng = crate::test_util::Lcg::new(11);
        let mut shapes = vec![
            (1, 1, 1),
            (3, 5, 7),
            (5, 7, 33),
            (4, 4, 2048),
            (9, 6, 2048 + 577),
            (6, 3, 2 * 2048 + 16),
            (5, 11, 2 * 2048 + 97),
            (9, 7, 2048 + 17),
            (13, 33, 301),
        ];
        shapes.extend((1..=9).map(|n| (7, n, 83)));
        for (m, n, k) in shapes {
            let (a, b) = (rng.vec(m * k, -2.0, 2.0), rng.vec(n * k, -2.0, 2.0));
            let want = nt_reference(&a, &b, k);
            let mut out = vec![f32::NAN; m * n];
            matmul_nt(&a, &b, k, &mut out).unwrap();
            let mut port = vec![f32::NAN; m * n];
            portable_nt(&a, &b, (m, n, k), &mut port).unwrap();
            for (idx, ((&g, &p), &(w, tol))) in out.iter().zip(&port).zip(&want).enumerate() {
                assert!(
                    (g as f64 - w).abs() <= tol,
                    "m {m} n {n} k {k} [{idx}]: {g} vs {w}"
                );
                assert!(
                    (p as f64 - w).abs() <= tol,
                    "gemm crate [{idx}]: {p} vs {w}"
                );
            }
        }
    }

    #[test]
    fn nt_shapes_that_do_not_fit_are_errors_and_write_nothing() {
        let a = [1.0f32; 6];
        let mut out = [7.0f32; 4];
        assert!(matmul_nt(&a, &a[..4], 4, &mut out).is_err());
        assert!(matmul_nt(&a[..4], &a[..4], 2, &mut out[..3]).is_err());
        assert!(matmul_nt(&a, &a, 0, &mut out).is_err());
        assert!(matmul_nt(&[], &[], 0, &mut []).is_err());
        assert_eq!(out, [7.0; 4]);
        // Integers: every partial sum is exact, so the result is.
        let b = [1.0, -2.0, 3.0, 0.5, 4.0, 1.0];
        matmul_nt(&b, &b, 3, &mut out).unwrap();
        assert_eq!(out, [14.0, -4.5, -4.5, 17.25]);
    }

    #[test]
    fn nt_product_with_no_rows_on_either_side_is_empty_and_ok() {
        // m 0 or n 0 with k past one pass (KC): an empty `out`, nothing read; the other
        // operand untouched by any column offset.
        let k = 2 * KC;
        let b = vec![1.0f32; 3 * k];
        let mut out: [f32; 0] = [];
        matmul_nt(&[], &b[..k], k, &mut out).unwrap();
        matmul_nt(&b, &[], k, &mut out).unwrap();
        matmul_nt(&[], &[], k, &mut out).unwrap();
        // A non-empty out for an empty product is still a shape error.
        assert!(matmul_nt(&[], &b[..k], k, &mut [0.0]).is_err());
    }
}

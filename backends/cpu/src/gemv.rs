//! Weight rows times a few activation vectors: the decode-time shape of the expert GEMMs,
//! where a general GEMM would first pack (copy) the whole weight tile. Each weight row is
//! read once and dotted with every activation vector: F32 weights on AVX-512 where the
//! CPU has it, any float weights on AVX2 + FMA on x86 CPUs without AVX-512 (widened in
//! registers, [`avx2`]), else (F16/BF16) upcast into an L1-resident buffer first. FP8 weights are decoded in
//! registers where the CPU has AVX-512 or AVX2 ([`fp8::gemv`]), else dequantized the
//! same way, row by row.

use crate::ops::moe_experts::fp8::{self, Weights};
use crate::storage::FloatSlice;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;

/// Up to this many activation vectors, [`rows_times`] beats a tile plus GEMM (measured
/// at V2-Lite shapes: bf16 decode -20..30% time, f32 about -10%).
pub const MAX_VECTORS: usize = 4;

/// How far ahead (bytes) the matrix-vector kernels that stream weight rows from memory
/// (F32 weights on AVX-512, any float weights on AVX2, FP8 codes on the bf16 dot)
/// prefetch them. Weight buffers may sit
/// on 4 KiB pages, at whose boundaries the hardware prefetchers stop; measured on a
/// 2-core Zen 4 for FP8 codes at V3 shapes (T = 1, A/B in one process): none
/// 16.1 ms, 4 KiB ahead 12.8, 8 KiB 11.7, 16 KiB 12.2, all into L2; into L1 instead was
/// slower (17.2 vs 13.8 ms at 8 KiB). F32 weights on an Intel Xeon, 8 KiB into L2
/// against none: T=16 58.8 vs 73.1 ms. F32 weights on a 2-core Zen 5 (V2-Lite shapes,
/// in one process, three rounds of eight): 8 KiB into L1 beat 8 KiB into L2 at T=1
/// (3.12-3.18 vs 3.60-3.93 ms) and T=16 (23.5 vs 25.4 ms), 16 KiB into L1 about tied
/// (3.02-3.12, 24.4), no prefetch 3.35-3.53 and 28.7: [`x86`] and [`avx2`] take L1 except
/// on Intel cores (unmeasured there).
pub const PREFETCH_BYTES: usize = 8192;

/// `out[r * n + c] = w[first + r] . act[c]` for `rows` weight rows of `k` columns (a
/// row-major matrix in storage type) and `n` activation vectors `act` [n, k] (f32);
/// `out` is [rows, n]. `row` is scratch for one upcast weight row (unused where the
/// vector kernels take the weights).
pub fn rows_times(
    w: Weights<'_>,
    first: usize,
    rows: usize,
    k: usize,
    act: &[f32],
    out: &mut [f32],
    row: &mut Vec<f32>,
) {
    // FP8: codes decoded in registers where the CPU can (no dequantized row at all).
    if let Weights::Fp8(f) = &w {
        if f.cols == k && fp8::gemv::rows_times(f, first, rows, act, out) {
            return;
        }
    }
    // F32: FMA on AVX-512 with independent accumulators where the CPU has it.
    #[cfg(target_arch = "x86_64")]
    if let Weights::Float(FloatSlice::F32(v)) = &w {
        if x86::rows_times(v, first, rows, k, act, out) {
            return;
        }
    }
    // Any float weights on CPUs without AVX-512: widened in registers, FMA on AVX2 (on
    // AVX-512 CPUs BF16/F16 weights keep the portable path, compiled for AVX-512 there;
    // the AVX2 kernel is unmeasured on them).
    #[cfg(target_arch = "x86_64")]
    if let Weights::Float(f) = &w {
        let avx512 = std::arch::is_x86_feature_detected!("avx512f");
        if !avx512 && avx2::rows_times(f, first, rows, k, act, out) {
            return;
        }
    }
    pulp::Arch::new().dispatch(RowsTimes {
        w,
        first,
        rows,
        k,
        act,
        out,
        row,
    });
}

/// [`rows_times`] as a pulp kernel: one run-time dispatch per call, the whole loop (upcast
/// and dot products) inlined into the code compiled for the detected vector unit.
struct RowsTimes<'a> {
    w: Weights<'a>,
    first: usize,
    rows: usize,
    k: usize,
    act: &'a [f32],
    out: &'a mut [f32],
    row: &'a mut Vec<f32>,
}

impl pulp::WithSimd for RowsTimes<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let k = self.k;
        let n = self.act.len() / k.max(1);
        self.row.resize(k, 0.0);
        for (r, out) in self.out.chunks_mut(n).take(self.rows).enumerate() {
            let w_row: &[f32] = match self.w {
                Weights::Float(FloatSlice::F32(v)) => &v[(self.first + r) * k..][..k],
                other => {
                    other.read_row_inline(self.first + r, self.row);
                    self.row
                }
            };
            for (o, x) in out.iter_mut().zip(self.act.chunks_exact(k)) {
                *o = dot(w_row, x);
            }
        }
    }
}

/// `a . b` with 16 independent partial sums (so it vectorises), combined in a fixed order.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..LANES {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// f32 lanes of one AVX-512 register.
    const LANES: usize = 16;

    /// [`super::rows_times`] for F32 weights `w` on AVX-512F: `out[r * n + c] = w[first +
    /// r] . act[c]`. False (nothing written) when the CPU lacks AVX-512F or the lengths do
    /// not fit: `k` 0, `act` not 0..=[`super::MAX_VECTORS`] whole rows of `k`, `w`
    /// without rows `first..first + rows` or `out` shorter than `rows * n` (no vectors or
    /// no rows: true, nothing to write).
    pub fn rows_times(
        w: &[f32],
        first: usize,
        rows: usize,
        k: usize,
        act: &[f32],
        out: &mut [f32],
    ) -> bool {
        let n = act.len() / k.max(1);
        let fits = k > 0
            && n * k == act.len()
            && crate::storage::row_range(first, rows, k).is_some_and(|r| r.end <= w.len())
            && rows.checked_mul(n).is_some_and(|len| len <= out.len());
        if !fits || !std::arch::is_x86_feature_detected!("avx512f") {
            return false;
        }
        if rows == 0 {
            return true;
        }
        let w = &w[first * k..(first + rows) * k];
        // SAFETY: AVX-512F was detected; `w` holds rows x k elements, `act` n x k and
        // `out` at least rows x n (checked above), as `dots` requires.
        unsafe {
            if crate::vendor::intel() {
                by_count::<false>(n, w, k, act, out)
            } else {
                by_count::<true>(n, w, k, act, out)
            }
        }
    }

    /// [`dots`] for `n` (0..=4) activation vectors; false (nothing written) for more.
    ///
    /// # Safety
    /// As [`dots`], with `N` = `n`.
    #[target_feature(enable = "avx512f")]
    unsafe fn by_count<const L1: bool>(
        n: usize,
        w: &[f32],
        k: usize,
        act: &[f32],
        out: &mut [f32],
    ) -> bool {
        match n {
            0 => {} // No vectors: nothing to write.
            1 => dots::<1, L1>(w, k, act, out),
            2 => dots::<2, L1>(w, k, act, out),
            3 => dots::<3, L1>(w, k, act, out),
            4 => dots::<4, L1>(w, k, act, out),
            _ => return false,
        }
        true
    }

    /// `out[r * N + c] = w_r . act_c` for every row of `w` (rows of `k`) and the `N` rows
    /// of `act`: each weight step (32 columns, two registers) is loaded once and multiplied
    /// into two accumulators per vector (FMA latency hidden; the old portable dot was one
    /// dependent add chain per vector), the last columns masked; the weights
    /// [`super::PREFETCH_BYTES`] ahead prefetched into L1 (`L1`) or L2.
    ///
    /// # Safety
    /// AVX-512F must be available; `w` holds whole rows of `k >= 1`, `act` `N * k` and
    /// `out` at least `w.len() / k * N` elements.
    #[target_feature(enable = "avx512f")]
    unsafe fn dots<const N: usize, const L1: bool>(
        w: &[f32],
        k: usize,
        act: &[f32],
        out: &mut [f32],
    ) {
        let (x, o) = (act.as_ptr(), out.as_mut_ptr());
        for (r, row) in w.chunks_exact(k).enumerate() {
            let row = row.as_ptr();
            let mut acc = [[_mm512_setzero_ps(); N]; 2];
            let mut off = 0;
            // SAFETY (all loads): columns off..off + 32 (or the masked rest) lie inside the
            // row of w and every row of act; out[r * N + c] is inside rows x N.
            while off + 2 * LANES <= k {
                // The two lines PREFETCH_BYTES on (a hint: never faults, whatever the
                // address, so `wrapping_add` may pass the end of `w`).
                let ahead = row.wrapping_add(off + super::PREFETCH_BYTES / 4);
                if L1 {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(LANES).cast());
                } else {
                    _mm_prefetch::<_MM_HINT_T1>(ahead.cast());
                    _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(LANES).cast());
                }
                for (h, acc) in acc.iter_mut().enumerate() {
                    let wv = _mm512_loadu_ps(row.add(off + h * LANES));
                    for (c, s) in acc.iter_mut().enumerate() {
                        let xv = _mm512_loadu_ps(x.add(c * k + off + h * LANES));
                        *s = _mm512_fmadd_ps(wv, xv, *s);
                    }
                }
                off += 2 * LANES;
            }
            while off < k {
                // Masked-off elements are neither read nor faulted on, and load as zero.
                let mask = ((1u32 << (k - off).min(LANES)) - 1) as u16;
                let wv = _mm512_maskz_loadu_ps(mask, row.add(off));
                for (c, s) in acc[0].iter_mut().enumerate() {
                    let xv = _mm512_maskz_loadu_ps(mask, x.add(c * k + off));
                    *s = _mm512_fmadd_ps(wv, xv, *s);
                }
                off += LANES;
            }
            for (c, (&s0, &s1)) in acc[0].iter().zip(&acc[1]).enumerate() {
                *o.add(r * N + c) = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn f32_rows_times_matches_an_f64_reference_at_odd_shapes() {
        // k below one step, odd, one 32-column step plus a masked rest, and DeepSeek-like;
        // 1..=4 vectors (the AVX-512 path) with rows starting past the first.
        let mut rng = crate::test_util::Lcg::new(7);
        for k in [1, 13, 37, 83, 2048 + 5] {
            for n in 1..=MAX_VECTORS {
                let (first, rows) = (2, 5);
                let w = rng.vec((first + rows + 1) * k, -2.0, 2.0);
                let act = rng.vec(n * k, -2.0, 2.0);
                let mut out = vec![f32::NAN; rows * n];
                let weights = Weights::Float(FloatSlice::F32(&w));
                rows_times(weights, first, rows, k, &act, &mut out, &mut Vec::new());
                for r in 0..rows {
                    for c in 0..n {
                        let wr = &w[(first + r) * k..][..k];
                        let what = format!("k {k} n {n} row {r} vector {c}");
                        assert_f32_dot(wr, &act[c * k..][..k], out[r * n + c], &what);
                    }
                }
            }
        }
    }

    /// `got` against the f64 dot product of `w` (weights as f32) and `x`: an f32 sum of
    /// `k` products, `k + 16` roundings of at most eps times the sum of |products|.
    pub(super) fn assert_f32_dot(w: &[f32], x: &[f32], got: f32, what: &str) {
        let p = w.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64);
        let want: f64 = p.clone().sum();
        let abs: f64 = p.map(f64::abs).sum();
        let tol = (w.len() + 16) as f64 * f32::EPSILON as f64 * abs;
        let got = got as f64;
        assert!((got - want).abs() <= tol, "{what}: {got} vs {want}");
    }

    #[test]
    fn rows_times_matches_plain_dot_products() {
        let (rows, k) = (3, 37); // 37: two full chunks of 16 and a tail of 5
        let w: Vec<bf16> = (0..(rows + 1) * k)
            .map(|i| bf16::from_f32(((i * 7) % 11) as f32 - 5.0))
            .collect();
        let act: Vec<f32> = (0..2 * k).map(|i| ((i * 3) % 5) as f32 * 0.5).collect();
        let mut out = vec![0.0; rows * 2];
        rows_times(
            Weights::Float(FloatSlice::BF16(&w)),
            1,
            rows,
            k,
            &act,
            &mut out,
            &mut Vec::new(),
        );
        for r in 0..rows {
            for c in 0..2 {
                let want: f64 = (0..k)
                    .map(|j| w[(1 + r) * k + j].to_f64() * act[c * k + j] as f64)
                    .sum();
                assert_eq!(out[r * 2 + c] as f64, want, "row {r} vector {c}");
            }
        }
    }
}

//! [`super::rows_times`] on AVX2 + FMA (F16C for f16 weights), for CPUs without AVX-512
//! (AMD Zen 2/3, Intel client cores): each weight step of 16 columns is read once,
//! widened to f32 in registers (bf16: zero-extended and shifted up 16 bits, exact; f16:
//! `VCVTPH2PS`, exact) and multiplied into two accumulators per activation vector. The
//! portable path it replaces upcast each row into a buffer first and then made one dot per
//! vector: on a 2-core AMD EPYC (Zen 3), `moe_experts` bf16 T=1 at V2-Lite shapes ran at
//! 38% of the read bandwidth that way.

use crate::storage::FloatSlice;
use half::{bf16, f16};
use std::arch::x86_64::*;

/// f32 lanes of one AVX2 register.
const LANES: usize = 8;

/// Columns per step: two registers of weights, one per accumulator of each vector.
const STEP: usize = 2 * LANES;

/// Weight element types the kernel widens to f32 in registers.
trait Widen: Copy {
    /// The 8 values at `p` as f32 lanes.
    ///
    /// # Safety
    /// AVX2 and F16C must be available; 8 values at `p` must be readable.
    unsafe fn load8(p: *const Self) -> __m256;

    /// One value as f32 (the columns after the last whole step).
    fn to_f32(self) -> f32;
}

impl Widen for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        _mm256_loadu_ps(p)
    }

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Widen for bf16 {
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        // A bf16 is the high half of the f32 with the same bits.
        let halves = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(halves))
    }

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self.to_f32()
    }
}

impl Widen for f16 {
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self.to_f32()
    }
}

/// `out[r * n + c] = w[first + r] . act[c]` for `rows` weight rows of `k` columns and
/// `n` = `act.len() / k` activation vectors. False (nothing written) when the CPU lacks
/// the instructions ([`crate::avx2::available`]) or the lengths do not fit: `k` 0, `act` not
/// 0..=[`super::MAX_VECTORS`] whole rows of `k`, `w` without rows `first..first + rows`
/// or `out` shorter than `rows * n` (no vectors or no rows: true, nothing to write).
pub fn rows_times(
    w: &FloatSlice<'_>,
    first: usize,
    rows: usize,
    k: usize,
    act: &[f32],
    out: &mut [f32],
) -> bool {
    match *w {
        FloatSlice::F32(v) => typed(v, first, rows, k, act, out),
        FloatSlice::BF16(v) => typed(v, first, rows, k, act, out),
        FloatSlice::F16(v) => typed(v, first, rows, k, act, out),
    }
}

/// [`rows_times`] for weights of one element type.
fn typed<T: Widen>(
    w: &[T],
    first: usize,
    rows: usize,
    k: usize,
    act: &[f32],
    out: &mut [f32],
) -> bool {
    let n = act.len() / k.max(1);
    let fits = k > 0
        && n * k == act.len()
        && n <= super::MAX_VECTORS
        && crate::storage::row_range(first, rows, k).is_some_and(|r| r.end <= w.len())
        && rows.checked_mul(n).is_some_and(|len| len <= out.len());
    if !fits || !crate::avx2::available() {
        return false;
    }
    let w = &w[first * k..(first + rows) * k];
    // SAFETY: AVX2, FMA and F16C were detected; `w` holds rows x k elements, `act` n x k
    // and `out` at least rows x n (checked above), as `dots` requires.
    unsafe {
        match n {
            0 => {} // No vectors: nothing to write.
            1 => dots::<T, 1>(w, k, act, out),
            2 => dots::<T, 2>(w, k, act, out),
            3 => dots::<T, 3>(w, k, act, out),
            4 => dots::<T, 4>(w, k, act, out),
            _ => return false,
        }
    }
    true
}

/// `out[r * N + c] = w_r . act_c` for every row of `w` (rows of `k`) and the `N` rows of
/// `act`: each 16-column step of weights widened once and multiplied into two
/// accumulators per vector, the weights [`super::PREFETCH_BYTES`] ahead prefetched into
/// L1 (AMD) or L2 (Intel: as the AVX-512 kernel); the last `k % 16` columns in scalar f32.
///
/// # Safety
/// AVX2, FMA and F16C must be available; `w` holds whole rows of `k >= 1`, `act` `N * k`
/// and `out` at least `w.len() / k * N` elements.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dots<T: Widen, const N: usize>(w: &[T], k: usize, act: &[f32], out: &mut [f32]) {
    let l1 = !crate::vendor::intel();
    let (x, o) = (act.as_ptr(), out.as_mut_ptr());
    let whole = k / STEP * STEP;
    for (r, row) in w.chunks_exact(k).enumerate() {
        let p = row.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); N]; 2];
        let mut off = 0;
        // SAFETY (all loads): columns off..off + 16 lie inside the row of w and every row
        // of act; out[r * N + c] is inside rows x N.
        while off < whole {
            // One line PREFETCH_BYTES on per 64 bytes of weights (a hint: never faults,
            // whatever the address, so `wrapping_add` may pass the end of `w`).
            let bytes = off * size_of::<T>();
            if bytes.is_multiple_of(64) {
                let ahead = p.cast::<u8>().wrapping_add(bytes + super::PREFETCH_BYTES);
                if l1 {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                } else {
                    _mm_prefetch::<_MM_HINT_T1>(ahead.cast());
                }
            }
            for (h, acc) in acc.iter_mut().enumerate() {
                let wv = T::load8(p.add(off + h * LANES));
                for (c, s) in acc.iter_mut().enumerate() {
                    let xv = _mm256_loadu_ps(x.add(c * k + off + h * LANES));
                    *s = _mm256_fmadd_ps(wv, xv, *s);
                }
            }
            off += STEP;
        }
        for (c, (&s0, &s1)) in acc[0].iter().zip(&acc[1]).enumerate() {
            let xc = &act[c * k..][..k];
            let tail: f32 = row[whole..]
                .iter()
                .zip(&xc[whole..])
                .map(|(&wv, &xv)| wv.to_f32() * xv)
                .sum();
            *o.add(r * N + c) = crate::avx2::sum_lanes(_mm256_add_ps(s0, s1)) + tail;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every weight type, 1..=4 vectors, `k` below one step, odd, a step plus a tail and
    /// DeepSeek-like, rows starting past the first: against an f64 reference of the
    /// widened weights, within the f32 rounding bound of the sum.
    #[test]
    fn rows_match_an_f64_reference_for_every_weight_type() {
        if !crate::avx2::available() {
            return;
        }
        let mut rng = crate::test_util::Lcg::new(11);
        for k in [1, 13, 16, 37, 83, 2048 + 5] {
            for n in 1..=super::super::MAX_VECTORS {
                let (first, rows) = (2, 5);
                let w32 = rng.vec((first + rows + 1) * k, -2.0, 2.0);
                let act = rng.vec(n * k, -2.0, 2.0);
                let wb: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
                let wh: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
                for (dtype, w) in [
                    ("f32", FloatSlice::F32(&w32)),
                    ("bf16", FloatSlice::BF16(&wb)),
                    ("f16", FloatSlice::F16(&wh)),
                ] {
                    let mut out = vec![f32::NAN; rows * n];
                    assert!(rows_times(&w, first, rows, k, &act, &mut out));
                    for r in 0..rows {
                        let mut row = vec![0.0; k];
                        w.read_f32((first + r) * k, &mut row);
                        for c in 0..n {
                            let what = format!("{dtype} k {k} n {n} row {r} vector {c}");
                            let (x, got) = (&act[c * k..][..k], out[r * n + c]);
                            super::super::tests::assert_f32_dot(&row, x, got, &what);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_declined_untouched() {
        if !crate::avx2::available() {
            return;
        }
        let w = vec![1.0f32; 4 * 8];
        let mut out = vec![7.0f32; 16];
        let s = FloatSlice::F32(&w);
        // k 0; act not whole vectors; five vectors; rows past the end; out too short.
        assert!(!rows_times(&s, 0, 1, 0, &[], &mut out));
        assert!(!rows_times(&s, 0, 1, 8, &[1.0; 9], &mut out));
        assert!(!rows_times(&s, 0, 1, 8, &[1.0; 40], &mut out));
        assert!(!rows_times(&s, 3, 2, 8, &[1.0; 8], &mut out));
        assert!(!rows_times(&s, 0, 4, 8, &[1.0; 24], &mut out[..11]));
        assert!(!rows_times(&s, usize::MAX, 2, 8, &[1.0; 8], &mut out));
        assert!(out.iter().all(|&v| v == 7.0));
    }
}

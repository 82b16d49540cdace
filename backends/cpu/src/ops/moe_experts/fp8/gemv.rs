//! FP8 weight rows times a few activation vectors (decode-time experts), with the e4m3
//! codes decoded in registers: no dequantized row is ever stored, not even in L1.
//!
//! On AVX-512 (F, BW, VL) each 32 codes are sign-extended to 16 bits, shifted and masked into
//! the f16 with the same sign, exponent field and mantissa (`(sx(b) << 7) & 0xBF80`: the
//! e4m3 value times 2^-8, exact, subnormals included), widened to f32 by `VCVTPH2PS` and
//! multiplied into per-block partial sums; each 128-column block's sum is scaled once, by
//! 2^8 (exact) and its block scale: DeepGEMM's scheme. The NaN codes (0x7F, 0xFF) are
//! tracked per row and make that row's results NaN, as a dequantized NaN weight would.
//! Elsewhere [`rows_times`] declines and the caller dequantizes row by row.

use super::Fp8Weights;
use moemla_core::fp8::BLOCK;

/// At most this many activation vectors per call (the decode path's limit).
pub const MAX_VECTORS: usize = 4;

/// `out[r * n + c] = W[first + r] . act[c]` for `rows` rows of the flattened `[E * R, C]`
/// FP8 matrix (`C` = `w.cols` columns) and `n` = `act.len() / C` (1..=[`MAX_VECTORS`])
/// f32 activation vectors; `out` is `[rows, n]`. Returns false (nothing written) where
/// the CPU has no AVX-512 or the arguments do not make whole rows and vectors; the caller
/// then takes its portable path.
pub fn rows_times(
    w: &Fp8Weights<'_>,
    first: usize,
    rows: usize,
    act: &[f32],
    out: &mut [f32],
) -> bool {
    let k = w.cols;
    let n = act.len().checked_div(k).unwrap_or(0);
    let fits = k > 0
        && (1..=MAX_VECTORS).contains(&n)
        && n * k == act.len()
        && rows.checked_mul(n) == Some(out.len())
        && first
            .checked_add(rows)
            .and_then(|end| end.checked_mul(k))
            .is_some_and(|end| end <= w.codes.len())
        && w.rows > 0
        && scales_cover(w, first, rows);
    if !fits {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
    {
        // SAFETY: AVX-512F, AVX-512BW and AVX-512VL were detected just above; `fits` checked that
        // rows first..first + rows of k codes, their scale rows, the n vectors of k
        // activations and the rows * n outputs all lie inside their slices.
        unsafe { x86::rows_times(w, first, rows, n, act, out) };
        return true;
    }
    false
}

/// Whether the scales of rows `first..first + rows` exist: `[E, ceil(R/128), ceil(C/128)]`
/// (checked arithmetic: a count that overflows does not fit).
fn scales_cover(w: &Fp8Weights<'_>, first: usize, rows: usize) -> bool {
    let Some(last) = (first + rows).checked_sub(1) else {
        return true;
    };
    let (e, r) = (last / w.rows, last % w.rows);
    let col_blocks = w.cols.div_ceil(BLOCK);
    let end = (w.rows.div_ceil(BLOCK))
        .checked_mul(col_blocks)
        .and_then(|per_expert| e.checked_mul(per_expert))
        .and_then(|at| {
            (r / BLOCK + 1)
                .checked_mul(col_blocks)
                .and_then(|n| at.checked_add(n))
        });
    end.is_some_and(|end| end <= w.scales.len())
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Fp8Weights, BLOCK, MAX_VECTORS};
    use std::arch::x86_64::*;

    /// Codes per step: one 256-bit load, two 16-lane f32 halves.
    const STEP: usize = 32;

    /// See [`super::rows_times`]: dispatches on `n` so that every accumulator is a
    /// register.
    ///
    /// # Safety
    /// AVX-512F, AVX-512BW and AVX-512VL must be available; rows `first..first + rows`
    /// of `w.cols` codes and their scales, `n` (1..=[`MAX_VECTORS`]) vectors of `w.cols`
    /// activations and `rows * n` outputs must exist.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn rows_times(
        w: &Fp8Weights<'_>,
        first: usize,
        rows: usize,
        n: usize,
        act: &[f32],
        out: &mut [f32],
    ) {
        match n {
            1 => rows_n::<1>(w, first, rows, act, out),
            2 => rows_n::<2>(w, first, rows, act, out),
            3 => rows_n::<3>(w, first, rows, act, out),
            _ => rows_n::<MAX_VECTORS>(w, first, rows, act, out),
        }
    }

    /// [`rows_times`] for `N` vectors. Each vector has four independent accumulators per
    /// block (the two 16-lane halves of even and odd steps), so that consecutive FMAs do
    /// not wait on each other.
    ///
    /// # Safety
    /// As [`rows_times`], with `N` vectors.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn rows_n<const N: usize>(
        w: &Fp8Weights<'_>,
        first: usize,
        rows: usize,
        act: &[f32],
        out: &mut [f32],
    ) {
        let k = w.cols;
        let col_blocks = k.div_ceil(BLOCK);
        let row_blocks = w.rows.div_ceil(BLOCK);
        let low7 = _mm256_set1_epi8(0x7F);
        let f16_bits = _mm512_set1_epi16(0xBF80u16 as i16);
        let two8 = _mm512_set1_ps(256.0);
        let x0 = act.as_ptr();
        for r in 0..rows {
            let row = first + r;
            let (e, er) = (row / w.rows, row % w.rows);
            let scales = w
                .scales
                .as_ptr()
                .add((e * row_blocks + er / BLOCK) * col_blocks);
            let codes = w.codes.as_ptr().add(row * k);
            let mut total = [_mm512_setzero_ps(); N];
            // The largest low-7-bit pattern seen: 0x7F means a NaN code.
            let mut seen = _mm256_setzero_si256();
            for b in 0..col_blocks {
                let start = b * BLOCK;
                let end = (start + BLOCK).min(k);
                let mut part = [[_mm512_setzero_ps(); 4]; N];
                let mut c = start;
                let mut odd = 0;
                while c < end {
                    let live = (end - c).min(STEP);
                    // SAFETY: codes c..c + live of this row exist; masked bytes are not read.
                    let v = if live == STEP {
                        _mm256_loadu_si256(codes.add(c).cast())
                    } else {
                        _mm256_maskz_loadu_epi8(((1u64 << live) - 1) as u32, codes.add(c).cast())
                    };
                    seen = _mm256_max_epu8(seen, _mm256_and_si256(v, low7));
                    let h =
                        _mm512_and_si512(_mm512_slli_epi16::<7>(_mm512_cvtepi8_epi16(v)), f16_bits);
                    let lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
                    let hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(h));
                    let (m_lo, m_hi) = lane_masks(live);
                    for (j, p) in part.iter_mut().enumerate() {
                        // SAFETY: activations j * k + c .. + live exist; masked lanes are
                        // neither read nor faulted on (and read as 0: 0 * 0 adds nothing).
                        let x = x0.add(j * k + c);
                        let (x_lo, x_hi) = if live == STEP {
                            (_mm512_loadu_ps(x), _mm512_loadu_ps(x.add(16)))
                        } else {
                            (
                                _mm512_maskz_loadu_ps(m_lo, x),
                                _mm512_maskz_loadu_ps(m_hi, x.add(16)),
                            )
                        };
                        p[odd] = _mm512_fmadd_ps(lo, x_lo, p[odd]);
                        p[odd + 1] = _mm512_fmadd_ps(hi, x_hi, p[odd + 1]);
                    }
                    odd ^= 2;
                    c += live;
                }
                // The f16 values are 2^-8 times the e4m3 ones.
                let s = _mm512_set1_ps(*scales.add(b));
                for (t, p) in total.iter_mut().zip(&part) {
                    let sum = _mm512_add_ps(_mm512_add_ps(p[0], p[1]), _mm512_add_ps(p[2], p[3]));
                    *t = _mm512_fmadd_ps(_mm512_mul_ps(sum, two8), s, *t);
                }
            }
            let mut lanes = [0u8; 32];
            _mm256_storeu_si256(lanes.as_mut_ptr().cast(), seen);
            let nan = lanes.contains(&0x7F);
            for (j, t) in total.iter().enumerate() {
                out[r * N + j] = if nan {
                    f32::NAN
                } else {
                    _mm512_reduce_add_ps(*t)
                };
            }
        }
    }

    /// The f32 lane masks of the two 16-lane halves of a step with `live` codes.
    #[inline(always)]
    fn lane_masks(live: usize) -> (__mmask16, __mmask16) {
        let bits = if live >= STEP {
            u32::MAX
        } else {
            (1u32 << live) - 1
        };
        (bits as __mmask16, (bits >> 16) as __mmask16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moemla_core::fp8::e4m3_decode;

    /// f64 reference: `sum_c e4m3(code) * scale(block) * act[c]`.
    fn reference(w: &Fp8Weights<'_>, row: usize, act: &[f32]) -> f64 {
        let (e, r) = (row / w.rows, row % w.rows);
        let cb = w.cols.div_ceil(BLOCK);
        let rb = w.rows.div_ceil(BLOCK);
        (0..w.cols)
            .map(|c| {
                let s = w.scales[(e * rb + r / BLOCK) * cb + c / BLOCK] as f64;
                e4m3_decode(w.codes[row * w.cols + c]) as f64 * s * act[c] as f64
            })
            .sum()
    }

    #[test]
    fn fused_rows_match_the_dequantized_dot_products_with_partial_blocks_and_nan_codes() {
        // E 2, R 130 (a partial row block), C 300 (two full 128-blocks, a partial one, and
        // a partial 32-step), every code but NaN in play, -0.0 (0x80) included.
        let (e, r, c) = (2, 130, 300);
        let mut codes: Vec<u8> = (0..e * r * c).map(|i| (i * 37 % 256) as u8).collect();
        for b in codes.iter_mut() {
            if *b & 0x7F == 0x7F {
                *b = 0x80;
            }
        }
        // One NaN code in row 5: that row's results are NaN.
        codes[5 * c + 77] = 0xFF;
        let scales: Vec<f32> = (0..e * 2 * 3)
            .map(|i| 2f32.powi(-(i as i32) % 7) * 0.37)
            .collect();
        let w = Fp8Weights {
            codes: &codes,
            scales: &scales,
            rows: r,
            cols: c,
        };
        for n in 1..=MAX_VECTORS {
            let act: Vec<f32> = (0..n * c)
                .map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.013)
                .collect();
            let (first, rows) = (3, 2 * r - 6); // crosses the expert boundary
            let mut out = vec![0.0; rows * n];
            if !rows_times(&w, first, rows, &act, &mut out) {
                // No AVX-512 here: the portable path serves, nothing was written.
                assert!(out.iter().all(|&v| v == 0.0));
                return;
            }
            for i in 0..rows {
                for j in 0..n {
                    let got = out[i * n + j];
                    if first + i == 5 {
                        assert!(got.is_nan(), "row 5 holds a NaN code");
                        continue;
                    }
                    let want = reference(&w, first + i, &act[j * c..(j + 1) * c]);
                    let mag: f64 = (0..c)
                        .map(|cc| {
                            (e4m3_decode(codes[(first + i) * c + cc]) as f64
                                * act[j * c + cc] as f64)
                                .abs()
                        })
                        .sum::<f64>()
                        * 0.37;
                    assert!(
                        (got as f64 - want).abs() <= 1e-6 * mag.max(1e-30),
                        "row {} vector {j}: {got} vs {want}",
                        first + i
                    );
                }
            }
        }
    }

    #[test]
    fn arguments_that_do_not_fit_are_declined_untouched() {
        let codes = vec![0x38u8; 2 * 128];
        let scales = vec![1.0f32; 2];
        let w = Fp8Weights {
            codes: &codes,
            scales: &scales,
            rows: 1,
            cols: 128,
        };
        let act = vec![1.0f32; 128];
        let mut out = vec![7.0f32; 3];
        // Three rows asked of two; five vectors; a ragged activation length.
        assert!(!rows_times(&w, 0, 3, &act, &mut out));
        assert!(!rows_times(&w, 0, 1, &vec![1.0; 5 * 128], &mut out[..1]));
        assert!(!rows_times(&w, 0, 1, &act[..100], &mut out[..1]));
        assert_eq!(out, vec![7.0; 3]);
        let mut one = [0.0f32; 2];
        if rows_times(&w, 0, 2, &act, &mut one) {
            assert_eq!(one, [128.0, 128.0]); // 0x38 = 1.0, scale 1
        }
    }
}

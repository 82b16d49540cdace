//! FP8 weight rows times a few activation vectors (decode-time experts), with the e4m3
//! codes decoded in registers: no dequantized row is ever stored, not even in L1. Each
//! 128-column block's partial sums are scaled once (DeepGEMM's scheme). Paths, fastest
//! first, each chosen at run time:
//!
//! - AVX512-BF16 + VBMI ([`super::dpbf16`]): codes to bf16 by table lookup, `VDPBF16PS`
//!   against activations that are bf16 values or `fp8_block128`-quantized (others decline).
//! - AVX-512 F/BW/VL: each 64 codes sign-extended to 16 bits, shifted and masked into the
//!   f16 with the same sign, exponent field and mantissa (`(sx(b) << 7) & 0xBF80`: the
//!   e4m3 value times 2^-8, exact, subnormals included), widened to f32 by `VCVTPH2PS`,
//!   f32 FMAs; each block's sum is scaled by 2^8 (exact) and its block scale. The NaN
//!   codes (0x7F, 0xFF) are tracked per row and make that row's results NaN, as a
//!   dequantized NaN weight would.
//!
//! Elsewhere [`rows_times`] declines and the caller dequantizes row by row (portable).

use super::Fp8Weights;
use crate::storage::row_range;
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
    let Some(n) = fits(w, first, rows, act, out).filter(|&n| n <= MAX_VECTORS) else {
        return false;
    };
    available_paths()
        .into_iter()
        .flatten()
        // SAFETY: each path was detected on this CPU; `fits` checked that rows first..first
        // + rows of k codes, their scale rows, the n vectors of k activations and the
        // rows * n outputs all lie inside their slices.
        .any(|path| unsafe { run(path, w, first, rows, n, act, out) })
}

/// [`rows_times`] for any number of activation vectors (`n` >= 1; the prefill path):
/// FP8 rows on the native bf16 dot only ([`super::dpbf16::rows_times_many`]: each
/// decoded row chunk dotted with every vector). Returns false (nothing written) where the
/// CPU lacks that path, it declines the activations, or the arguments do not fit; the
/// caller then takes its general path.
pub fn rows_times_many(
    w: &Fp8Weights<'_>,
    first: usize,
    rows: usize,
    act: &[f32],
    out: &mut [f32],
) -> bool {
    let Some(n) = fits(w, first, rows, act, out) else {
        return false;
    };
    #[cfg(target_arch = "x86_64")]
    if super::dpbf16::available() {
        // SAFETY: the path was detected on this CPU; `fits` checked that rows first..first
        // + rows of k codes, their scale rows, the n vectors of k activations and the
        // rows * n outputs all lie inside their slices.
        return unsafe { super::dpbf16::rows_times_many(w, first, rows, n, act, out) };
    }
    false
}

/// The number of activation vectors `n` (>= 1) when the arguments make whole rows and
/// vectors: `act` is `n` vectors of `w.cols`, `out` is `[rows, n]`, and rows
/// `first..first + rows` and their scales exist (checked arithmetic).
fn fits(w: &Fp8Weights<'_>, first: usize, rows: usize, act: &[f32], out: &[f32]) -> Option<usize> {
    let k = w.cols;
    let n = act.len().checked_div(k).unwrap_or(0);
    let ok = k > 0
        && n >= 1
        && n * k == act.len()
        && rows.checked_mul(n) == Some(out.len())
        && row_range(first, rows, k).is_some_and(|r| r.end <= w.codes.len())
        && w.rows > 0
        && scales_cover(w, first, rows);
    ok.then_some(n)
}

/// An in-register decode path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// AVX512-BF16 + VBMI ([`super::dpbf16`]): bf16-valued activations only.
    #[cfg(target_arch = "x86_64")]
    Bf16Dot,
    /// AVX-512 F/BW/VL: codes to f16 to f32, f32 FMAs.
    #[cfg(target_arch = "x86_64")]
    F32Fma,
}

/// The paths this CPU has, fastest first.
fn available_paths() -> [Option<Path>; 2] {
    #[cfg(target_arch = "x86_64")]
    {
        let f32_fma = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl");
        [
            super::dpbf16::available().then_some(Path::Bf16Dot),
            f32_fma.then_some(Path::F32Fma),
        ]
    }
    #[cfg(not(target_arch = "x86_64"))]
    [None, None]
}

/// Runs `path`; false when it declines the activations (nothing written).
///
/// # Safety
/// `path` must be one of [`available_paths`]; the arguments must pass
/// [`rows_times`]'s `fits`.
unsafe fn run(
    path: Path,
    w: &Fp8Weights<'_>,
    first: usize,
    rows: usize,
    n: usize,
    act: &[f32],
    out: &mut [f32],
) -> bool {
    match path {
        #[cfg(target_arch = "x86_64")]
        Path::Bf16Dot => super::dpbf16::rows_times(w, first, rows, n, act, out),
        #[cfg(target_arch = "x86_64")]
        Path::F32Fma => {
            x86::rows_times(w, first, rows, n, act, out);
            true
        }
    }
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

    /// Codes per load: one 512-bit register, four 16-lane f32 quarters.
    const STEP: usize = 64;

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

    /// [`rows_times`] for `N` vectors: whole 128-column blocks unmasked, a partial last
    /// block masked; each block's partial sums scaled once.
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
        let whole = k / BLOCK;
        let col_blocks = k.div_ceil(BLOCK);
        let row_blocks = w.rows.div_ceil(BLOCK);
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
            // The largest low-7-bit pattern seen, per byte lane: 0x7F means a NaN code.
            let mut seen = _mm512_setzero_si512();
            for b in 0..col_blocks {
                let c = b * BLOCK;
                // SAFETY: codes c..c + live of this row and activations j * k + c .. + live
                // exist (live = the block's width).
                let sums = if b < whole {
                    block::<N, true>(codes.add(c), x0.add(c), k, BLOCK, &mut seen)
                } else {
                    block::<N, false>(codes.add(c), x0.add(c), k, k - c, &mut seen)
                };
                // The f16 values are 2^-8 times the e4m3 ones: times 2^8 (exact), then the
                // block scale.
                let s = _mm512_set1_ps(*scales.add(b));
                for (t, sum) in total.iter_mut().zip(sums) {
                    *t = _mm512_fmadd_ps(_mm512_mul_ps(sum, two8), s, *t);
                }
            }
            let nan = _mm512_cmpeq_epi8_mask(seen, _mm512_set1_epi8(0x7F)) != 0;
            for (j, t) in total.iter().enumerate() {
                out[r * N + j] = if nan {
                    f32::NAN
                } else {
                    _mm512_reduce_add_ps(*t)
                };
            }
        }
    }

    /// The dot products of `live` (1..=128; 128 when `FULL`) codes at `codes` with the `N`
    /// activation vectors at `x + j * k`, per vector as 16 lanes of f32 partial sums of
    /// the codes' f16 images (2^-8 times their values). Folds the codes' low 7 bits into
    /// `seen` (a byte-wise maximum). Four independent accumulators per vector.
    ///
    /// # Safety
    /// AVX-512F/BW must be available; `codes[..live]` and `x[j * k..j * k + live]` for
    /// `j < N` must be readable (masked lanes beyond `live` are neither read nor faulted
    /// on).
    #[inline(always)]
    unsafe fn block<const N: usize, const FULL: bool>(
        codes: *const u8,
        x: *const f32,
        k: usize,
        live: usize,
        seen: &mut __m512i,
    ) -> [__m512; N] {
        let low7 = _mm512_set1_epi8(0x7F);
        let mut part = [[_mm512_setzero_ps(); 4]; N];
        for half in 0..BLOCK / STEP {
            let at = half * STEP;
            let v = if FULL {
                _mm512_loadu_si512(codes.add(at).cast())
            } else {
                let n = live.saturating_sub(at).min(STEP);
                if n == 0 {
                    break;
                }
                _mm512_maskz_loadu_epi8(byte_mask(n), codes.add(at).cast())
            };
            *seen = _mm512_max_epu8(*seen, _mm512_and_si512(v, low7));
            let q = decode(v);
            for (j, p) in part.iter_mut().enumerate() {
                // `at < live`: inside vector j.
                let xj = x.add(j * k + at);
                for (i, (acc, wq)) in p.iter_mut().zip(q).enumerate() {
                    let xv = if FULL {
                        _mm512_loadu_ps(xj.add(16 * i))
                    } else {
                        // Past `live` the address may lie beyond the activations (the last
                        // vector's end): computed with `wrapping_add` (no in-bounds claim),
                        // and no lane of it is read (mask 0).
                        let n = live.saturating_sub(at + 16 * i).min(16);
                        _mm512_maskz_loadu_ps(
                            ((1u32 << n) - 1) as __mmask16,
                            xj.wrapping_add(16 * i),
                        )
                    };
                    *acc = _mm512_fmadd_ps(wq, xv, *acc);
                }
            }
        }
        let mut sums = [_mm512_setzero_ps(); N];
        for (sum, p) in sums.iter_mut().zip(&part) {
            *sum = _mm512_add_ps(_mm512_add_ps(p[0], p[1]), _mm512_add_ps(p[2], p[3]));
        }
        sums
    }

    /// 64 e4m3 codes as four 16-lane f32 vectors (codes 0..16, 16..32, ...), each value
    /// 2^-8 times the code's (see [`f16_images`]), widened by `VCVTPH2PS`. NaN codes come
    /// out finite.
    ///
    /// # Safety
    /// AVX-512F/BW must be available.
    #[inline(always)]
    unsafe fn decode(v: __m512i) -> [__m512; 4] {
        let lo = f16_images(_mm512_castsi512_si256(v));
        let hi = f16_images(_mm512_extracti64x4_epi64::<1>(v));
        [
            _mm512_cvtph_ps(_mm512_castsi512_si256(lo)),
            _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(lo)),
            _mm512_cvtph_ps(_mm512_castsi512_si256(hi)),
            _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(hi)),
        ]
    }

    /// 32 e4m3 codes as the f16 with the same sign, exponent field and mantissa: sign-
    /// extended to 16 bits, shifted and masked (`(sx(b) << 7) & 0xBF80`), 2^-8 times the
    /// code's value, exact, subnormals included.
    ///
    /// # Safety
    /// AVX-512F/BW must be available.
    #[inline(always)]
    unsafe fn f16_images(codes: __m256i) -> __m512i {
        _mm512_and_si512(
            _mm512_slli_epi16::<7>(_mm512_cvtepi8_epi16(codes)),
            _mm512_set1_epi16(0xBF80u16 as i16),
        )
    }

    /// The byte mask of the first `n` (0..=64) lanes.
    #[inline(always)]
    fn byte_mask(n: usize) -> __mmask64 {
        if n >= STEP {
            u64::MAX
        } else {
            (1u64 << n) - 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moemla_core::fp8::{e4m3_decode, quantize_activation_row, ScaleMode};

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

    /// E 2, R 130 (a partial row block), C 300 (two full 128-blocks, a partial one, and a
    /// partial 64-step): codes with every value but NaN in play, -0.0 (0x80) and +-448
    /// (0x7E, 0xFE) included, and one NaN code in row 5 and one in row 140 (expert 1);
    /// scales `[2, 2, 3]`.
    fn test_weights() -> ((usize, usize, usize), Vec<u8>, Vec<f32>) {
        let (e, r, c) = (2, 130, 300);
        let mut codes: Vec<u8> = (0..e * r * c).map(|i| (i * 37 % 256) as u8).collect();
        for b in codes.iter_mut() {
            if *b & 0x7F == 0x7F {
                *b = 0x80;
            }
        }
        codes[5 * c + 77] = 0xFF;
        codes[140 * c + 299] = 0x7F;
        let scales: Vec<f32> = (0..e * 2 * 3)
            .map(|i| 2f32.powi(-(i as i32) % 7) * 0.37)
            .collect();
        ((e, r, c), codes, scales)
    }

    /// `n` activation vectors of `c`: bf16 values (`"bf16"`: bf16 tokens),
    /// `fp8_block128`-quantized ones with f32 scales (`"quantized"`), or plain f32 ones.
    fn test_act(kind: &str, n: usize, c: usize) -> Vec<f32> {
        let mut act: Vec<f32> = (0..n * c)
            .map(|i| {
                let v = ((i * 7 % 23) as f32 - 11.0) * 0.013 * (1 + i / c) as f32;
                if kind == "bf16" {
                    f32::from_bits(v.to_bits() & 0xFFFF_0000)
                } else {
                    v
                }
            })
            .collect();
        if kind == "quantized" {
            for vector in act.chunks_mut(c) {
                quantize_activation_row(vector, ScaleMode::F32);
            }
        }
        act
    }

    /// Checks `out` (`[rows, n]` from row `first`) against [`reference`]: within 1e-6 of
    /// the sum of the products' magnitudes; NaN for the rows holding a NaN code.
    fn check_out(w: &Fp8Weights<'_>, first: usize, act: &[f32], out: &[f32], what: &str) {
        let c = w.cols;
        let n = act.len() / c;
        for i in 0..out.len() / n {
            let row = first + i;
            for j in 0..n {
                let got = out[i * n + j];
                if row == 5 || row == 140 {
                    assert!(got.is_nan(), "{what}: row {row} holds a NaN code");
                    continue;
                }
                let want = reference(w, row, &act[j * c..(j + 1) * c]);
                let mag: f64 = (0..c)
                    .map(|cc| {
                        (e4m3_decode(w.codes[row * c + cc]) as f64 * act[j * c + cc] as f64).abs()
                    })
                    .sum::<f64>()
                    * 0.37;
                assert!(
                    (got as f64 - want).abs() <= 1e-6 * mag.max(1e-30),
                    "{what} row {row} vector {j}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn fused_rows_match_the_dequantized_dot_products_with_partial_blocks_and_nan_codes() {
        let ((_, r, c), codes, scales) = test_weights();
        let w = Fp8Weights {
            codes: &codes,
            scales: &scales,
            rows: r,
            cols: c,
        };
        let mut ran = 0;
        for path in available_paths().into_iter().flatten() {
            // bf16 values (bf16 tokens), fp8_block128-quantized ones (f32 scales), and
            // plain f32 ones.
            for kind in ["bf16", "quantized", "f32"] {
                for n in 1..=MAX_VECTORS {
                    let act = test_act(kind, n, c);
                    let (first, rows) = (3, 2 * r - 6); // crosses the expert boundary
                    let mut out = vec![0.0; rows * n];
                    // SAFETY: the path is available; the arguments fit.
                    if !unsafe { run(path, &w, first, rows, n, &act, &mut out) } {
                        // Only the bf16 path declines, and only plain f32 activations.
                        #[cfg(target_arch = "x86_64")]
                        assert_eq!((path, kind), (Path::Bf16Dot, "f32"));
                        assert!(out.iter().all(|&v| v == 0.0), "nothing written");
                        continue;
                    }
                    ran += 1;
                    check_out(&w, first, &act, &out, &format!("{path:?} {kind} n {n}"));
                }
            }
        }
        // Every available path ran: 3 x 4 calls for the f32 path, 2 x 4 for the bf16 one.
        let want: usize = available_paths()
            .into_iter()
            .flatten()
            .map(|p| if format!("{p:?}") == "Bf16Dot" { 8 } else { 12 })
            .sum();
        assert_eq!(ran, want);
    }

    #[test]
    fn many_vectors_match_the_dequantized_dot_products_at_odd_shapes() {
        // n 1..=13: groups of 1..=6 vectors, near-equal (12 = 6 + 6, 13 = 5 + 4 + 4); an
        // odd row count (the last row alone) whose pairs cross the expert boundary (rows
        // 129 and 130).
        let ((_, r, c), codes, scales) = test_weights();
        let w = Fp8Weights {
            codes: &codes,
            scales: &scales,
            rows: r,
            cols: c,
        };
        let (first, rows) = (3, 2 * r - 7);
        for kind in ["bf16", "quantized", "f32"] {
            for n in 1..=13 {
                let act = test_act(kind, n, c);
                let mut out = vec![0.0; rows * n];
                if !rows_times_many(&w, first, rows, &act, &mut out) {
                    // Declined: no bf16 dot on this CPU, or plain f32 activations.
                    assert!(kind == "f32" || available_paths()[0].is_none());
                    assert!(out.iter().all(|&v| v == 0.0), "nothing written");
                    continue;
                }
                assert_ne!(kind, "f32", "plain f32 activations are declined");
                check_out(&w, first, &act, &out, &format!("{kind} n {n}"));
            }
        }
        // Arguments that do not fit: declined untouched.
        let mut out = vec![7.0; 2 * 5];
        assert!(!rows_times_many(
            &w,
            2 * r - 1,
            2,
            &test_act("bf16", 5, c),
            &mut out
        ));
        assert!(!rows_times_many(
            &w,
            0,
            2,
            &test_act("bf16", 5, c)[1..],
            &mut out
        ));
        assert_eq!(out, vec![7.0; 10]);
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

//! FP8 weight rows times activation vectors on AVX2 + FMA + F16C, for CPUs without
//! AVX-512 (AMD Zen 2/3, Intel client cores): the AVX-512 FMA kernel's scheme
//! ([`super::x86`]) on 8-lane registers. Each 32 codes are sign-extended to 16 bits,
//! shifted and masked into the f16 with the same sign, exponent field and mantissa (2^-8
//! times the e4m3 value, exact, subnormals included) and widened to f32 by `VCVTPH2PS`,
//! then f32 FMAs against up to [`GROUP`] activation vectors in their blocked copy; each
//! 128-column block's sums are scaled once, by 2^8 (exact) and then the block scale in one
//! multiply-add into the row's totals (DeepGEMM's scheme, as the native bf16 dot's path
//! does: [`super::super::dpbf16`]). A partial last block's codes are copied into a
//! zero-padded block first (AVX2 has no masked byte loads); the NaN codes (0x7F, 0xFF) are
//! tracked per row, as there.
//!
//! Where it replaces the portable path (each row dequantized into a buffer, then one dot
//! per vector), on a 2-core AMD EPYC (Zen 3), `moe_experts` FP8 at DeepSeek-V3's shapes
//! ran at 10-16% of its floor. Scaling each decoded vector instead of each block's sums
//! costs a multiply per 8 codes beside the FMA and the conversion: there, one token
//! against 8 experts' gate and up rows (235 MB of codes, from memory) took 18.5-19.1 ms
//! that way and 13.8-17.4 ms scaled per block (six alternated runs, best of 30 each).

use super::x86::{blocked, RowsAt, PASS_BLOCKS, PASS_ROWS};
use super::{Fp8Weights, BLOCK};
use std::arch::x86_64::*;

/// Activation vectors per group: their 2 to 4 partial sums each, a step's 4 decoded
/// vectors, the scale and the row's NaN tracker stay within the 16 registers.
pub const GROUP: usize = 4;

/// Codes per load: one 256-bit register, four 8-lane f32 quarters.
const STEP: usize = 32;

/// `out[r * n + j] = W[first + r] . act[j]` for any `n` (>= 1): the vectors in near-equal
/// groups of at most [`GROUP`], each group over [`PASS_ROWS`] rows at a time. False
/// (nothing written) where the memory for the activations' blocked copy is not there.
///
/// # Safety
/// AVX2, FMA and F16C must be available; rows `first..first + rows` of `w.cols` codes and
/// their scales, `n` (>= 1) vectors of `w.cols` activations and `rows * n` outputs must
/// exist.
pub unsafe fn rows_times(
    w: &Fp8Weights<'_>,
    first: usize,
    rows: usize,
    n: usize,
    act: &[f32],
    out: &mut [f32],
) -> bool {
    blocked(act, w.cols, n, |x| {
        for r0 in (0..rows).step_by(PASS_ROWS) {
            let pass_rows = PASS_ROWS.min(rows - r0);
            for (j0, size) in super::groups(n, GROUP) {
                // SAFETY: as this function's contract; `x` holds the n vectors in blocks,
                // vectors j0..j0 + size exist (j0 + size <= n), and so do outputs
                // (r0 + i) * n + j0 + j for i < pass_rows, j < size.
                unsafe {
                    let xg = x.as_ptr().add(j0 * BLOCK);
                    let o = out.as_mut_ptr().add(r0 * n + j0);
                    let at = (w, first + r0, pass_rows, (xg, n * BLOCK), o, n);
                    match size {
                        1 => rows_n::<1, 4>(at),
                        2 => rows_n::<2, 4>(at),
                        3 => rows_n::<3, 2>(at),
                        _ => rows_n::<GROUP, 2>(at),
                    }
                }
            }
        }
    })
    .is_some()
}

/// `rows` rows times `N` activation vectors into `out + i * stride + j`, in passes of
/// [`PASS_BLOCKS`] 128-column blocks (every row meets the pass's activations while they
/// are in L1), `P` partial sums per vector per block, scaled into the row's totals.
///
/// # Safety
/// As [`rows_times`]: the rows, their scales, the `N` vectors and the outputs exist.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_n<const N: usize, const P: usize>(
    (w, first, rows, (x, block_stride), out, stride): RowsAt<'_, '_>,
) {
    let k = w.cols;
    let whole = k / BLOCK;
    let col_blocks = k.div_ceil(BLOCK);
    let mut total = [[_mm256_setzero_ps(); N]; PASS_ROWS];
    // Per row, the largest low-7-bit pattern seen, per byte lane: 0x7F means a NaN code.
    let mut seen = [_mm256_setzero_si256(); PASS_ROWS];
    // SAFETY (the pointers below): block b of vector j lies at x + b * block_stride +
    // j * 128, inside the N vectors' blocked copy; out + i * stride + j inside the rows
    // x N outputs; the codes and scales come from the bounds-checked `w.row`.
    for b0 in (0..col_blocks).step_by(PASS_BLOCKS) {
        for i in 0..rows {
            let (codes, scales) = w.row(first + i);
            // The same columns of the row PASS_ROWS further on (the next call's) into
            // L2: the column-wise passes defeat the hardware prefetcher. A hint, never a
            // fault, past the last row too.
            let ahead = codes.as_ptr().wrapping_add(PASS_ROWS * k + b0 * BLOCK);
            for line in (0..PASS_BLOCKS * BLOCK).step_by(64) {
                _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(line).cast());
            }
            let pass = b0..col_blocks.min(b0 + PASS_BLOCKS);
            for (b, &block_scale) in pass.clone().zip(&scales[pass]) {
                let c = b * BLOCK;
                let xb = x.add(b * block_stride);
                let mut part = [[_mm256_setzero_ps(); P]; N];
                if b < whole {
                    block::<N, P>((codes[c..].as_ptr(), xb), &mut seen[i], &mut part);
                } else {
                    // Zero codes past the row's end meet the zero-padded activations.
                    let mut padded = [0u8; BLOCK];
                    padded[..k - c].copy_from_slice(&codes[c..]);
                    block::<N, P>((padded.as_ptr(), xb), &mut seen[i], &mut part);
                }
                // The f16 images are 2^-8 times the e4m3 values: each vector's block sum
                // times 2^8 (exact), then times the block scale in one multiply-add.
                let scale = _mm256_set1_ps(block_scale);
                for (t, p) in total[i].iter_mut().zip(&part) {
                    let sum = p[1..].iter().fold(p[0], |a, &v| _mm256_add_ps(a, v));
                    *t = _mm256_fmadd_ps(_mm256_mul_ps(sum, _mm256_set1_ps(256.0)), scale, *t);
                }
            }
        }
    }
    for (i, (row_total, row_seen)) in total.iter().zip(seen).take(rows).enumerate() {
        let nan = _mm256_movemask_epi8(_mm256_cmpeq_epi8(row_seen, _mm256_set1_epi8(0x7F))) != 0;
        for (j, t) in row_total.iter().enumerate() {
            *out.add(i * stride + j) = if nan {
                f32::NAN
            } else {
                crate::avx2::sum_lanes(*t)
            };
        }
    }
}

/// Accumulates into `part` the products of the 128 codes at `codes`, decoded (2^-8 times
/// their values, unscaled), with the `N` padded
/// activation blocks at `x + j * 128`: `P` (2 or 4) independent partial sums of 8 lanes
/// per vector, each 32-code step's four quarters taking them in turn. Folds the codes'
/// low 7 bits into `seen` (a byte-wise maximum).
///
/// # Safety
/// AVX2, FMA and F16C must be available; `codes[..128]` and `x[..N * 128]` must be
/// readable.
#[inline(always)]
unsafe fn block<const N: usize, const P: usize>(
    (codes, x): (*const u8, *const f32),
    seen: &mut __m256i,
    part: &mut [[__m256; P]; N],
) {
    let low7 = _mm256_set1_epi8(0x7F);
    for at in (0..BLOCK).step_by(STEP) {
        let v = _mm256_loadu_si256(codes.add(at).cast());
        *seen = _mm256_max_epu8(*seen, _mm256_and_si256(v, low7));
        let q = decode(v);
        for (j, p) in part.iter_mut().enumerate() {
            let xj = x.add(j * BLOCK + at);
            for (i, wq) in q.into_iter().enumerate() {
                let xv = _mm256_loadu_ps(xj.add(8 * i));
                p[i % P] = _mm256_fmadd_ps(wq, xv, p[i % P]);
            }
        }
    }
}

/// 32 e4m3 codes as four 8-lane f32 vectors (codes 0..8, 8..16, ...), each value 2^-8
/// times the code's (see [`f16_images`]), widened by `VCVTPH2PS`. NaN codes come out
/// finite.
///
/// # Safety
/// AVX2 and F16C must be available.
#[inline(always)]
unsafe fn decode(v: __m256i) -> [__m256; 4] {
    let lo = f16_images(_mm256_castsi256_si128(v));
    let hi = f16_images(_mm256_extracti128_si256::<1>(v));
    [
        _mm256_cvtph_ps(_mm256_castsi256_si128(lo)),
        _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(lo)),
        _mm256_cvtph_ps(_mm256_castsi256_si128(hi)),
        _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(hi)),
    ]
}

/// 16 e4m3 codes as the f16 with the same sign, exponent field and mantissa: sign-
/// extended to 16 bits, shifted and masked (`(sx(b) << 7) & 0xBF80`), 2^-8 times the
/// code's value, exact, subnormals included.
///
/// # Safety
/// AVX2 must be available.
#[inline(always)]
unsafe fn f16_images(codes: __m128i) -> __m256i {
    _mm256_and_si256(
        _mm256_slli_epi16::<7>(_mm256_cvtepi8_epi16(codes)),
        _mm256_set1_epi16(0xBF80u16 as i16),
    )
}

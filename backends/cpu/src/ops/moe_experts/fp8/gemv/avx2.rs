//! FP8 weight rows times activation vectors on AVX2 + FMA, for CPUs without AVX-512
//! (AMD Zen 2/3, Intel client cores): f32 FMAs against up to [`GROUP`] activation vectors
//! in their blocked copy, each 128-column block's sums scaled once, by the block scale in
//! one multiply-add into the row's totals (DeepGEMM's scheme, as the native bf16 dot's
//! path does: [`super::super::dpbf16`]). A partial last block's codes are copied into a
//! zero-padded block first (AVX2 has no masked byte loads); the NaN codes (0x7F, 0xFF) are
//! tracked per row, as there.
//!
//! The codes are decoded within 32-bit lanes, never across a register's halves: 32 codes
//! are 8 lanes of 4, and the code in byte `q` of each lane is shifted to the lane's top
//! byte, arithmetic-shifted down 4 bits and masked (`0x87F0_0000`) into the f32 with its
//! sign, its 4 exponent bits at the bottom of the exponent field and its 3 mantissa bits
//! at the top of the mantissa: 2^-120 times the code's value, exact (the subnormal codes
//! as f32 subnormals). The four registers so decoded hold codes `q`, `4 + q`, ... of the
//! 32, so each block's activations are placed in that order in the blocked copy
//! ([`place_step`]), and each vector scaled there by 2^s (exact: [`activation_exponent`])
//! so that its products are those of the values times 2^(s - 120), s = 120 unless one of
//! its activations reaches 2^7; each block sum is multiplied back by 2^(120 - s) before
//! its scale. The subnormal codes (magnitudes below 2^-6) decode to f32 subnormals: in a
//! process that sets the FMAs' denormals-are-zero mode (MXCSR.DAZ, as some fast-math
//! builds do) they would count as zero here.
//!
//! On a 2-core AMD EPYC (Zen 3) the decode this replaces (codes sign-extended to 16 bits
//! by `VPMOVSXBW`, shifted into f16 and widened by `VCVTPH2PS`: exact too) bounded the
//! kernel: both widenings cross the register's halves. A harness (not committed) calling
//! [`rows_times`] from both cores over 32768 rows of 7168 codes (235 MB from memory, 146
//! rows per call, best of 300 calls, builds alternated twice) took 13.3-13.4 ms that way
//! and 11.0 ms now with one vector, 16.3-16.5 and 15.0 ms with two, 19.9-20.0 and
//! 18.3-18.6 with three, 22.6-22.7 and 22.3 with four; placing the activations one by
//! one instead of [`place_step`]'s transpose cost 1.3 ms at four vectors. Subnormal codes
//! (1 in 16 of these codes) cost nothing measurable: the same codes with none took as
//! long.

use super::x86::{blocked, RowsAt, PASS_BLOCKS, PASS_ROWS};
use super::{Fp8Weights, BLOCK};
use std::arch::x86_64::*;

/// Activation vectors per group: their 2 to 4 partial sums each, a step's 4 decoded
/// vectors, the scale and the row's NaN tracker stay within the 16 registers.
pub const GROUP: usize = 4;

/// Codes per load: one 256-bit register, decoded into four 8-lane f32 registers (byte `q`
/// of each 32-bit lane into register `q`).
const STEP: usize = 32;

/// `out[r * n + j] = W[first + r] . act[j]` for any `n` (>= 1): the vectors in near-equal
/// groups of at most [`GROUP`], each group over [`PASS_ROWS`] rows at a time. False
/// (nothing written) where the memory for the activations' blocked copy is not there.
///
/// # Safety
/// AVX2 and FMA must be available; rows `first..first + rows` of `w.cols` codes and
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
    // Each vector's exponent: its products scaled by 2^(s - 120), its block sums times
    // 2^(120 - s) back to the values' scale.
    let exponents: Vec<u32> = act
        .chunks_exact(w.cols)
        .take(n)
        .map(activation_exponent)
        .collect();
    let place = |j: usize, block: &mut [f32], values: &[f32]| {
        let up = pow2(exponents[j]);
        let whole = values.len() / STEP * STEP;
        for (to, from) in block.chunks_exact_mut(STEP).zip(values.chunks_exact(STEP)) {
            // SAFETY: AVX2 is available (this function's contract); both are 32 long.
            unsafe { place_step(to.as_mut_ptr(), from.as_ptr(), up) };
        }
        for (c, &v) in values.iter().enumerate().skip(whole) {
            block[slot(c)] = v * up;
        }
    };
    blocked(act, w.cols, n, place, |x| {
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
                    let restore = |j: usize| pow2(120 - exponents[j0 + j]);
                    match size {
                        1 => rows_n::<1, 4>(at, [restore(0)]),
                        2 => rows_n::<2, 4>(at, [restore(0), restore(1)]),
                        3 => rows_n::<3, 2>(at, [restore(0), restore(1), restore(2)]),
                        _ => rows_n::<GROUP, 2>(at, std::array::from_fn(restore)),
                    }
                }
            }
        }
    })
    .is_some()
}

/// The exponent `s` (0 to 120) of the power of two one activation vector is scaled by in
/// the blocked copy: 120, or less where its largest finite magnitude reaches 2^7, so that
/// every scaled activation stays below 2^127 (0 where there is none but zeros, infinities
/// and NaNs). Scaling by it is exact, and the products of the decoded codes (2^-120 times
/// their values) with the scaled activations round as the values' products would, but
/// for those below 2^(-6 - s): with s < 120, 2^-132 or less of the vector's largest
/// activation.
fn activation_exponent(act: &[f32]) -> u32 {
    let largest = act
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f32, |m, v| m.max(v.abs()));
    if largest == 0.0 {
        return 0;
    }
    // The unbiased exponent: largest < 2^(e + 1) (-127 for subnormals, which need 120).
    let e = (largest.to_bits() >> 23) as i32 - 127;
    (126 - e).clamp(0, 120) as u32
}

/// 2^e as f32, for e in 0..=120 (a normal number).
fn pow2(e: u32) -> f32 {
    f32::from_bits((127 + e) << 23)
}

/// The 32 activations at `from` times `up` into `to` in [`slot`] order: as 8 rows of 4
/// (`from[4 j + q]`, row `j`), transposed into 4 rows of 8 (`to[8 q + j]`). Rows `j` and
/// `4 + j` share a register (its two halves), so one in-half 4 x 4 transpose does it.
///
/// # Safety
/// AVX2 must be available; 32 values at `from` must be readable and at `to` writable.
#[target_feature(enable = "avx2")]
unsafe fn place_step(to: *mut f32, from: *const f32, up: f32) {
    let rows = |j: usize| {
        let low = _mm256_castps128_ps256(_mm_loadu_ps(from.add(4 * j)));
        _mm256_insertf128_ps::<1>(low, _mm_loadu_ps(from.add(4 * j + 16)))
    };
    let (r0, r1, r2, r3) = (rows(0), rows(1), rows(2), rows(3));
    let (a, b) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpacklo_ps(r2, r3));
    let (c, d) = (_mm256_unpackhi_ps(r0, r1), _mm256_unpackhi_ps(r2, r3));
    let columns = [
        _mm256_shuffle_ps::<0x44>(a, b),
        _mm256_shuffle_ps::<0xEE>(a, b),
        _mm256_shuffle_ps::<0x44>(c, d),
        _mm256_shuffle_ps::<0xEE>(c, d),
    ];
    for (q, column) in columns.into_iter().enumerate() {
        _mm256_storeu_ps(to.add(8 * q), _mm256_mul_ps(column, _mm256_set1_ps(up)));
    }
}

/// Where column `c` of a block sits in its blocked copy: within each 32 columns, code `q`
/// of lane `j` (column `4 j + q`) meets lane `j` of decoded register `q` ([`decode`]).
fn slot(c: usize) -> usize {
    c / STEP * STEP + c % 4 * 8 + c % STEP / 4
}

/// `rows` rows times `N` activation vectors into `out + i * stride + j`, in passes of
/// [`PASS_BLOCKS`] 128-column blocks (every row meets the pass's activations while they
/// are in L1), `P` partial sums per vector per block, scaled into the row's totals.
///
/// # Safety
/// As [`rows_times`]: the rows, their scales, the `N` vectors and the outputs exist.
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_n<const N: usize, const P: usize>(
    (w, first, rows, (x, block_stride), out, stride): RowsAt<'_, '_>,
    restore: [f32; N],
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
                // Each vector's block sum back to the values' scale (a power of two:
                // exact), then times the block scale in one multiply-add.
                let scale = _mm256_set1_ps(block_scale);
                for ((t, p), &back) in total[i].iter_mut().zip(&part).zip(&restore) {
                    let sum = p[1..].iter().fold(p[0], |a, &v| _mm256_add_ps(a, v));
                    let sum = _mm256_mul_ps(sum, _mm256_set1_ps(back));
                    *t = _mm256_fmadd_ps(sum, scale, *t);
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

/// Accumulates into `part` the products of the 128 codes at `codes`, decoded (2^-120
/// times their values), with the `N` activation blocks at `x + j * 128` (in [`slot`]
/// order): `P` (2 or 4) independent partial sums of 8 lanes per vector, each 32-code
/// step's four decoded registers taking them in turn. Folds the codes' low 7 bits into
/// `seen` (a byte-wise maximum).
///
/// # Safety
/// AVX2 and FMA must be available; `codes[..128]` and `x[..N * 128]` must be readable.
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

/// 32 e4m3 codes as four 8-lane f32 registers, register `q` holding byte `q` of each
/// 32-bit lane (codes `q`, `4 + q`, ..., `28 + q`): that byte shifted to the lane's top,
/// arithmetic-shifted down 4 bits (the sign stays at the top, the exponent and mantissa
/// bits land at bits 26..20) and masked with `0x87F0_0000` (clearing the sign's copies
/// and the other codes' bits). Each value is 2^-120 times the code's, exact, subnormal
/// codes included (as f32 subnormals); NaN codes come out finite.
///
/// # Safety
/// AVX2 must be available.
#[inline(always)]
unsafe fn decode(v: __m256i) -> [__m256; 4] {
    let mask = _mm256_set1_epi32(0x87F0_0000u32 as i32);
    let top =
        |lanes: __m256i| _mm256_castsi256_ps(_mm256_and_si256(_mm256_srai_epi32::<4>(lanes), mask));
    [
        top(_mm256_slli_epi32::<24>(v)),
        top(_mm256_slli_epi32::<16>(v)),
        top(_mm256_slli_epi32::<8>(v)),
        top(v),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code decodes to 2^-120 times its e4m3 value, bit for bit (NaN codes: some
    /// finite value), in the lane and register [`slot`] says its column meets.
    #[test]
    fn every_code_decodes_exactly_where_its_activation_is_placed() {
        if !crate::avx2::available() {
            return;
        }
        for first in (0..256).step_by(32) {
            let codes: Vec<u8> = (first..first + 32).map(|c| c as u8).collect();
            // SAFETY: AVX2 was detected; 32 bytes are read from `codes`.
            let q = unsafe { decode(_mm256_loadu_si256(codes.as_ptr().cast())) };
            let mut lanes = [0f32; 32];
            for (r, reg) in q.iter().enumerate() {
                // SAFETY: AVX2 was detected; 8 f32 are written into `lanes`.
                unsafe { _mm256_storeu_ps(lanes[8 * r..].as_mut_ptr(), *reg) };
            }
            for (c, &code) in codes.iter().enumerate() {
                let value = moemla_core::fp8::e4m3_decode(code);
                let got = lanes[slot(c)];
                if value.is_nan() {
                    assert!(got.is_finite(), "code {code:#04x}");
                } else {
                    // Exact in f32 (subnormals included): compared bit for bit, so
                    // that -0.0 (0x80) keeps its sign.
                    let want = (value as f64 * 2f64.powi(-120)) as f32;
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "code {code:#04x} at column {c}"
                    );
                }
            }
        }
    }

    /// The exponent keeps the largest activation below 2^127 and is 120 below 2^7;
    /// infinities, NaNs and zeros do not move it.
    #[test]
    fn the_activation_exponent_keeps_every_scaled_value_finite() {
        for (act, want) in [
            (vec![0.0, -0.0], 0),
            (vec![1.0, -100.0, 127.9], 120),
            (vec![128.0], 119),
            (vec![-3.0e38, 1.0], 0),
            (vec![f32::INFINITY, f32::NAN, 2.0], 120),
            (vec![f32::from_bits(1)], 120),
            (vec![65536.0, 1.5], 110),
            (vec![2f32.powi(126)], 0),
            (vec![f32::MAX], 0),
        ] {
            let s = activation_exponent(&act);
            assert_eq!(s, want, "{act:?}");
            for v in act.iter().filter(|v| v.is_finite()) {
                assert!((v * pow2(s)).is_finite(), "{v} x 2^{s}");
            }
        }
    }
}

//! FP8 weight rows times activation vectors on AVX2 + FMA, for CPUs without AVX-512
//! (AMD Zen 2/3, Intel client cores): f32 FMAs against up to [`GROUP`] activation vectors
//! in their blocked copy, the weights' block scales folded into that copy. The rows of one
//! 128-row group of an expert share their scales (`[E, ceil(R / 128), ceil(C / 128)]`), so
//! for each run of such rows the activations are placed once more, each value times its
//! column block's scale (one rounding, of the activation times the scale, where the
//! contract's dequantized weight rounds the code times the scale: the results differ by
//! about an ulp per product), and the rows then run through every block with nothing but
//! FMAs: no per-block sums to scale and add. A partial last block's codes are
//! copied into a zero-padded block first (AVX2 has no masked byte loads); the NaN codes
//! (0x7F, 0xFF) are tracked per row and make its results NaN, as a dequantized NaN weight
//! would.
//!
//! The codes are decoded within 32-bit lanes, never across a register's halves: 32 codes
//! are 8 lanes of 4, and the code in byte `q` of each lane is shifted to the lane's top
//! byte, arithmetic-shifted down 4 bits and masked (`0x87F0_0000`) into the f32 with its
//! sign, its 4 exponent bits at the bottom of the exponent field and its 3 mantissa bits
//! at the top of the mantissa: 2^-120 times the code's value, exact (the subnormal codes
//! as f32 subnormals). The four registers so decoded hold codes `q`, `4 + q`, ... of the
//! 32, so each block's activations are placed in that order in the blocked copy
//! ([`place_step`]), and each vector's values times scales multiplied there by 2^s
//! ([`group_exponent`]: the largest lands in [2^126, 2^127] once rounded), computed in f64
//! so that the placed value is the product rounded once; each row's sum is multiplied
//! back by 2^(120 - s) at the end. One exponent serves every block of a row, so products
//! more than about 2^132 below the largest activation times scale of the run come out
//! subnormal or zero (a row whose codes are zero in the dominant block loses them): scales
//! and activations that far apart are not DeepSeek's. The subnormal codes (magnitudes below
//! 2^-6) decode to f32 subnormals: in a process that sets the FMAs' denormals-are-zero mode
//! (MXCSR.DAZ, as some fast-math builds do) they would count as zero here.
//!
//! On a 2-core AMD EPYC (Zen 3) a harness (not committed; 128 rows of 7168 codes per call,
//! the op's tile) measured the kernel on one core, codes from L3, at 8.3 cycles per 32
//! codes with one vector, 11.1 with two and 16.2 with four when each 128-column block's
//! sums were scaled and added into the row's totals (DeepGEMM's scheme: those few
//! dependent operations per block held it back), and at 7.0-7.1, 9.9-10.0 and 15.0 with
//! the scales folded in. From both cores over 32768 rows (235 MB from memory, one
//! vector) 10.1-10.2 ms before, 9.5-9.7 ms after. Passes of 8 or 16 blocks instead of 4
//! were a little faster on one core and slower from both (10.8-11.7 and 12.3-13.1 ms).
//! The decode before this one (codes sign-extended to 16 bits by `VPMOVSXBW`, shifted
//! into f16 and widened by `VCVTPH2PS`, exact too) was slower still: both widenings cross
//! the register's halves. Subnormal codes (1 in 16 of these codes) cost nothing
//! measurable.

use super::x86::{blocked, place_all, RowsAt, PASS_BLOCKS, PASS_ROWS};
use super::{Fp8Weights, BLOCK};
use std::arch::x86_64::*;

/// Activation vectors per group: their partial sums (4 each for 1 or 2 vectors, 2 for 3
/// or 4, 1 from 5 on), a step's codes and its 4 decoded vectors, the mask and the row's
/// NaN tracker stay within the 16 registers. At prefill (about 8 tokens per expert at
/// T=256 with DeepSeek-V3's 256 experts) groups of 8 decode each code once where groups of
/// 4 decoded it twice: on one Zen 3 core (128 x 7168 codes per call) 8 vectors took
/// 25.0-25.7 cycles per 32 codes against 2 x 14.6-14.9 (each FMA loads its activations,
/// so the loads near their limit with the FMAs); `moemla bench --filter "fp8 w8a16
/// T=256 "` 1.87-1.89 -> 1.69-1.70 s.
pub const GROUP: usize = 8;

/// Codes per load: one 256-bit register, decoded into four 8-lane f32 registers (byte `q`
/// of each 32-bit lane into register `q`).
const STEP: usize = 32;

/// `out[r * n + j] = W[first + r] . act[j]` for any `n` (>= 1): per run of rows that
/// share their scales, the activations placed with those scales, then the vectors in
/// near-equal groups of at most [`GROUP`], each group over [`PASS_ROWS`] rows at a time.
/// False (nothing written) where the memory for the activations' blocked copy is not
/// there.
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
    let k = w.cols;
    let col_blocks = k.div_ceil(BLOCK);
    // Each vector's largest finite magnitude per block, `[n][col_blocks]`, once per call.
    let (mut largest, mut exponents) = (Vec::new(), Vec::new());
    if largest.try_reserve_exact(n * col_blocks).is_err() || exponents.try_reserve_exact(n).is_err()
    {
        return false;
    }
    for values in act
        .chunks_exact(k)
        .take(n)
        .flat_map(|vector| vector.chunks(BLOCK))
    {
        // SAFETY: AVX2 is available (this function's contract).
        largest.push(unsafe { largest_finite(values) });
    }
    exponents.resize(n, 0i32);
    blocked(k, n, |x| {
        let mut r = 0;
        while r < rows {
            let (_, scales) = w.row(first + r);
            let run = w.rows_sharing_scales(first + r).min(rows - r);
            for (j, s) in exponents.iter_mut().enumerate() {
                *s = group_exponent(&largest[j * col_blocks..][..col_blocks], scales);
            }
            place_all(x, act, k, n, |j, b, block, values| {
                let factor = f64::from(scales[b]) * pow2(exponents[j]);
                let whole = values.len() / STEP * STEP;
                for (to, from) in block.chunks_exact_mut(STEP).zip(values.chunks_exact(STEP)) {
                    // SAFETY: AVX2 is available (this function's contract); both are 32
                    // long.
                    unsafe { place_step(to.as_mut_ptr(), from.as_ptr(), factor) };
                }
                for (c, &v) in values.iter().enumerate().skip(whole) {
                    block[slot(c)] = (f64::from(v) * factor) as f32;
                }
            });
            for r0 in (r..r + run).step_by(PASS_ROWS) {
                let pass_rows = PASS_ROWS.min(r + run - r0);
                for (j0, size) in super::groups(n, GROUP) {
                    // SAFETY: as this function's contract; `x` holds the n vectors in
                    // blocks, vectors j0..j0 + size exist (j0 + size <= n), and so do
                    // outputs (r0 + i) * n + j0 + j for i < pass_rows, j < size.
                    unsafe {
                        let xg = x.as_ptr().add(j0 * BLOCK);
                        let o = out.as_mut_ptr().add(r0 * n + j0);
                        let at = (w, first + r0, pass_rows, (xg, n * BLOCK), o, n);
                        let restore = |j: usize| pow2(120 - exponents[j0 + j]);
                        match size {
                            1 => rows_n::<1, 4>(at, std::array::from_fn(restore)),
                            2 => rows_n::<2, 4>(at, std::array::from_fn(restore)),
                            3 => rows_n::<3, 2>(at, std::array::from_fn(restore)),
                            4 => rows_n::<4, 2>(at, std::array::from_fn(restore)),
                            5 => rows_n::<5, 1>(at, std::array::from_fn(restore)),
                            6 => rows_n::<6, 1>(at, std::array::from_fn(restore)),
                            7 => rows_n::<7, 1>(at, std::array::from_fn(restore)),
                            _ => rows_n::<GROUP, 1>(at, std::array::from_fn(restore)),
                        }
                    }
                }
            }
            r += run;
        }
    })
    .is_some()
}

/// The largest finite magnitude among `values` (0 where there is none but zeros,
/// infinities and NaNs). The magnitudes are compared as bit patterns (which order as the
/// values do for non-negative floats), in 8 lanes that the compiler vectorizes: as a
/// scalar `f32` fold over a 7168-value vector this took a third as long as the kernel's 16
/// rows (`perf` on a Zen 3 core).
///
/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2")]
unsafe fn largest_finite(values: &[f32]) -> f32 {
    // Infinities and NaNs (the exponent field all ones) count as zero.
    let finite = |v: &f32| match v.to_bits() & 0x7FFF_FFFF {
        magnitude if magnitude < 0x7F80_0000 => magnitude,
        _ => 0,
    };
    let mut lanes = [0u32; 8];
    let whole = values.chunks_exact(8);
    let tail = whole.remainder().iter().map(finite).fold(0, u32::max);
    for chunk in whole {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane = (*lane).max(finite(v));
        }
    }
    f32::from_bits(lanes.into_iter().fold(tail, u32::max))
}

/// The exponent `s` one activation vector's placed values (each times its column block's
/// scale, from `scales`) are multiplied by, given its blocks' largest finite magnitudes
/// (`largest`, one per block): the largest finite product lands in [2^126, 2^127) before
/// its rounding to f32 (which can make it 2^127), so every placed value is finite and the
/// decoded codes' products with them (2^-120 times the codes' values: below 2^16) are
/// normal floats down to 2^-132 of the largest, and their sums cannot overflow. 0 where no
/// product is finite and nonzero (the placed values are then zeros, infinities or NaNs,
/// which the sums carry as they are). In f64, where the products are exact: from 2^-298 to
/// below 2^256, so `s` is -129 to 424.
fn group_exponent(largest: &[f32], scales: &[f32]) -> i32 {
    let product = largest
        .iter()
        .zip(scales)
        .map(|(&x, &scale)| f64::from(x) * f64::from(scale).abs())
        .filter(|p| p.is_finite())
        .fold(0f64, f64::max);
    if product == 0.0 {
        return 0;
    }
    // The unbiased exponent: product < 2^(e + 1) (f64: normal for every such product).
    let e = ((product.to_bits() >> 52) & 0x7FF) as i32 - 1023;
    126 - e
}

/// 2^e as f64, for e in -1022..=1023 (a normal number).
fn pow2(e: i32) -> f64 {
    f64::from_bits(((1023 + e) as u64) << 52)
}

/// The 32 activations at `from`, each times `factor` (in f64, rounded once to f32), into
/// `to` in [`slot`] order: as 8 rows of 4 (`from[4 j + q]`, row `j`), transposed into 4
/// rows of 8 (`to[8 q + j]`). Rows `j` and `4 + j` share a register (its two halves), so
/// one in-half 4 x 4 transpose does it.
///
/// # Safety
/// AVX2 must be available; 32 values at `from` must be readable and at `to` writable.
#[target_feature(enable = "avx2")]
unsafe fn place_step(to: *mut f32, from: *const f32, factor: f64) {
    let factor = _mm256_set1_pd(factor);
    let scaled = |j: usize| {
        let wide = _mm256_cvtps_pd(_mm_loadu_ps(from.add(4 * j)));
        _mm256_cvtpd_ps(_mm256_mul_pd(wide, factor))
    };
    let rows =
        |j: usize| _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(scaled(j)), scaled(j + 4));
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
        _mm256_storeu_ps(to.add(8 * q), column);
    }
}

/// Where column `c` of a block sits in its blocked copy: within each 32 columns, code `q`
/// of lane `j` (column `4 j + q`) meets lane `j` of decoded register `q` ([`decode`]).
fn slot(c: usize) -> usize {
    c / STEP * STEP + c % 4 * 8 + c % STEP / 4
}

/// `rows` rows (sharing their scales, which the placed activations carry) times `N`
/// activation vectors into `out + i * stride + j`, in passes of [`PASS_BLOCKS`] 128-column
/// blocks (every row meets the pass's activations while they are in L1), `P` partial sums
/// per vector through each pass, added into the row's totals at its end. Each total is
/// multiplied by `restore[j]` (2^(120 - s), in f64) into the output.
///
/// # Safety
/// As [`rows_times`]: the rows, their scales, the `N` vectors and the outputs exist.
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_n<const N: usize, const P: usize>(
    (w, first, rows, (x, block_stride), out, stride): RowsAt<'_, '_>,
    restore: [f64; N],
) {
    let k = w.cols;
    let whole = k / BLOCK;
    let col_blocks = k.div_ceil(BLOCK);
    let mut total = [[_mm256_setzero_ps(); N]; PASS_ROWS];
    // Per row, the largest low-7-bit pattern seen, per byte lane: 0x7F means a NaN code.
    let mut seen = [_mm256_setzero_si256(); PASS_ROWS];
    // SAFETY (the pointers below): block b of vector j lies at x + b * block_stride +
    // j * 128, inside the N vectors' blocked copy; out + i * stride + j inside the rows
    // x N outputs; the codes come from a bounds-checked slice of `w.codes`.
    for b0 in (0..col_blocks).step_by(PASS_BLOCKS) {
        let pass = b0..col_blocks.min(b0 + PASS_BLOCKS);
        for i in 0..rows {
            // The row's codes alone: its scales are in the placed activations (`w.row`
            // also sliced them, dividing by the rows per expert: 7.45 against 7.15
            // cycles per 32 codes on one Zen 3 core, no change from both from memory).
            let codes = &w.codes[(first + i) * k..][..k];
            // The same columns of the row PASS_ROWS further on (the next call's) into
            // L2: the column-wise passes defeat the hardware prefetcher. A hint, never a
            // fault, past the last row too.
            let ahead = codes.as_ptr().wrapping_add(PASS_ROWS * k + b0 * BLOCK);
            for line in (0..pass.len() * BLOCK).step_by(64) {
                _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(line).cast());
            }
            let mut part = [[_mm256_setzero_ps(); P]; N];
            for b in pass.clone() {
                let c = b * BLOCK;
                let xb = x.add(b * block_stride);
                if b < whole {
                    block::<N, P>((codes[c..].as_ptr(), xb), &mut seen[i], &mut part);
                } else {
                    // Zero codes past the row's end meet the zero-padded activations.
                    let mut padded = [0u8; BLOCK];
                    padded[..k - c].copy_from_slice(&codes[c..]);
                    block::<N, P>((padded.as_ptr(), xb), &mut seen[i], &mut part);
                }
            }
            for (t, p) in total[i].iter_mut().zip(&part) {
                *t = p.iter().fold(*t, |a, &v| _mm256_add_ps(a, v));
            }
        }
    }
    for (i, (row_total, row_seen)) in total.iter().zip(seen).take(rows).enumerate() {
        let nan = _mm256_movemask_epi8(_mm256_cmpeq_epi8(row_seen, _mm256_set1_epi8(0x7F))) != 0;
        for (j, (t, &back)) in row_total.iter().zip(&restore).enumerate() {
            *out.add(i * stride + j) = if nan {
                f32::NAN
            } else {
                (f64::from(crate::avx2::sum_lanes(*t)) * back) as f32
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
    use moemla_core::fp8::e4m3_decode;

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

    /// The kernel against an f64 reference of the dequantized weights where the values
    /// are extreme: an all-zero vector (exponent 0), an infinite and a NaN activation,
    /// activations times scales of 2^128 (a negative exponent: the placed values are
    /// scaled down), and block scales of 0, infinity and NaN, over 3 experts of 2 rows
    /// (a run of rows per expert). Infinite and NaN results must match the reference's.
    #[test]
    fn extreme_activations_and_scales_match_the_dequantized_reference() {
        if !crate::avx2::available() {
            return;
        }
        let (e, r, c) = (3, 2, 300);
        // Small codes (|value| <= 2^-7, both signs, zeros), so that 2^128 times a row's
        // sum stays finite.
        let codes: Vec<u8> = (0..e * r * c)
            .map(|i| [0x01, 0x81, 0x00, 0x03, 0x82][i % 5])
            .collect();
        let big = 2f32.powi(64);
        let value = |what: &str, i: usize| match what {
            "zeros" => 0.0,
            "infinity" if i == 7 => f32::INFINITY,
            "NaN" if i == 150 => f32::NAN,
            "2^128" if i.is_multiple_of(2) => big,
            "2^128" => -big,
            _ => 0.1 - (i % 7) as f32 * 0.05,
        };
        let normal = [0.5, 0.25, 2.0];
        let cases = [
            ("zeros", normal),
            ("infinity", normal),
            ("NaN", normal),
            ("2^128", [big; 3]),
        ];
        for (what, block_scales) in cases {
            for special in [1.0, 0.0, f32::INFINITY, f32::NAN] {
                // Expert 1's middle block takes the special scale.
                let mut scales: Vec<f32> = (0..e).flat_map(|_| block_scales).collect();
                scales[4] *= special;
                let w = Fp8Weights {
                    codes: &codes,
                    scales: &scales,
                    rows: r,
                    cols: c,
                };
                let act: Vec<f32> = (0..c).map(|i| value(what, i)).collect();
                let mut out = vec![0f32; e * r];
                // SAFETY: AVX2 and FMA were detected; the rows, scales, vector and
                // outputs exist.
                assert!(unsafe { rows_times(&w, 0, e * r, 1, &act, &mut out) });
                for (row, &got) in out.iter().enumerate() {
                    let (codes, scales) = w.row(row);
                    let terms = codes
                        .iter()
                        .zip(&act)
                        .enumerate()
                        .map(|(col, (&code, &x))| {
                            let weight =
                                f64::from(e4m3_decode(code)) * f64::from(scales[col / BLOCK]);
                            weight * f64::from(x)
                        });
                    let want: f64 = terms.clone().sum();
                    let magnitude: f64 = terms.map(f64::abs).sum();
                    let at = format!("{what}, scale x {special}, row {row}: {got} vs {want}");
                    if want.is_nan() || (want as f32).is_infinite() {
                        assert_eq!(got.is_nan(), want.is_nan(), "{at}");
                        assert!(want.is_nan() || got == want as f32, "{at}");
                    } else {
                        assert!((f64::from(got) - want).abs() <= 1e-6 * magnitude, "{at}");
                    }
                }
            }
        }
    }

    /// The largest finite magnitude, wherever it is among the whole groups of 8 lanes or
    /// the partial one after them; infinities and NaNs do not count.
    #[test]
    fn the_largest_finite_magnitude_skips_infinities_and_nans() {
        if !crate::avx2::available() {
            return;
        }
        let long = |at: usize, v: f32| -> Vec<f32> {
            (0..21)
                .map(|i| match i {
                    3 => f32::NAN,
                    9 => f32::NEG_INFINITY,
                    i if i == at => v,
                    _ => i as f32,
                })
                .collect()
        };
        for (values, want) in [
            (vec![0.0, -0.0], 0.0),
            (vec![1.0, -100.0, 127.9], 127.9),
            (vec![f32::INFINITY, f32::NAN, -2.0], 2.0),
            (vec![f32::from_bits(1)], f32::from_bits(1)),
            (vec![-f32::MAX, 1.0], f32::MAX),
            (long(5, -1000.0), 1000.0),
            (long(17, 300.0), 300.0),
        ] {
            // SAFETY: AVX2 was detected.
            let got = unsafe { largest_finite(&values) };
            assert_eq!(got.to_bits(), want.to_bits(), "{values:?}");
        }
    }

    /// The group exponent puts the largest finite product (activation times scale) in
    /// [2^126, 2^127) after placement, across the whole range of both factors, and skips
    /// scales that are not finite.
    #[test]
    fn the_group_exponent_puts_the_largest_placed_value_below_2_to_127() {
        let tiny = f32::from_bits(1);
        for (largest, scales, want) in [
            (vec![1.0], vec![1.0], Some(126)),
            (vec![0.0, 0.0], vec![2.0, -3.0], Some(0)),
            (vec![f32::MAX], vec![f32::MAX], Some(-129)),
            (vec![tiny], vec![tiny], Some(424)),
            (vec![3.0, 1e-30], vec![f32::NAN, 1e30], None),
            (
                vec![100.0, 7.5, 0.0],
                vec![-0.37e-3, 2e-3, f32::INFINITY],
                None,
            ),
            (vec![65536.0, 1.5], vec![1e-38, 3.0e38], None),
        ] {
            let s = group_exponent(&largest, &scales);
            if let Some(want) = want {
                assert_eq!(s, want, "{largest:?} x {scales:?}");
            }
            let placed: Vec<f32> = largest
                .iter()
                .zip(&scales)
                .map(|(&x, &scale)| (f64::from(x) * f64::from(scale) * pow2(s)) as f32)
                // Infinite or NaN where the scale is.
                .filter(|v| v.is_finite())
                .map(f32::abs)
                .collect();
            let top = placed.iter().copied().fold(0f32, f32::max);
            assert!(top <= 2f32.powi(127), "{largest:?} x {scales:?}: 2^{s}");
            if top > 0.0 {
                assert!(top >= 2f32.powi(126), "{largest:?} x {scales:?}: 2^{s}");
            }
        }
    }
}

//! FP8 weight rows times f32 activation vectors on AVX512-BF16 with AVX512-VBMI, the
//! fastest decode path: each 64 codes become 64 bf16 (two `VPERMT2B` lookups of the 7-bit
//! magnitude, high and low byte, the sign OR-ed back, the bytes interleaved; e4m3 values
//! are bf16 values, so this is exact, and a NaN code gives a bf16 NaN), dotted by
//! `VDPBF16PS` with the activations as bf16: every product is exact in f32 and summed in
//! f32, and each 128-column block's sum is scaled once, by the weights' block scale times
//! the activations' (DeepGEMM's scheme).
//!
//! Per 128-column group an activation vector goes as its own bf16 values (scale 1) when
//! they all are normal bf16 values (bf16 tokens, UE8M0-quantized activations), or as
//! `q = bf16(v / sc)` with `sc = max|v| / 448` when every `q * sc` is within `|v| * 2^-20`
//! of `v` (a relative bound; activations quantized with f32 scales: `q` is the e4m3
//! code's value); any other group, or a non-finite value, declines the call and the
//! caller takes the f32 path.

use super::Fp8Weights;
use crate::gemv::PREFETCH_BYTES;
use crate::kept::with_buffer;
use moemla_core::fp8::BLOCK;
use std::arch::x86_64::*;
use std::cell::Cell;

/// Codes per decode step: one 512-bit register.
const STEP: usize = 64;

/// Largest prepared activation buffer (bf16 words; 4 MiB) a thread keeps for its next
/// call (and of their scales: at most one per [`STEP`] padded words).
const PREPARED_KEEP: usize = 2 << 20;

/// bf16 bits of the e4m3 value with magnitude bits `m` (0..128; 0x7F: a quiet NaN).
pub(crate) const fn magnitude_bf16(m: usize) -> u16 {
    let (e, man) = (m >> 3, m & 7);
    if m == 0x7F {
        0x7FC0
    } else if e > 0 {
        // 2^(e - 7) * (1 + man / 8): bf16 exponent field e - 7 + 127.
        (((e + 120) << 7) | (man << 4)) as u16
    } else if man == 0 {
        0
    } else {
        // Subnormal man * 2^-9, normalized at its leading bit p.
        let p = if man >= 4 {
            2
        } else if man >= 2 {
            1
        } else {
            0
        };
        (((p + 127 - 9) << 7) | ((man - (1 << p)) << (7 - p))) as u16
    }
}

/// One byte (`HIGH`: bits 8..16, else 0..8) of every magnitude's bf16, indexed by the
/// magnitude: the two 64-byte halves `VPERMT2B` reads.
const fn table(high: bool) -> [u8; 128] {
    let mut t = [0u8; 128];
    let mut m = 0;
    while m < 128 {
        let b = magnitude_bf16(m);
        t[m] = if high { (b >> 8) as u8 } else { b as u8 };
        m += 1;
    }
    t
}

static HIGH: [u8; 128] = table(true);
static LOW: [u8; 128] = table(false);

thread_local! {
    /// Per-thread buffer of the prepared bf16 activations.
    static PREPARED: Cell<Vec<u16>> = const { Cell::new(Vec::new()) };
    /// Per-thread buffer of the activations' per-group scales.
    static ACT_SCALES: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Whether the CPU has this path (AVX-512 F/BW, VBMI and BF16).
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vbmi")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// `out[r * n + j] = W[first + r] . act[j]` as [`super::gemv::rows_times`]; returns false
/// (nothing written) when the activations are neither bf16 values nor quantized ones, or
/// not finite (see the module).
///
/// # Safety
/// [`available`] must hold; rows `first..first + rows` of `w.cols` codes and their scale
/// rows, `n` (1..=4) vectors of `w.cols` activations and `rows * n` outputs must exist.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512bf16")]
pub unsafe fn rows_times(
    w: &Fp8Weights<'_>,
    first: usize,
    rows: usize,
    n: usize,
    act: &[f32],
    out: &mut [f32],
) -> bool {
    with_prepared(w.cols, n, act, |x, s, padded| match n {
        // SAFETY: as this function's contract; `x` and `s` hold the n prepared vectors.
        1 => unsafe { rows_n::<1, 4>(w, first, rows, x, s, padded, out) },
        2 => unsafe { rows_n::<2, 4>(w, first, rows, x, s, padded, out) },
        3 => unsafe { rows_n::<3, 4>(w, first, rows, x, s, padded, out) },
        _ => unsafe { rows_n::<4, 2>(w, first, rows, x, s, padded, out) },
    })
}

/// [`rows_times`] for any number `n` (>= 1) of vectors (the prefill path): each pair of
/// weight rows is decoded once per group of at most [`GRID_VECTORS`] vectors and dotted
/// with all of them in registers; same products, same per-block scaling.
///
/// # Safety
/// [`available`] must hold; rows `first..first + rows` of `w.cols` codes and their scale
/// rows, `n` vectors of `w.cols` activations and `rows * n` outputs must exist.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512bf16")]
pub unsafe fn rows_times_many(
    w: &Fp8Weights<'_>,
    first: usize,
    rows: usize,
    n: usize,
    act: &[f32],
    out: &mut [f32],
) -> bool {
    with_prepared(w.cols, n, act, |x, s, padded| {
        // SAFETY: as this function's contract; `x` and `s` hold the n prepared vectors.
        unsafe { many(w, first, rows, n, x, s, padded, out) }
    })
}

/// Prepares the `n` vectors of `act` (`k` long each; see [`prepare`]) into this thread's
/// buffers and runs `f(words, scales, padded)` on them; false (`f` not run) when a vector
/// is declined.
///
/// # Safety
/// AVX-512F/BW must be available; `act` must hold `n * k` values.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn with_prepared(
    k: usize,
    n: usize,
    act: &[f32],
    f: impl FnOnce(*const u16, *const f32, usize),
) -> bool {
    let padded = k.div_ceil(STEP) * STEP;
    let col_blocks = k.div_ceil(BLOCK);
    let Some((len_words, len_scales)) = n.checked_mul(padded).zip(n.checked_mul(col_blocks)) else {
        return false;
    };
    with_buffer(&PREPARED, PREPARED_KEEP, |words| {
        with_buffer(&ACT_SCALES, PREPARED_KEEP / STEP, |act_scales| {
            // Fallible: where the memory is not there, decline; the caller's dequantized
            // path then reports it as a typed error.
            let mut ok =
                words.try_reserve(len_words).is_ok() && act_scales.try_reserve(len_scales).is_ok();
            if ok {
                words.resize(len_words, 0);
                act_scales.resize(len_scales, 1.0);
            }
            for (j, vector) in act.chunks_exact(k).take(n).enumerate() {
                // SAFETY: AVX-512F/BW are available; the slices are `padded` zeros and
                // `col_blocks` long.
                ok = ok
                    && unsafe {
                        prepare(
                            vector,
                            &mut words[j * padded..(j + 1) * padded],
                            &mut act_scales[j * col_blocks..(j + 1) * col_blocks],
                        )
                    };
            }
            if ok {
                f(words.as_ptr(), act_scales.as_ptr(), padded);
            }
            ok
        })
    })
}

/// Writes `vector` as bf16 words into `words` (`padded` zeros, a multiple of 64 >=
/// `vector.len()`) and its per-128-group scales into `scales`, as the module says; false
/// (partly written) when a group can be neither. The word order is the one [`decode`]
/// gives the codes: per 64 columns, for each 16-column quarter q its first 8 at words
/// `8q..8q + 8`, its last 8 at `32 + 8q..`.
///
/// # Safety
/// AVX-512F/BW must be available.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn prepare(vector: &[f32], words: &mut [u16], scales: &mut [f32]) -> bool {
    assert!(
        words.len() >= vector.len().div_ceil(STEP) * STEP
            && scales.len() >= vector.len().div_ceil(BLOCK)
    );
    let top = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    let magnitude = _mm512_set1_epi32(0x7FFF_FFFF);
    let exponent = _mm512_set1_epi32(0x7F80_0000);
    let zero = _mm512_setzero_si512();
    let d = words.as_mut_ptr();
    for (b, group) in vector.chunks(BLOCK).enumerate() {
        let mut v = [_mm512_setzero_ps(); BLOCK / 16];
        let (mut special, mut tiny) = (0u16, 0u16);
        let (mut low, mut amax) = (zero, _mm512_setzero_ps());
        for (i, vi) in v.iter_mut().enumerate() {
            let live = group.len().saturating_sub(16 * i).min(16);
            // SAFETY: only the group's `live` lanes are read (a hint-free masked load; the
            // address is not dereferenced past them).
            *vi = _mm512_maskz_loadu_ps(
                ((1u32 << live) - 1) as u16,
                group.as_ptr().wrapping_add(16 * i),
            );
            let bits = _mm512_castps_si512(*vi);
            let e = _mm512_and_si512(bits, exponent);
            special |= _mm512_cmpeq_epi32_mask(e, exponent);
            tiny |= _mm512_cmpeq_epi32_mask(e, zero) & _mm512_test_epi32_mask(bits, magnitude);
            low = _mm512_or_si512(low, _mm512_andnot_si512(top, bits));
            amax = _mm512_max_ps(amax, _mm512_castsi512_ps(_mm512_and_si512(bits, magnitude)));
        }
        if special != 0 {
            return false;
        }
        let mut scale = 1.0;
        if _mm512_test_epi32_mask(low, low) != 0 || tiny != 0 {
            // Not all normal bf16 values: try q = bf16(v / sc), sc = max|v| / 448.
            scale = _mm512_reduce_max_ps(amax) / 448.0;
            let sc = _mm512_set1_ps(scale);
            let tolerance = _mm512_set1_ps(2f32.powi(-20));
            let mut bad = 0u16;
            for vi in v.iter_mut() {
                let q = _mm512_castps_si512(_mm512_div_ps(*vi, sc));
                // Round to nearest even at bit 16.
                let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(q), _mm512_set1_epi32(1));
                let r = _mm512_and_si512(
                    _mm512_add_epi32(_mm512_add_epi32(q, _mm512_set1_epi32(0x7FFF)), odd),
                    top,
                );
                let back = _mm512_mul_ps(_mm512_castsi512_ps(r), sc);
                let err = _mm512_abs_ps(_mm512_sub_ps(back, *vi));
                let bound = _mm512_mul_ps(_mm512_abs_ps(*vi), tolerance);
                // Unordered (a NaN error: sc 0 or not finite) counts as bad.
                bad |= _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(err, bound);
                bad |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(r, exponent), zero)
                    & _mm512_test_epi32_mask(r, magnitude);
                *vi = _mm512_castsi512_ps(r);
            }
            if bad != 0 {
                return false;
            }
        }
        scales[b] = scale;
        for (i, vi) in v.iter().enumerate().take(group.len().div_ceil(16)) {
            let g = b * (BLOCK / 16) + i;
            let at = g / 4 * STEP + g % 4 * 8;
            let w16 = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(_mm512_castps_si512(*vi)));
            // SAFETY: at + 40 <= the group's 64-word step, inside `words` (asserted).
            _mm_storeu_si128(d.add(at).cast(), _mm256_castsi256_si128(w16));
            _mm_storeu_si128(d.add(at + 32).cast(), _mm256_extracti128_si256::<1>(w16));
        }
    }
    true
}

/// [`rows_times`] for `N` prepared vectors at `x` (`[N][padded]` bf16) with their
/// per-group scales at `act_scales` (`[N][ceil(k / 128)]`), `A` (2 or 4) accumulators per
/// vector.
///
/// # Safety
/// As [`rows_times`].
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512bf16")]
unsafe fn rows_n<const N: usize, const A: usize>(
    w: &Fp8Weights<'_>,
    first: usize,
    rows: usize,
    x: *const u16,
    act_scales: *const f32,
    padded: usize,
    out: &mut [f32],
) {
    let k = w.cols;
    let whole = k / BLOCK;
    let col_blocks = k.div_ceil(BLOCK);
    let tables = Tables::load();
    for r in 0..rows {
        let (codes, scales) = w.row(first + r);
        let (codes, scales) = (codes.as_ptr(), scales.as_ptr());
        let mut total = [_mm512_setzero_ps(); N];
        for b in 0..col_blocks {
            let c = b * BLOCK;
            // The block's two cache lines PREFETCH_BYTES ahead, into L2. A prefetch never
            // faults: past the last row the address (wrapping arithmetic, no in-bounds
            // claim) is only a hint.
            _mm_prefetch::<_MM_HINT_T1>(codes.wrapping_add(c + PREFETCH_BYTES).cast());
            _mm_prefetch::<_MM_HINT_T1>(codes.wrapping_add(c + PREFETCH_BYTES + 64).cast());
            // SAFETY: codes c..min(c + 128, k) of this row exist; the prepared vectors
            // are `padded` (a multiple of 64 >= k) long.
            let sums = if b < whole {
                block::<N, A, true>(&tables, codes.add(c), x.add(c), padded, BLOCK)
            } else {
                block::<N, A, false>(&tables, codes.add(c), x.add(c), padded, k - c)
            };
            let ws = *scales.add(b);
            for (j, (t, sum)) in total.iter_mut().zip(sums).enumerate() {
                let s = _mm512_set1_ps(ws * *act_scales.add(j * col_blocks + b));
                *t = _mm512_fmadd_ps(sum, s, *t);
            }
        }
        for (j, t) in total.iter().enumerate() {
            out[r * N + j] = _mm512_reduce_add_ps(*t);
        }
    }
}

/// Most vectors per register block of [`many`]. Measured at V3 shapes, ~8 tokens per
/// expert (A/B in one process): 6 beat 4 by ~5% and 8 (whose sums spill) by ~7%.
pub const GRID_VECTORS: usize = 6;

/// [`rows_times_many`] on prepared vectors: rows two at a time (the last alone), the `n`
/// vectors in near-equal groups of at most [`GRID_VECTORS`].
///
/// # Safety
/// As [`rows_n`], with `n` prepared vectors.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn many(
    w: &Fp8Weights<'_>,
    first: usize,
    rows: usize,
    n: usize,
    x: *const u16,
    act_scales: *const f32,
    padded: usize,
    out: &mut [f32],
) {
    let col_blocks = w.cols.div_ceil(BLOCK);
    let groups = n.div_ceil(GRID_VECTORS);
    let mut r = 0;
    while r < rows {
        let pair = rows - r >= 2;
        let mut j0 = 0;
        for g in 0..groups {
            let jn = (n - j0).div_ceil(groups - g);
            let (xj, sj) = (x.add(j0 * padded), act_scales.add(j0 * col_blocks));
            let o = out.as_mut_ptr().add(r * n + j0);
            let at = (w, first + r, xj, sj, padded, o, n);
            match (pair, jn) {
                (true, 1) => grid::<2, 1>(at),
                (true, 2) => grid::<2, 2>(at),
                (true, 3) => grid::<2, 3>(at),
                (true, 4) => grid::<2, 4>(at),
                (true, 5) => grid::<2, 5>(at),
                (true, _) => grid::<2, 6>(at),
                (false, 1) => grid::<1, 1>(at),
                (false, 2) => grid::<1, 2>(at),
                (false, 3) => grid::<1, 3>(at),
                (false, 4) => grid::<1, 4>(at),
                (false, 5) => grid::<1, 5>(at),
                (false, _) => grid::<1, 6>(at),
            }
            j0 += jn;
        }
        r += if pair { 2 } else { 1 };
    }
}

/// [`grid`]'s arguments: the weights, the first of its rows, the first prepared vector
/// and its scales, the prepared length, the first output and the output row stride.
type GridAt<'a, 'w> = (
    &'a Fp8Weights<'w>,
    usize,
    *const u16,
    *const f32,
    usize,
    *mut f32,
    usize,
);

/// `R` weight rows times `J` prepared vectors, all `R * J` sums in registers: per 64
/// codes each row is decoded once and dotted with every vector; each 128-column block's
/// sums are scaled once (weight block scale times the vector's).
///
/// # Safety
/// As [`rows_n`]: the `R` rows, their scale rows, `J` prepared vectors (`padded` words
/// apart, scales `ceil(k / 128)` apart) and outputs `out + i * stride + j` must exist.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512bf16")]
unsafe fn grid<const R: usize, const J: usize>(
    (w, row, x, act_scales, padded, out, stride): GridAt<'_, '_>,
) {
    let k = w.cols;
    let whole = k / BLOCK;
    let col_blocks = k.div_ceil(BLOCK);
    let tables = Tables::load();
    let stored: [(&[u8], &[f32]); R] = std::array::from_fn(|i| w.row(row + i));
    let codes = stored.map(|(c, _)| c.as_ptr());
    let scales = stored.map(|(_, s)| s.as_ptr());
    let mut total = [[_mm512_setzero_ps(); J]; R];
    for b in 0..col_blocks {
        let c = b * BLOCK;
        // The same block of the next R rows into L2 (see [`PREFETCH_BYTES`]; a hint, never a
        // fault, past the last row too).
        for row in codes {
            _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(c + R * k).cast());
            _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(c + R * k + 64).cast());
        }
        // SAFETY: codes c..min(c + 128, k) of each row exist; the prepared vectors are
        // `padded` (a multiple of 64 >= k) long.
        let sums = if b < whole {
            grid_block::<R, J, true>(&tables, codes, c, x.add(c), padded, BLOCK)
        } else {
            grid_block::<R, J, false>(&tables, codes, c, x.add(c), padded, k - c)
        };
        for i in 0..R {
            let ws = *scales[i].add(b);
            for j in 0..J {
                let s = _mm512_set1_ps(ws * *act_scales.add(j * col_blocks + b));
                total[i][j] = _mm512_fmadd_ps(sums[i][j], s, total[i][j]);
            }
        }
    }
    for (i, t) in total.iter().enumerate() {
        for (j, v) in t.iter().enumerate() {
            *out.add(i * stride + j) = _mm512_reduce_add_ps(*v);
        }
    }
}

/// The block's dot products (16 f32 lanes each) of `live` (1..=128; 128 when `FULL`)
/// codes at column `c` of the `R` rows with the `J` prepared vectors at `x + j * padded`.
///
/// # Safety
/// As [`grid`].
#[inline(always)]
unsafe fn grid_block<const R: usize, const J: usize, const FULL: bool>(
    t: &Tables,
    codes: [*const u8; R],
    c: usize,
    x: *const u16,
    padded: usize,
    live: usize,
) -> [[__m512; J]; R] {
    let mut acc = [[_mm512_setzero_ps(); J]; R];
    for step in 0..BLOCK / STEP {
        let at = step * STEP;
        if !FULL && at >= live {
            break;
        }
        let mut decoded = [(_mm512_setzero_si512(), _mm512_setzero_si512()); R];
        for (d, row) in decoded.iter_mut().zip(codes) {
            let v = if FULL {
                _mm512_loadu_si512(row.add(c + at).cast())
            } else {
                // Only the row's `live - at` codes left in the block are read.
                let n = live - at;
                let mask = if n >= STEP { u64::MAX } else { (1u64 << n) - 1 };
                _mm512_maskz_loadu_epi8(mask, row.add(c + at).cast())
            };
            *d = decode(t, v);
        }
        for j in 0..J {
            let xp = x.add(j * padded + at);
            let xa = as_bf16(_mm512_loadu_si512(xp.cast()));
            let xb = as_bf16(_mm512_loadu_si512(xp.add(32).cast()));
            for (a, (wa, wb)) in acc.iter_mut().zip(&decoded) {
                a[j] = _mm512_dpbf16_ps(a[j], as_bf16(*wa), xa);
                a[j] = _mm512_dpbf16_ps(a[j], as_bf16(*wb), xb);
            }
        }
    }
    acc
}

/// The lookup tables in registers.
struct Tables {
    high: [__m512i; 2],
    low: [__m512i; 2],
}

impl Tables {
    /// Loads [`HIGH`] and [`LOW`].
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[inline(always)]
    unsafe fn load() -> Self {
        Tables {
            high: [
                _mm512_loadu_si512(HIGH.as_ptr().cast()),
                _mm512_loadu_si512(HIGH[64..].as_ptr().cast()),
            ],
            low: [
                _mm512_loadu_si512(LOW.as_ptr().cast()),
                _mm512_loadu_si512(LOW[64..].as_ptr().cast()),
            ],
        }
    }
}

/// The block's dot products (16 f32 lanes per vector) of `live` (1..=128; 128 when
/// `FULL`) codes at `codes` with the `N` prepared vectors at `x + j * padded`.
///
/// # Safety
/// As [`rows_n`]: `codes[..live]` readable, each prepared vector readable for
/// `live.div_ceil(64) * 64` words.
#[inline(always)]
unsafe fn block<const N: usize, const A: usize, const FULL: bool>(
    t: &Tables,
    codes: *const u8,
    x: *const u16,
    padded: usize,
    live: usize,
) -> [__m512; N] {
    let mut acc = [[_mm512_setzero_ps(); A]; N];
    for step in 0..BLOCK / STEP {
        let at = step * STEP;
        let v = if FULL {
            _mm512_loadu_si512(codes.add(at).cast())
        } else {
            if at >= live {
                break;
            }
            let n = live - at;
            let mask = if n >= STEP { u64::MAX } else { (1u64 << n) - 1 };
            _mm512_maskz_loadu_epi8(mask, codes.add(at).cast())
        };
        let (wa, wb) = decode(t, v);
        let slot = if A == 4 { 2 * step } else { 0 };
        for (j, a) in acc.iter_mut().enumerate() {
            let xp = x.add(j * padded + at);
            let xa = _mm512_loadu_si512(xp.cast());
            let xb = _mm512_loadu_si512(xp.add(32).cast());
            a[slot] = _mm512_dpbf16_ps(a[slot], as_bf16(wa), as_bf16(xa));
            a[slot + 1] = _mm512_dpbf16_ps(a[slot + 1], as_bf16(wb), as_bf16(xb));
        }
    }
    // Summed as a tree (short dependency chains).
    let mut sums = [_mm512_setzero_ps(); N];
    for (sum, a) in sums.iter_mut().zip(&acc) {
        *sum = if A == 4 {
            _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]))
        } else {
            _mm512_add_ps(a[0], a[1])
        };
    }
    sums
}

/// 64 codes as 64 bf16: per 128-bit lane q, codes `16q..16q + 8` in the first vector and
/// `16q + 8..16q + 16` in the second (the order [`prepare`] writes the activations in).
///
/// # Safety
/// AVX-512F/BW and VBMI must be available.
#[inline(always)]
unsafe fn decode(t: &Tables, v: __m512i) -> (__m512i, __m512i) {
    // VPERMT2B reads the low 7 bits of each code: the magnitude.
    let high = _mm512_permutex2var_epi8(t.high[0], v, t.high[1]);
    // high | (v & 0x80): the sign.
    let high = _mm512_ternarylogic_epi32::<0xF8>(high, v, _mm512_set1_epi8(0x80u8 as i8));
    let low = _mm512_permutex2var_epi8(t.low[0], v, t.low[1]);
    (
        _mm512_unpacklo_epi8(low, high),
        _mm512_unpackhi_epi8(low, high),
    )
}

/// A vector of 32 bf16 as the type `VDPBF16PS` takes.
///
/// # Safety
/// AVX-512F must be available.
#[inline(always)]
unsafe fn as_bf16(v: __m512i) -> __m512bh {
    // SAFETY: both are plain 512-bit vectors (32 x 16 bits).
    std::mem::transmute::<__m512i, __m512bh>(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use moemla_core::fp8::e4m3_decode;

    /// The e4m3 value of `code` from its fields, in f64 (independent of any table).
    fn e4m3_reference(code: u8) -> f64 {
        let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
        let (e, m) = (i32::from(code >> 3 & 0xF), f64::from(code & 7));
        if code & 0x7F == 0x7F {
            return f64::NAN;
        }
        sign * if e == 0 {
            m / 8.0 * 2f64.powi(-6)
        } else {
            (1.0 + m / 8.0) * 2f64.powi(e - 7)
        }
    }

    #[test]
    fn tables_hold_every_code_as_its_exact_bf16() {
        for code in 0..=255u8 {
            let m = usize::from(code & 0x7F);
            let bits =
                (u16::from(HIGH[m]) << 8 | u16::from(LOW[m])) | (u16::from(code & 0x80) << 8);
            let got = f32::from_bits(u32::from(bits) << 16);
            let want = e4m3_reference(code);
            if want.is_nan() {
                assert!(got.is_nan(), "code {code:#04x}");
                continue;
            }
            assert_eq!(got.to_bits(), (want as f32).to_bits(), "code {code:#04x}");
            assert_eq!(
                got.to_bits(),
                e4m3_decode(code).to_bits(),
                "code {code:#04x}"
            );
        }
        // -0.0, the largest magnitude and the smallest subnormal.
        assert_eq!(magnitude_bf16(0) | 0x8000, 0x8000);
        assert_eq!(f32::from_bits(u32::from(magnitude_bf16(0x7E)) << 16), 448.0);
        assert_eq!(
            f32::from_bits(u32::from(magnitude_bf16(1)) << 16),
            2f32.powi(-9)
        );
    }

    /// Prepares `v` (one vector); `None` when declined, else the bf16 values and scales.
    fn prepared(v: &[f32]) -> Option<(Vec<f32>, Vec<f32>)> {
        let padded = v.len().div_ceil(STEP) * STEP;
        let mut words = vec![0u16; padded];
        let mut scales = vec![1.0f32; v.len().div_ceil(BLOCK)];
        // SAFETY: available() (checked by the caller) includes AVX-512F/BW.
        if !unsafe { prepare(v, &mut words, &mut scales) } {
            return None;
        }
        let values = (0..padded)
            .map(|c| {
                let at = c / 64 * 64 + (c % 16 / 8) * 32 + (c % 64 / 16) * 8 + c % 8;
                f32::from_bits(u32::from(words[at]) << 16)
            })
            .collect();
        Some((values, scales))
    }

    #[test]
    fn activations_go_as_bf16_values_or_as_quantized_codes_else_decline() {
        if !available() {
            return;
        }
        // 200 columns: a whole group and a partial one; padded to 256 with zeros.
        let bf16s: Vec<f32> = (0..200)
            .map(|i| f32::from_bits(((i as f32 * 0.7311).sin() * 3.0).to_bits() & 0xFFFF_0000))
            .collect();
        let (values, scales) = prepared(&bf16s).unwrap();
        assert_eq!(values[..200], bf16s[..]);
        assert!(values[200..].iter().all(|&v| v == 0.0));
        assert_eq!(scales, vec![1.0, 1.0]);
        // Quantized as fp8_block128 with f32 scales: q is each value's code, scaled back
        // within |v| * 2^-20.
        let raw: Vec<f32> = (0..200).map(|i| (i as f32 * 0.37).cos() * 0.013).collect();
        let mut quantized = raw.clone();
        moemla_core::fp8::quantize_activation_row(&mut quantized, moemla_core::fp8::ScaleMode::F32);
        let (values, scales) = prepared(&quantized).unwrap();
        for (c, &v) in quantized.iter().enumerate() {
            let q = values[c];
            assert_eq!(
                moemla_core::fp8::e4m3_decode(moemla_core::fp8::e4m3_encode(q)),
                q,
                "column {c}"
            );
            let back = q as f64 * scales[c / 128] as f64;
            assert!(
                (back - v as f64).abs() <= v.abs() as f64 * 2f64.powi(-20),
                "column {c}"
            );
        }
        // Plain f32 values, a bf16 subnormal, inf and NaN: declined.
        assert!(prepared(&raw).is_none());
        assert!(prepared(&[1.0, f32::INFINITY]).is_none());
        assert!(prepared(&[f32::NAN, 1.0]).is_none());
        // An exact bf16 that VDPBF16PS would read as 0 (a subnormal), in a group that
        // cannot be scaled either.
        let mut tiny = bf16s.clone();
        tiny[3] = f32::from_bits(0x0001_0000);
        assert!(prepared(&tiny).is_none());
    }
}

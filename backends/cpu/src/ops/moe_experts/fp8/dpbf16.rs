//! FP8 weight rows times f32 activation vectors on AVX512-BF16 with AVX512-VBMI, the
//! fastest decode path: each 64 codes become 64 bf16 (two `VPERMT2B` lookups of the 7-bit
//! magnitude, high and low byte, the sign OR-ed back, the bytes interleaved; e4m3 values
//! are bf16 values, so this is exact, and a NaN code gives a bf16 NaN), dotted by
//! `VDPBF16PS` with the activations as bf16: every product is exact in f32 and summed in
//! f32. Activation vectors that are all bf16 values (bf16 tokens) go as one bf16 part,
//! others as three (`a = h + m + l`, each the next 8 significant bits of what is left:
//! exact, except that parts below bf16's normal range read as zero, an error below
//! 448 * 2^-126 per product). Non-finite activations decline (their parts would not
//! add up); the caller then takes the f32 path.

use super::Fp8Weights;
use moemla_core::fp8::BLOCK;
use std::arch::x86_64::*;
use std::cell::Cell;

/// Codes per decode step: one 512-bit register.
const STEP: usize = 64;
/// How far ahead of the block being read the codes are prefetched, bytes.
const PREFETCH: usize = 1024;

/// bf16 bits of the e4m3 value with magnitude bits `m` (0..128; 0x7F: a quiet NaN).
const fn magnitude_bf16(m: usize) -> u16 {
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
}

/// Whether the CPU has this path (AVX-512 F/BW, VBMI and BF16).
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vbmi")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// `out[r * n + j] = W[first + r] . act[j]` as [`super::rows_times`]; returns false
/// (nothing written) when an activation is not finite.
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
    let k = w.cols;
    // Activations that are not all bf16 values take the f32 path (three bf16 parts
    // measured no faster).
    let Some(parts @ 1) = parts_needed(act) else {
        return false;
    };
    let padded = k.div_ceil(STEP) * STEP;
    let mut prep = PREPARED.take();
    prep.clear();
    prep.resize(n * parts * padded, 0);
    for (j, vector) in act.chunks_exact(k).enumerate() {
        let dst = &mut prep[j * parts * padded..(j + 1) * parts * padded];
        // SAFETY: AVX-512F/BW are available; `dst` holds `parts * padded` zeros.
        prepare(vector, parts, padded, dst);
    }
    let x = prep.as_ptr();
    match (n, parts) {
        (1, 1) => rows_np::<1, 1, 4>(w, first, rows, x, padded, out),
        (1, _) => rows_np::<1, 3, 4>(w, first, rows, x, padded, out),
        (2, 1) => rows_np::<2, 1, 4>(w, first, rows, x, padded, out),
        (2, _) => rows_np::<2, 3, 2>(w, first, rows, x, padded, out),
        (3, 1) => rows_np::<3, 1, 4>(w, first, rows, x, padded, out),
        (3, _) => rows_np::<3, 3, 2>(w, first, rows, x, padded, out),
        (_, 1) => rows_np::<4, 1, 2>(w, first, rows, x, padded, out),
        (_, _) => rows_np::<4, 3, 2>(w, first, rows, x, padded, out),
    }
    PREPARED.set(prep);
    true
}

/// 1 when every activation is a bf16 value, 3 when some are not, `None` when one is not
/// finite.
#[inline(always)]
fn parts_needed(act: &[f32]) -> Option<usize> {
    // Branch-free reductions, so that they vectorize.
    let (mut special, mut low_bits) = (0u32, 0u32);
    for &v in act {
        let b = v.to_bits();
        special |= u32::from(b & 0x7F80_0000 == 0x7F80_0000);
        low_bits |= b & 0xFFFF;
    }
    match (special, low_bits) {
        (0, 0) => Some(1),
        (0, _) => Some(3),
        _ => None,
    }
}

/// Writes `vector` (finite) as `parts` bf16 parts of `padded` words each (`dst` holds
/// `parts * padded` zeros; `padded >= vector.len()`), in the order [`decode`] gives the
/// codes: per 64 columns, for each 16-column quarter q its first 8 at words `8q..8q + 8`,
/// its last 8 at `32 + 8q..`. Each part is the top 8 significant bits of what the parts
/// before it left (exact subtractions).
///
/// # Safety
/// AVX-512F/BW must be available.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn prepare(vector: &[f32], parts: usize, padded: usize, dst: &mut [u16]) {
    assert!(dst.len() >= parts * padded && padded >= vector.len().div_ceil(STEP) * STEP);
    let top = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    let d = dst.as_mut_ptr();
    for (g, chunk) in vector.chunks(16).enumerate() {
        // SAFETY: the chunk's lanes are read under their mask; every store lands inside
        // `dst` (word at + 8 <= padded of its part, asserted above).
        let v = _mm512_maskz_loadu_ps(((1u32 << chunk.len()) - 1) as u16, chunk.as_ptr());
        let at = g / 4 * STEP + g % 4 * 8;
        let mut rest = v;
        for p in 0..parts {
            let h = _mm512_and_si512(_mm512_castps_si512(rest), top);
            let words = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(h));
            let out = d.add(p * padded + at);
            _mm_storeu_si128(out.cast(), _mm256_castsi256_si128(words));
            _mm_storeu_si128(out.add(32).cast(), _mm256_extracti128_si256::<1>(words));
            rest = _mm512_sub_ps(rest, _mm512_castsi512_ps(h));
        }
    }
}

/// [`rows_times`] for `N` vectors of `P` parts at `x` (`[N][P][padded]` bf16), with `A`
/// (2 or 4) accumulators per vector and part.
///
/// # Safety
/// As [`rows_times`].
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512bf16")]
unsafe fn rows_np<const N: usize, const P: usize, const A: usize>(
    w: &Fp8Weights<'_>,
    first: usize,
    rows: usize,
    x: *const u16,
    padded: usize,
    out: &mut [f32],
) {
    let k = w.cols;
    let whole = k / BLOCK;
    let col_blocks = k.div_ceil(BLOCK);
    let row_blocks = w.rows.div_ceil(BLOCK);
    let tables = Tables::load();
    for r in 0..rows {
        let row = first + r;
        let (e, er) = (row / w.rows, row % w.rows);
        let scales = w
            .scales
            .as_ptr()
            .add((e * row_blocks + er / BLOCK) * col_blocks);
        let codes = w.codes.as_ptr().add(row * k);
        let mut total = [_mm512_setzero_ps(); N];
        for b in 0..col_blocks {
            let c = b * BLOCK;
            // The codes PREFETCH bytes on (this row's, or the next rows'), two cache lines
            // per block: a hint only, an address past the codes is never dereferenced.
            let ahead = codes.wrapping_add(c + PREFETCH);
            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64).cast());
            // SAFETY: codes c..min(c + 128, k) of this row exist; the prepared vectors
            // are `padded` (a multiple of 64 >= k) long.
            let sums = if b < whole {
                block::<N, P, A, true>(&tables, codes.add(c), x.add(c), padded, BLOCK)
            } else {
                block::<N, P, A, false>(&tables, codes.add(c), x.add(c), padded, k - c)
            };
            let s = _mm512_set1_ps(*scales.add(b));
            for (t, sum) in total.iter_mut().zip(sums) {
                *t = _mm512_fmadd_ps(sum, s, *t);
            }
        }
        for (j, t) in total.iter().enumerate() {
            out[r * N + j] = _mm512_reduce_add_ps(*t);
        }
    }
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
/// `FULL`) codes at `codes` with the `N` prepared vectors at `x + (j * P + p) * padded`.
///
/// # Safety
/// As [`rows_np`]: `codes[..live]` readable, each prepared part readable for
/// `live.div_ceil(64) * 64` words.
#[inline(always)]
unsafe fn block<const N: usize, const P: usize, const A: usize, const FULL: bool>(
    t: &Tables,
    codes: *const u8,
    x: *const u16,
    padded: usize,
    live: usize,
) -> [__m512; N] {
    let mut acc = [[[_mm512_setzero_ps(); A]; P]; N];
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
        for (j, per_part) in acc.iter_mut().enumerate() {
            for (p, a) in per_part.iter_mut().enumerate() {
                let xp = x.add((j * P + p) * padded + at);
                let xa = _mm512_loadu_si512(xp.cast());
                let xb = _mm512_loadu_si512(xp.add(32).cast());
                a[slot] = _mm512_dpbf16_ps(a[slot], as_bf16(wa), as_bf16(xa));
                a[slot + 1] = _mm512_dpbf16_ps(a[slot + 1], as_bf16(wb), as_bf16(xb));
            }
        }
    }
    // Summed as a tree (short dependency chains): slots, then parts.
    let mut sums = [_mm512_setzero_ps(); N];
    for (sum, per_part) in sums.iter_mut().zip(&acc) {
        let mut part = [_mm512_setzero_ps(); P];
        for (s, a) in part.iter_mut().zip(per_part) {
            *s = if A == 4 {
                _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]))
            } else {
                _mm512_add_ps(a[0], a[1])
            };
        }
        *sum = if P == 3 {
            _mm512_add_ps(_mm512_add_ps(part[0], part[1]), part[2])
        } else {
            part[0]
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

    #[test]
    fn activations_split_into_parts_that_add_up() {
        assert_eq!(parts_needed(&[1.0, -0.5, 2f32.powi(127)]), Some(1));
        assert_eq!(parts_needed(&[1.0, 0.1]), Some(3));
        assert_eq!(parts_needed(&[1.0, f32::INFINITY]), None);
        assert_eq!(parts_needed(&[f32::NAN]), None);
        let v: Vec<f32> = (0..100)
            .map(|i| (i as f32 * 0.7311).sin() * 1e3 / (i + 1) as f32)
            .collect();
        if !available() {
            return;
        }
        let mut dst = vec![0u16; 3 * 128];
        // SAFETY: available() includes AVX-512F/BW.
        unsafe { prepare(&v, 3, 128, &mut dst) };
        let bf = |b: u16| f32::from_bits(u32::from(b) << 16) as f64;
        for (c, &x) in v.iter().enumerate() {
            let at = c / 64 * 64 + (c % 16 / 8) * 32 + (c % 64 / 16) * 8 + c % 8;
            let sum = bf(dst[at]) + bf(dst[128 + at]) + bf(dst[256 + at]);
            assert_eq!(sum, x as f64, "column {c}");
        }
        // Past the vector (columns 100..128): zeros in every part.
        for c in 100..128 {
            let at = 64 + (c % 16 / 8) * 32 + (c % 64 / 16) * 8 + c % 8;
            assert_eq!(
                [dst[at], dst[128 + at], dst[256 + at]],
                [0; 3],
                "column {c}"
            );
        }
    }
}

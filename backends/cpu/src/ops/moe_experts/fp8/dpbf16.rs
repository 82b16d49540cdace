//! FP8 weight rows times f32 activation vectors on AVX512-BF16 with AVX512-VBMI (and
//! AVX-512 F/BW/VL), the
//! fastest decode path: each 64 codes become 64 bf16 (two `VPERMT2B` lookups of the 7-bit
//! magnitude, high and low byte, the sign OR-ed back, the bytes interleaved; e4m3 values
//! are bf16 values, so this is exact, and a NaN code gives a bf16 NaN), dotted by
//! `VDPBF16PS` with the activations as bf16: every product is exact in f32 and summed in
//! f32, and each 128-column block's sum is scaled once per block, by the weights' block
//! scale and then the activations' (DeepGEMM's scheme; where every activation scale is 1,
//! the prefill kernels fold the weight scale into one multiply-add, one rounding fewer:
//! [`add_scaled`]).
//!
//! The activation vectors go as bf16 values, or as e4m3 codes' values with per-128 scales;
//! others are declined ([`prepared`]). Where this process may use AMX tiles, an expert's
//! prepared vectors are multiplied on tiles instead of `VDPBF16PS` ([`tiles`]), the same
//! decode, products and per-block scaling; there, rows whose block scales are powers of
//! two (UE8M0) against vectors of scale 1 take each scale into the decoded values
//! instead (exact), and sum all of a row's blocks in one f32 sum.

use super::Fp8Weights;
use crate::gemv::PREFETCH_BYTES;
use moemla_core::fp8::BLOCK;
use std::arch::x86_64::*;

mod prepared;
mod quads;
mod tiles;

pub use prepared::Prepared;
use prepared::{with_prepared, Layout, View};

/// Codes per decode step: one 512-bit register.
const STEP: usize = 64;

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

/// The bf16 bits of every e4m3fn magnitude (code & 0x7F; 0x7F: NaN), indexed by the
/// magnitude ([`magnitude_bf16`]). A static, so a kernel's pointer into it is to one
/// place in memory.
pub(crate) static MAGNITUDES: [u16; 128] = {
    let mut t = [0u16; 128];
    let mut m = 0;
    while m < 128 {
        t[m] = magnitude_bf16(m);
        m += 1;
    }
    t
};

/// `e` where `scale` is `2^e` and every non-zero e4m3 value times it is a normal bf16
/// (`e` in -117..=119: the values' exponents run from -9 to 8), so that a decode table
/// with `e` added to its exponents gives codes times `scale` exactly ([`Tables::scaled`],
/// and the FP8 cache's rows: `crate::ops::kv_rows`); else `None`. UE8M0 scales
/// (DeepSeek-V3.1's checkpoints) are powers of two.
pub(crate) fn pow2_exponent(scale: f32) -> Option<i32> {
    let bits = scale.to_bits();
    let e = (bits >> 23) as i32 - 127;
    (bits & 0x807F_FFFF == 0 && (-117..=119).contains(&e)).then_some(e)
}

/// Whether the CPU has this path (AVX-512 F/BW/VL, VBMI and BF16).
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
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
    with_prepared(w.cols, n, act, |v| match n {
        // SAFETY: as this function's contract; `v` holds the n prepared vectors.
        1 => unsafe { rows_n::<1, 4>(w, first, rows, v, out) },
        2 => unsafe { rows_n::<2, 4>(w, first, rows, v, out) },
        3 => unsafe { rows_n::<3, 4>(w, first, rows, v, out) },
        _ => unsafe { rows_n::<4, 2>(w, first, rows, v, out) },
    })
}

/// [`rows_times`] for any number `n` (>= 1) of vectors (the prefill path), prepared for
/// this call only: see [`rows_times_prepared`].
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
    with_prepared(w.cols, n, act, |v| {
        // SAFETY: as this function's contract; `v` holds the n prepared vectors.
        unsafe { many(w, first, rows, v, out) }
    })
}

/// `out[r * n + j] = W[first + r] . act[j]` for the `n` vectors of `p` (the prefill path).
/// Prepared for tiles (wherever this process may use AMX): [`tiles::multiply`]. Else from
/// [`quads::MIN_VECTORS`] vectors, in parts of at most 24 ([`quads`]): each row's
/// codes decoded once per part into L1 and broadcast against 4 vectors per instruction.
/// Fewer take the grid ([`many`]): each pair of weight rows decoded once per group of at
/// most [`GRID_VECTORS`] vectors and dotted with all of them in registers. Same products
/// and per-block scaling (but for its rounding where the vectors' scales are all 1,
/// [`View::unit`]: one multiply-add; on tiles, power-of-two block scales go into the
/// decoded values there, one f32 sum per output), summed in another order. Returns
/// false (nothing written) where the tile kernel's memory for its sums is not there.
///
/// # Safety
/// [`available`] must hold; `p` must be `w.cols` long; rows `first..first + rows` of
/// `w.cols` codes and their scale rows and `rows * n` outputs must exist.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx512bf16")]
pub unsafe fn rows_times_prepared(
    w: &Fp8Weights<'_>,
    first: usize,
    rows: usize,
    p: &Prepared,
    out: &mut [f32],
) -> bool {
    match p.layout() {
        Layout::Quads(parts) => {
            for q in parts {
                quads::multiply(w, first, rows, q, out);
            }
        }
        Layout::Grid(view) => many(w, first, rows, view, out),
        // SAFETY: a tile form exists only where `amx::enabled()` held; the rest as this
        // function's contract.
        Layout::Tiles(tiles) => return tiles::multiply(w, first, rows, tiles, out),
    }
    true
}

/// [`rows_times`] for `N` prepared vectors (`v.n == N`), `A` (2 or 4) accumulators per
/// vector.
///
/// # Safety
/// As [`rows_times`], `v` holding `N` vectors of `w.cols`.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512bf16")]
unsafe fn rows_n<const N: usize, const A: usize>(
    w: &Fp8Weights<'_>,
    first: usize,
    rows: usize,
    v: View,
    out: &mut [f32],
) {
    debug_assert_eq!(v.n, N, "the view's layout has n vectors per step");
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
            // SAFETY: codes c..min(c + 128, k) of this row exist; the prepared words of
            // step c / 64 on lie inside `v` (each vector padded to whole steps).
            let x = v.words.add(c / STEP * N * STEP);
            let sums = if b < whole {
                block::<N, A, true>(&tables, codes.add(c), x, BLOCK)
            } else {
                block::<N, A, false>(&tables, codes.add(c), x, k - c)
            };
            let ws = _mm512_set1_ps(*scales.add(b));
            for (j, (t, sum)) in total.iter_mut().zip(sums).enumerate() {
                let act = || _mm512_set1_ps(*v.scales.add(b * N + j));
                *t = add_scaled::<false>(*t, sum, ws, act);
            }
        }
        for (j, t) in total.iter().enumerate() {
            out[r * N + j] = _mm512_reduce_add_ps(*t);
        }
    }
}

/// Most vectors per register block of [`many`]: two rows by 5 vectors keep their 10 block
/// sums and 10 totals, the decoded codes and the tables in the 32 registers (with 6 vectors they spilled).
/// Streaming 512 MiB of 7168-column rows on both cores, GFLOP/s against the earlier 6
/// (with whole rows, before [`PASS_BLOCKS`]): 8 vectors 390 vs 325-340, 12: 404-413 vs
/// 375-378, 16: 412-426 vs 385-404, 5 and 6 vectors within ~5%.
pub const GRID_VECTORS: usize = 5;

/// 128-column blocks per pass of [`many`] over its rows: a pass's prepared words (8
/// vectors of 1024 columns, 16 KiB) stay in L1 while every row pair meets them (with
/// whole rows of 7168 columns they were read from L2 for every pair).
const PASS_BLOCKS: usize = 8;

/// Row pairs ahead that [`grid`] prefetches into L2: a pass spends ~0.1 us on a pair,
/// about one memory latency.
const PREFETCH_PAIRS: usize = 4;

/// [`rows_times_prepared`] on the view: per pass of [`PASS_BLOCKS`] column blocks, rows
/// two at a time (the last alone), the vectors in near-equal groups of at most
/// [`GRID_VECTORS`]; each pass adds its sums to the outputs (the first writes them).
///
/// # Safety
/// As [`rows_times_prepared`], `v` holding the prepared vectors.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512bf16")]
unsafe fn many(w: &Fp8Weights<'_>, first: usize, rows: usize, v: View, out: &mut [f32]) {
    let n = v.n;
    let col_blocks = w.cols.div_ceil(BLOCK);
    let groups = n.div_ceil(GRID_VECTORS);
    for b0 in (0..col_blocks).step_by(PASS_BLOCKS) {
        let blocks = b0..(b0 + PASS_BLOCKS).min(col_blocks);
        let mut r = 0;
        while r < rows {
            let pair = rows - r >= 2;
            let mut j0 = 0;
            for g in 0..groups {
                let jn = (n - j0).div_ceil(groups - g);
                let vj = View {
                    words: v.words.add(j0 * STEP),
                    scales: v.scales.add(j0),
                    ..v
                };
                let o = out.as_mut_ptr().add(r * n + j0);
                let at = (w, first + r, vj, o, blocks.clone());
                match v.unit {
                    true => grid_of::<true>(pair, jn, at),
                    false => grid_of::<false>(pair, jn, at),
                }
                j0 += jn;
            }
            r += if pair { 2 } else { 1 };
        }
    }
}

/// [`grid`] for a pair of rows or one (`pair`) and `jn` (1..) vectors, at most
/// [`GRID_VECTORS`] of them; `UNIT`: the vectors' scales are all 1 ([`View::unit`]).
///
/// # Safety
/// As [`grid`].
#[inline(always)]
unsafe fn grid_of<const UNIT: bool>(pair: bool, jn: usize, at: GridAt<'_, '_>) {
    match (pair, jn) {
        (true, 1) => grid::<2, 1, UNIT>(at),
        (true, 2) => grid::<2, 2, UNIT>(at),
        (true, 3) => grid::<2, 3, UNIT>(at),
        (true, 4) => grid::<2, 4, UNIT>(at),
        (true, _) => grid::<2, 5, UNIT>(at),
        (false, 1) => grid::<1, 1, UNIT>(at),
        (false, 2) => grid::<1, 2, UNIT>(at),
        (false, 3) => grid::<1, 3, UNIT>(at),
        (false, 4) => grid::<1, 4, UNIT>(at),
        (false, _) => grid::<1, 5, UNIT>(at),
    }
}

/// [`grid`]'s arguments: the weights, the first of its rows, the view from its first
/// vector on (words and scales offset, `n` the call's vector count: the stride of a step
/// and of an output row), its first output and the column blocks of the pass.
type GridAt<'a, 'w> = (
    &'a Fp8Weights<'w>,
    usize,
    View,
    *mut f32,
    std::ops::Range<usize>,
);

/// `R` weight rows times `J` prepared vectors over the pass's column blocks, all `R * J`
/// sums in registers: per 64 codes each row is decoded once and dotted with every vector;
/// each 128-column block's sums are scaled once (weight block scale, then the vector's;
/// with `UNIT`, [`View::unit`], one multiply-add per sum instead of two multiplies), and
/// added to the outputs (written by the first pass). `UNIT`, in one process against two
/// multiplies: DeepSeek-V3's w8a16 experts at T 256 (`moemla bench` shape) best 415-426
/// vs 427-442 ms; at 32 experts of 8 tokens each (1.4 GB of weights) 47-52 vs 51-55 ms.
///
/// # Safety
/// As [`rows_times_prepared`]: the `R` rows, their scale rows, `J` prepared vectors from
/// the view and outputs `out + i * n + j` must exist.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512bf16")]
unsafe fn grid<const R: usize, const J: usize, const UNIT: bool>(
    (w, row, v, out, blocks): GridAt<'_, '_>,
) {
    let k = w.cols;
    let whole = k / BLOCK;
    let tables = Tables::load();
    let stored: [(&[u8], &[f32]); R] = std::array::from_fn(|i| w.row(row + i));
    let codes = stored.map(|(c, _)| c.as_ptr());
    let scales = stored.map(|(_, s)| s.as_ptr());
    let first_pass = blocks.start == 0;
    let mut total = [[_mm512_setzero_ps(); J]; R];
    for b in blocks {
        let c = b * BLOCK;
        // The same block PREFETCH_PAIRS row pairs on into L2 (a hint, never a fault, past
        // the last row too).
        for row in codes {
            let ahead = c + PREFETCH_PAIRS * R * k;
            _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(ahead).cast());
            _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(ahead + 64).cast());
        }
        // SAFETY: codes c..min(c + 128, k) of each row exist; the prepared words of step
        // c / 64 on lie inside the view (each vector padded to whole steps).
        let x = v.words.add(c / STEP * v.n * STEP);
        let sums = if b < whole {
            grid_block::<R, J, true>(&tables, codes, c, x, v.n, BLOCK)
        } else {
            grid_block::<R, J, false>(&tables, codes, c, x, v.n, k - c)
        };
        for i in 0..R {
            let ws = _mm512_set1_ps(*scales[i].add(b));
            for j in 0..J {
                let act = || _mm512_set1_ps(*v.scales.add(b * v.n + j));
                total[i][j] = add_scaled::<UNIT>(total[i][j], sums[i][j], ws, act);
            }
        }
    }
    for (i, t) in total.iter().enumerate() {
        for (j, sum) in t.iter().enumerate() {
            let o = out.add(i * v.n + j);
            let earlier = if first_pass { 0.0 } else { *o };
            *o = earlier + _mm512_reduce_add_ps(*sum);
        }
    }
}

/// The block's dot products (16 f32 lanes each) of `live` (1..=128; 128 when `FULL`)
/// codes at column `c` of the `R` rows with the `J` prepared vectors at `x` (the block's
/// first step; vector j's words of step s at `x + (s * n + j) * 64`).
///
/// # Safety
/// As [`grid`].
#[inline(always)]
unsafe fn grid_block<const R: usize, const J: usize, const FULL: bool>(
    t: &Tables,
    codes: [*const u8; R],
    c: usize,
    x: *const u16,
    n: usize,
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
                codes_at(row.add(c + at), live - at)
            };
            *d = decode(t, v);
        }
        let xs = x.add(step * n * STEP);
        for j in 0..J {
            let xp = xs.add(j * STEP);
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

/// `total + sum * ws * act()`: a block's sums scaled by the weights' block scale `ws`,
/// then by the activations' (DeepGEMM's order); with `UNIT` (every activation scale 1,
/// [`View::unit`]) `total + sum * ws` in one multiply-add, `act` not called.
///
/// # Safety
/// AVX-512F must be available.
#[inline(always)]
unsafe fn add_scaled<const UNIT: bool>(
    total: __m512,
    sum: __m512,
    ws: __m512,
    act: impl FnOnce() -> __m512,
) -> __m512 {
    if UNIT {
        _mm512_fmadd_ps(sum, ws, total)
    } else {
        _mm512_fmadd_ps(_mm512_mul_ps(sum, ws), act(), total)
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

    /// [`Tables::load`] for the values times `2^e` (`e` from [`pow2_exponent`]): `e`
    /// added to the exponent of every non-zero finite magnitude's bf16 (exact, each stays
    /// normal); zero and the NaN as they are.
    ///
    /// # Safety
    /// AVX-512F and AVX-512BW must be available.
    #[inline(always)]
    unsafe fn scaled(e: i32) -> Self {
        let add = _mm512_set1_epi16((e << 7) as i16);
        // Magnitudes 32 v .. 32 v + 32: every one scaled but 0 (zero) and 127 (NaN).
        let scaled: [u32; 4] = [!1, !0, !0, !(1 << 31)];
        let (mut high, mut low) = ([_mm256_setzero_si256(); 4], [_mm256_setzero_si256(); 4]);
        for v in 0..4 {
            // SAFETY: 32 words from 32 v < 128 of MAGNITUDES.
            let w = unsafe { _mm512_loadu_si512(MAGNITUDES[32 * v..].as_ptr().cast()) };
            let w = _mm512_mask_add_epi16(w, scaled[v], w, add);
            high[v] = _mm512_cvtepi16_epi8(_mm512_srli_epi16::<8>(w));
            low[v] = _mm512_cvtepi16_epi8(w);
        }
        Tables {
            high: [
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(high[0]), high[1]),
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(high[2]), high[3]),
            ],
            low: [
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low[0]), low[1]),
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low[2]), low[3]),
            ],
        }
    }
}

/// The block's dot products (16 f32 lanes per vector) of `live` (1..=128; 128 when
/// `FULL`) codes at `codes` with the `N` prepared vectors at `x` (the block's first step;
/// vector j's words of step s at `x + (s * N + j) * 64`).
///
/// # Safety
/// As [`rows_n`]: `codes[..live]` readable, the prepared words of the block's
/// `live.div_ceil(64)` steps readable.
#[inline(always)]
unsafe fn block<const N: usize, const A: usize, const FULL: bool>(
    t: &Tables,
    codes: *const u8,
    x: *const u16,
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
            codes_at(codes.add(at), live - at)
        };
        let (wa, wb) = decode(t, v);
        let slot = if A == 4 { 2 * step } else { 0 };
        for (j, a) in acc.iter_mut().enumerate() {
            let xp = x.add((step * N + j) * STEP);
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

/// The [`STEP`] codes at `p`, those from the `left`-th on zero and not read (a masked
/// load where `left` < 64).
///
/// # Safety
/// AVX-512F/BW must be available; `min(left, 64)` bytes at `p` are readable.
#[inline(always)]
unsafe fn codes_at(p: *const u8, left: usize) -> __m512i {
    if left >= STEP {
        _mm512_loadu_si512(p.cast())
    } else {
        _mm512_maskz_loadu_epi8((1u64 << left) - 1, p.cast())
    }
}

/// 64 codes as 64 bf16: per 128-bit lane q, codes `16q..16q + 8` in the first vector and
/// `16q + 8..16q + 16` in the second (the order [`Prepared`] holds the activations in).
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
    fn scaled_tables_decode_every_code_times_its_power_of_two_exactly() {
        if !available() {
            eprintln!("skipped: no AVX-512 BF16 with VBMI here");
            return;
        }
        // The ends of the range, 1 and a few between; each decodes all 256 codes.
        for e in [-117, -60, -9, -1, 0, 1, 8, 60, 119] {
            assert_eq!(pow2_exponent(2f32.powi(e)), Some(e));
            let scale = 2f64.powi(e);
            let codes: [u8; 256] = std::array::from_fn(|c| c as u8);
            let mut words = [0u16; 256];
            // SAFETY: the features were checked above; 64 codes a step, 64 words out.
            unsafe {
                let tables = Tables::scaled(e);
                for (step, out) in codes.chunks_exact(64).zip(words.chunks_exact_mut(64)) {
                    let (lo, hi) = decode(&tables, _mm512_loadu_si512(step.as_ptr().cast()));
                    _mm512_storeu_si512(out.as_mut_ptr().cast(), lo);
                    _mm512_storeu_si512(out[32..].as_mut_ptr().cast(), hi);
                }
            }
            for (step, out) in words.chunks_exact(64).enumerate() {
                for (i, &bits) in out.iter().enumerate() {
                    // decode's order: per 128-bit lane q, codes 16q..16q + 8 in the first
                    // vector, 16q + 8..16q + 16 in the second.
                    let (half, at) = (i / 32, i % 32);
                    let code = step * 64 + at / 8 * 16 + half * 8 + at % 8;
                    let got = f32::from_bits(u32::from(bits) << 16);
                    let want = e4m3_reference(code as u8) * scale;
                    if want.is_nan() {
                        assert!(got.is_nan(), "e {e} code {code:#04x}");
                        continue;
                    }
                    assert_eq!(got as f64, want, "e {e} code {code:#04x}");
                    assert!(want == 0.0 || got.is_normal(), "e {e} code {code:#04x}");
                }
            }
        }
        // Not a power of two, negative, zero, infinite or past the range: not taken.
        for s in [
            0.37,
            -0.5,
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NAN,
            2f32.powi(-118),
            2f32.powi(120),
        ] {
            assert_eq!(pow2_exponent(s), None, "{s}");
        }
    }
}

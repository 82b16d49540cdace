//! [`super::rows_times`] on AVX2 + FMA (F16C for f16 weights), for CPUs without AVX-512
//! (AMD Zen 2/3, Intel client cores): the rows in pairs, each weight step of 16 columns
//! read once, widened to f32 in registers (bf16: zero-extended and shifted up 16 bits,
//! exact; f16: `VCVTPH2PS`, exact) and multiplied into one or two accumulators per row
//! and activation vector, each activation register loaded once for both rows. The
//! portable path it replaces upcast each row into a buffer first and then made one dot per
//! vector: on a 2-core AMD EPYC (Zen 3), `moe_experts` bf16 T=1 at V2-Lite shapes ran at
//! 38% of the read bandwidth that way.
//!
//! Rows one at a time ran 3 and 4 vectors at 13-14 and 11-12 GB/s on one core of that
//! machine (bf16, 16384 rows of 2048 from memory) against 17-19 GB/s with one: 8 KiB per
//! vector no longer stayed in L1 beside the streaming rows, and their loads from L2 bound
//! the kernel. In pairs 15.7 and 13.2 GB/s. A harness calling the op (`moe_experts`
//! T=16 at V2-Lite shapes, best of 40 calls, builds alternated, not committed): f32
//! 57.2-59.0 -> 50.1-51.2 ms; bf16 31.9-32.8 -> 29.9-30.9 ms in four rounds of five
//! (33.4 in one).
//!
//! The same dot products take the last 1 to 4 rows of `b` in the AVX2 GEMM
//! ([`cached_f32_dots`]: f32 rows of `a` already in cache, strided, added to across
//! passes).

use crate::storage::FloatSlice;
use half::{bf16, f16};
use std::arch::x86_64::*;

/// f32 lanes of one AVX2 register.
const LANES: usize = 8;

/// Columns per step: two registers of weights per row (into two partial sums per row and
/// vector where the registers allow, else into one).
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

/// How [`dots`] walks its operands, in elements: weight rows `ldw` apart, activation
/// vectors `ldx` apart, each row's outputs `ldo` apart (vector `c` at `c`), stored or
/// added to (`add`); where it prefetches the weights ahead (its `FETCH`), into L1 or L2
/// (`into_l1`).
#[derive(Clone, Copy, Debug)]
pub struct Walk {
    /// Distance between weight rows.
    pub ldw: usize,
    /// Distance between activation vectors.
    pub ldx: usize,
    /// Distance between the output rows (one per weight row).
    pub ldo: usize,
    /// Add the dot products to the outputs instead of storing them.
    pub add: bool,
    /// Prefetch into L1 (AMD cores, measured: [`super::PREFETCH_BYTES`]), else into L2
    /// (Intel cores, as the AVX-512 kernel).
    pub into_l1: bool,
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
    let walk = Walk {
        ldw: k,
        ldx: k,
        ldo: n,
        add: false,
        into_l1: !crate::vendor::intel(),
    };
    let (w, x, o) = (w[first * k..].as_ptr(), act.as_ptr(), out.as_mut_ptr());
    // SAFETY: AVX2, FMA and F16C were detected; `w` holds rows first..first + rows of k
    // elements, `act` n x k and `out` at least rows x n (checked above), as `dots`
    // requires with this walk.
    unsafe {
        match n {
            0 => {} // No vectors: nothing to write.
            1 => dots::<T, 1, true>(w, rows, k, x, o, walk),
            2 => dots::<T, 2, true>(w, rows, k, x, o, walk),
            3 => dots::<T, 3, true>(w, rows, k, x, o, walk),
            4 => dots::<T, 4, true>(w, rows, k, x, o, walk),
            _ => return false,
        }
    }
    true
}

/// [`dots`] for f32 rows already in cache (no prefetch: `walk.into_l1` is ignored) and
/// `n` of 1 to [`super::MAX_VECTORS`] vectors (others: nothing is done): the last rows of
/// `b` past whole registers in [`crate::gemm_util::matmul_nt_packed`].
///
/// # Safety
/// As [`dots`]'s, for `N` = `n`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn cached_f32_dots(
    n: usize,
    w: *const f32,
    rows: usize,
    k: usize,
    x: *const f32,
    out: *mut f32,
    walk: Walk,
) {
    match n {
        1 => dots::<f32, 1, false>(w, rows, k, x, out, walk),
        2 => dots::<f32, 2, false>(w, rows, k, x, out, walk),
        3 => dots::<f32, 3, false>(w, rows, k, x, out, walk),
        4 => dots::<f32, 4, false>(w, rows, k, x, out, walk),
        _ => {}
    }
}

/// `out[r * ldo + c] (+)= w_r . x_c` for `rows` rows of `w` (`k` columns each) and the
/// `N` vectors of `x`, as `walk` lays them out: the rows in pairs ([`rows_of`]), a last
/// odd row alone; the weights prefetched ahead where `FETCH` (rows streamed from memory;
/// a const parameter, as LLVM kept a run-time test of it in the loop).
///
/// # Safety
/// AVX2, FMA and F16C must be available; `k >= 1`; for r < `rows` and c < `N`, `k`
/// values at `w + r * ldw` and at `x + c * ldx` are readable, and `out + r * ldo + c` is
/// writable (and readable with `add`), aliasing neither.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dots<T: Widen, const N: usize, const FETCH: bool>(
    w: *const T,
    rows: usize,
    k: usize,
    x: *const f32,
    out: *mut f32,
    walk: Walk,
) {
    let pairs = rows / 2;
    for q in 0..pairs {
        let (w, out) = (w.add(2 * q * walk.ldw), out.add(2 * q * walk.ldo));
        // SAFETY: as this function's contract, for rows 2q and 2q + 1.
        match N {
            // Two partial sums per row and vector (FMA latency hidden) while they and a
            // step's weights fit the 16 registers.
            1..=3 => rows_of::<T, N, 2, 2, FETCH>(w, k, x, out, walk),
            _ => rows_of::<T, N, 2, 1, FETCH>(w, k, x, out, walk),
        }
    }
    if rows % 2 == 1 {
        let (w, out) = (w.add(2 * pairs * walk.ldw), out.add(2 * pairs * walk.ldo));
        // SAFETY: as above, for the last row.
        rows_of::<T, N, 1, 2, FETCH>(w, k, x, out, walk);
    }
}

/// `out[r * ldo + c] (+)= w_r . x_c` for the `R` rows of `w` and the `N` vectors of `x`
/// (`k` columns each, as `walk` lays them out): each 16-column step of every row widened
/// once, each activation register loaded once for the `R` rows (with one row at a time
/// and 3 or 4 vectors, the vectors no longer stayed in L1 beside the streaming rows, and
/// their loads from L2 bounded the kernel), multiplied into `P` partial sums per row and
/// vector; the weights [`super::PREFETCH_BYTES`] ahead prefetched where `FETCH`, into
/// L1 or L2 as `walk` says; the last `k % 16` columns in scalar f32.
///
/// # Safety
/// As [`dots`]'s, for `R` rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_of<T: Widen, const N: usize, const R: usize, const P: usize, const FETCH: bool>(
    w: *const T,
    k: usize,
    x: *const f32,
    out: *mut f32,
    walk: Walk,
) {
    let Walk { ldw, ldx, ldo, .. } = walk;
    let whole = k / STEP * STEP;
    let mut acc = [[[_mm256_setzero_ps(); R]; N]; P];
    let mut off = 0;
    // SAFETY (all loads): columns off..off + 16 lie inside each of the R rows of w and
    // every vector of x; out + r * ldo + c is inside the outputs.
    while off < whole {
        // One line PREFETCH_BYTES on per 64 bytes of each row (a hint: never faults,
        // whatever the address, so `wrapping_add` may pass the end of `w`).
        let bytes = off * size_of::<T>();
        if FETCH && bytes.is_multiple_of(64) {
            for r in 0..R {
                let row = w.add(r * ldw).cast::<u8>();
                let ahead = row.wrapping_add(bytes + super::PREFETCH_BYTES).cast();
                match walk.into_l1 {
                    true => _mm_prefetch::<_MM_HINT_T0>(ahead),
                    false => _mm_prefetch::<_MM_HINT_T1>(ahead),
                }
            }
        }
        for h in 0..2 {
            let col = off + h * LANES;
            let wv: [__m256; R] = std::array::from_fn(|r| T::load8(w.add(r * ldw + col)));
            for (c, sums) in acc[h % P].iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.add(c * ldx + col));
                for (s, &wr) in sums.iter_mut().zip(&wv) {
                    *s = _mm256_fmadd_ps(wr, xv, *s);
                }
            }
        }
        off += STEP;
    }
    for r in 0..R {
        for c in 0..N {
            let tail: f32 = (whole..k)
                .map(|col| (*w.add(r * ldw + col)).to_f32() * *x.add(c * ldx + col))
                .sum();
            let sum = acc[1..]
                .iter()
                .fold(acc[0][c][r], |a, part| _mm256_add_ps(a, part[c][r]));
            let o = out.add(r * ldo + c);
            let dot = crate::avx2::sum_lanes(sum) + tail;
            *o = match walk.add {
                true => *o + dot,
                false => dot,
            };
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

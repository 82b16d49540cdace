//! FP8 weight rows times activation vectors (decode-time experts, and prefill experts:
//! any number of tokens on the native bf16 dot, up to [`FMA_MAX_VECTORS`] on f32 FMAs),
//! with the e4m3 codes decoded in registers (at prefill on an expert's prepared tokens,
//! from 8 of them, a few rows' 128-column block at a time into a buffer in L1: see
//! [`rows_times_prepared`]): no dequantized weight tile is ever stored in memory. Paths,
//! each chosen at run time:
//!
//! - AVX512-BF16 + VBMI + AVX-512 F/BW/VL ([`super::dpbf16`]): codes to bf16 by table
//!   lookup, `VDPBF16PS` against activations that are bf16 values or
//!   `fp8_block128`-quantized (others decline); each 128-column block's partial sums
//!   scaled once per block (by the weights' block scale, then the activations':
//!   DeepGEMM's scheme). An expert's tokens can be prepared once for all its weight
//!   tiles ([`Prepared`], [`rows_times_prepared`]).
//! - AVX-512 F/BW/VL: each 64 codes sign-extended to 16 bits, shifted and masked into the
//!   f16 with the same sign, exponent field and mantissa (`(sx(b) << 7) & 0xBF80`: the
//!   e4m3 value times 2^-8, exact, subnormals included), widened to f32 by `VCVTPH2PS`
//!   and multiplied by 2^8 times the block scale (the dequantized value, one rounding),
//!   then f32 FMAs, each decoded row chunk against up to [`FMA_GROUP`] vectors. The NaN
//!   codes (0x7F, 0xFF) are tracked per row and make that row's results NaN, as a
//!   dequantized NaN weight would.
//! - AVX2 + FMA ([`avx2`], CPUs without AVX-512): f32 FMAs on 8-lane registers against
//!   up to [`avx2::GROUP`] vectors at a time, the codes decoded by shifts and a mask
//!   within 32-bit lanes (2^-120 times their values, exact; the activations placed to
//!   match), the weights' block scales folded into the activations once per 128-row
//!   group of rows (which share them) instead of into every block's sums: nothing but
//!   FMAs per decoded code (Zen 3 runs this path's rows at the rate of its instructions
//!   on one core, near its memory's on two).
//!
//! Decode ([`rows_times`], memory-bound) takes the native bf16 dot wherever it exists;
//! prefill ([`rows_times_many`], bound by compute) only where it outpaces the f32 FMA
//! ([`crate::bf16dot::outpaces_fma`]: AMD Zen 4/5 yes, Intel's AVX512-BF16 cores no),
//! else the FMA path up to [`FMA_MAX_VECTORS`] tokens. An expert's prepared tokens
//! ([`Prepared`], [`rows_times_prepared`]) go on AMX tiles wherever this process may use
//! them (the codes decoded as for the native dot, 32 rows' 128-column block at a time).
//! Where every path declines, the caller dequantizes: row by row for decode, tiles for a
//! GEMM at prefill.

use super::Fp8Weights;
use crate::storage::row_range;
use moemla_core::fp8::BLOCK;

#[cfg(target_arch = "x86_64")]
mod avx2;

/// At most this many activation vectors per call (the decode path's limit).
pub const MAX_VECTORS: usize = 4;

/// Activation vectors the f32 FMA path multiplies with each decoded row chunk: 8 vectors
/// of 2 partial sums each plus the chunk's 4 decoded vectors stay in the 32 registers.
pub const FMA_GROUP: usize = 8;

/// Up to this many activation vectors the f32 FMA path beats dequantized tiles on the
/// packed GEMM at prefill: its decode is repeated per group of [`FMA_GROUP`], so its rate
/// falls slowly while the GEMM's grows with the vectors. Measured on one Xeon core (144 x
/// 7168 codes in L2, GFLOP/s, FMA path vs dequantized rows + packed GEMM): 32 vectors
/// 79 vs 70, 40: 78 vs 64, 48: 76 vs 76, 56: 75 vs 77, 64: 69 vs 87, 128: 61 vs 98.
/// The AVX2 path takes the same limit, measured only at the op level there (2-core AMD
/// EPYC, Zen 3, `moemla bench --backend cpu --op moe_experts --dtype bf16 --filter "fp8
/// w8a16 T=256"`: 7.0-8.1 s on dequantized tiles, 3.4-3.6 s on the AVX2 path).
pub const FMA_MAX_VECTORS: usize = 48;

/// `out[r * n + c] = W[first + r] . act[c]` for `rows` rows of the flattened `[E * R, C]`
/// FP8 matrix (`C` = `w.cols` columns) and `n` = `act.len() / C` (1..=[`MAX_VECTORS`])
/// f32 activation vectors; `out` is `[rows, n]`. Returns false (nothing written) where
/// the CPU has neither AVX-512 nor AVX2 + FMA + F16C, the FMA path cannot have the memory
/// for its copy of the activations, or the arguments do not make whole rows and vectors;
/// the caller then takes its portable path.
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

/// [`rows_times`] for any number of activation vectors (`n` >= 1; the prefill path), on
/// the paths for work bound by compute ([`compute_paths`]): the native bf16 dot
/// ([`super::dpbf16::rows_times_many`]) only where it outpaces the f32 FMA, else the f32
/// FMA path in groups of up to [`FMA_GROUP`] vectors (on AVX2, [`avx2::GROUP`]), for up to
/// [`FMA_MAX_VECTORS`]. Returns false (nothing written) where no path takes them (neither
/// AVX-512 nor AVX2, more vectors
/// than that off the bf16 dot, no memory for the FMA path's copy, activations the bf16
/// dot declines) or the arguments do not fit; the caller then dequantizes tiles for its
/// GEMM.
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
    compute_paths(n)
        .into_iter()
        .flatten()
        // SAFETY: as in `rows_times`.
        .any(|path| unsafe { run(path, w, first, rows, n, act, out) })
}

/// An expert's activation vectors prepared once for all its weight tiles
/// ([`rows_times_prepared`]), where [`rows_times_many`] would take the native bf16 dot or
/// AMX tiles take them.
#[derive(Debug)]
pub struct Prepared {
    #[cfg(target_arch = "x86_64")]
    vectors: super::dpbf16::Prepared,
}

impl Prepared {
    /// The vectors of `act` (`k` long each) prepared, or `None` where neither AMX tiles
    /// ([`moemla_core::amx::enabled`], with the native bf16 dot's decode) nor
    /// [`rows_times_many`]'s native bf16 dot would take them: the CPU lacks the dot or it
    /// does not outpace the f32 FMA ([`compute_paths`]), it declines these activations,
    /// or the memory is not there.
    pub fn new(act: &[f32], k: usize) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            let n = act.len().checked_div(k).unwrap_or(0);
            let tiles = super::dpbf16::available() && moemla_core::amx::enabled();
            if compute_paths(n)[0].is_none() && !tiles {
                return None;
            }
            super::dpbf16::Prepared::new(act, k).map(|vectors| Prepared { vectors })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (act, k);
            None
        }
    }
}

/// [`rows_times_many`] on vectors prepared by [`Prepared::new`]: `out` is `[rows, n]`.
/// Fewer than 8 vectors take the grid kernel of [`rows_times_many`] (passes of 1024
/// columns; with up to [`MAX_VECTORS`] vectors its f32 sums are added in another order
/// than [`rows_times`]'s, the same products); from 8, the quad kernel: each row's
/// 128-column block decoded once into L1 and broadcast against 4 vectors per
/// instruction, in parts of at most 24 vectors (the same products and scaling, added in
/// yet another order). Returns false (nothing written) where the arguments do not make
/// whole rows and vectors, or the memory for the AMX tile kernel's sums is not there.
pub fn rows_times_prepared(
    w: &Fp8Weights<'_>,
    first: usize,
    rows: usize,
    p: &Prepared,
    out: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let (n, k) = (p.vectors.vectors(), p.vectors.cols());
        if k != w.cols || !fits_n(w, first, rows, n, out) {
            return false;
        }
        // SAFETY: `p` exists, so the CPU has the path (`dpbf16::available`); `fits_n`
        // checked the rows, their scales and the outputs, and `p` holds n vectors of k.
        unsafe { super::dpbf16::rows_times_prepared(w, first, rows, &p.vectors, out) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, first, rows, p, out);
        false
    }
}

/// The number of activation vectors `n` (>= 1) when the arguments make whole rows and
/// vectors: `act` is `n` vectors of `w.cols`, `out` is `[rows, n]`, and rows
/// `first..first + rows` and their scales exist (checked arithmetic).
fn fits(w: &Fp8Weights<'_>, first: usize, rows: usize, act: &[f32], out: &[f32]) -> Option<usize> {
    let k = w.cols;
    let n = act.len().checked_div(k).unwrap_or(0);
    (n * k == act.len() && fits_n(w, first, rows, n, out)).then_some(n)
}

/// Whether `n` (>= 1) vectors fit: `out` is `[rows, n]`, and rows `first..first + rows`
/// (of `w.cols` > 0 codes) and their scales exist (checked arithmetic).
fn fits_n(w: &Fp8Weights<'_>, first: usize, rows: usize, n: usize, out: &[f32]) -> bool {
    let k = w.cols;
    k > 0
        && n >= 1
        && rows.checked_mul(n) == Some(out.len())
        && row_range(first, rows, k).is_some_and(|r| r.end <= w.codes.len())
        && w.rows > 0
        && scales_cover(w, first, rows)
}

/// The `n` vectors in near-equal groups of at most `max` (>= 1): each group's first
/// vector and size.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn groups(n: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let count = n.div_ceil(max);
    (0..count).scan(0, move |j0, g| {
        let group = (*j0, (n - *j0).div_ceil(count - g));
        *j0 += group.1;
        Some(group)
    })
}

/// An in-register decode path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// AVX512-BF16 + VBMI ([`super::dpbf16`]): activations that are bf16 values or
    /// `fp8_block128`-quantized only.
    #[cfg(target_arch = "x86_64")]
    Bf16Dot,
    /// AVX-512 F/BW/VL: codes to f16 to f32, f32 FMAs.
    #[cfg(target_arch = "x86_64")]
    F32Fma,
    /// AVX2 + FMA ([`avx2`]): codes to f32 by shifts within 32-bit lanes, f32 FMAs.
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

/// The paths this CPU has, the native bf16 dot first (the one to take for memory-bound
/// work: it holds and converts half as much), AVX2 last (twice the registers' width
/// before it).
fn available_paths() -> [Option<Path>; 3] {
    #[cfg(target_arch = "x86_64")]
    {
        let f32_fma = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl");
        [
            super::dpbf16::available().then_some(Path::Bf16Dot),
            f32_fma.then_some(Path::F32Fma),
            crate::avx2::available().then_some(Path::Avx2Fma),
        ]
    }
    #[cfg(not(target_arch = "x86_64"))]
    [None, None, None]
}

/// The paths for `n` vectors of work bound by compute, fastest first: [`available_paths`]
/// without the native bf16 dot where it does not outpace the f32 FMA
/// ([`crate::bf16dot::outpaces_fma`]; Intel's AVX512-BF16 cores run it at half the FMA's
/// FLOP rate), and without the FMA paths past [`FMA_MAX_VECTORS`].
fn compute_paths(n: usize) -> [Option<Path>; 3] {
    let [dot, fma, avx2] = available_paths();
    [
        dot.filter(|_| crate::bf16dot::outpaces_fma()),
        fma.filter(|_| n <= FMA_MAX_VECTORS),
        avx2.filter(|_| n <= FMA_MAX_VECTORS),
    ]
}

/// Runs `path` for `n` (>= 1) vectors; false when it declines the activations (nothing
/// written).
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
        Path::Bf16Dot if n <= MAX_VECTORS => super::dpbf16::rows_times(w, first, rows, n, act, out),
        #[cfg(target_arch = "x86_64")]
        Path::Bf16Dot => super::dpbf16::rows_times_many(w, first, rows, n, act, out),
        #[cfg(target_arch = "x86_64")]
        Path::F32Fma => x86::rows_times(w, first, rows, n, act, out),
        #[cfg(target_arch = "x86_64")]
        Path::Avx2Fma => avx2::rows_times(w, first, rows, n, act, out),
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
    use super::{Fp8Weights, BLOCK, FMA_GROUP};
    use crate::aligned::Aligned;
    use std::arch::x86_64::*;
    use std::cell::Cell;

    thread_local! {
        /// Per-thread buffer of the activations in blocks ([`blocked`]).
        static BLOCKED: Cell<Aligned<f32>> = const { Cell::new(Aligned::new()) };
    }

    /// The largest buffer (f32 values) a thread keeps between calls: a decode step's or a
    /// few dozen prefill tokens'; larger ones are freed after their call.
    const BLOCKED_KEEP: usize = 1 << 20;

    /// Runs `f` on this thread's buffer for `n` vectors of `k` laid out as
    /// `[ceil(k / 128)][n][128]` (each 128-column block of every vector side by side, the
    /// last block zero-padded), zeroed, from a 64-byte boundary ([`Aligned`]); `None`
    /// (nothing run) where that memory is not there. `f` puts the activations there with
    /// [`place_all`], once or once per run of rows with other scales (the padding stays
    /// zero). Every activation load of [`block`] is then one cache line (misaligned, the
    /// kernel ran at 57 instead of 77 GFLOP/s on one Xeon core: large buffers come 16
    /// bytes past a page boundary from the allocator), needs no mask, and sits at a
    /// constant offset from one pointer (with one pointer per vector the kernel ran out of
    /// registers). Costs filling the buffer and placing the activations, a few percent of
    /// a tile's work.
    pub(super) fn blocked<R>(k: usize, n: usize, f: impl FnOnce(&mut [f32]) -> R) -> Option<R> {
        let len = k.div_ceil(BLOCK).checked_mul(BLOCK.checked_mul(n)?)?;
        crate::kept::with_buffer(&BLOCKED, BLOCKED_KEEP, |buf| {
            let zeroed = buf.try_resize(len, 0.0, "fp8 blocked activations");
            zeroed.is_ok().then(|| f(buf))
        })
    }

    /// Puts the `n` vectors of `k` in `act` into `buf` ([`blocked`]'s layout): block `b`
    /// of vector `j` by `place(j, b, block, values)` (the block of 128, its up to 128
    /// values), which copies them as they are ([`copy`]) or in the order and scale a
    /// kernel's decode needs, writing the same places each time.
    pub(super) fn place_all(
        buf: &mut [f32],
        act: &[f32],
        k: usize,
        n: usize,
        mut place: impl FnMut(usize, usize, &mut [f32], &[f32]),
    ) {
        for (j, vector) in act.chunks_exact(k).take(n).enumerate() {
            for (b, values) in vector.chunks(BLOCK).enumerate() {
                place(j, b, &mut buf[(b * n + j) * BLOCK..][..BLOCK], values);
            }
        }
    }

    /// [`place_all`]'s placement of a block's values as they are.
    fn copy(_vector: usize, _block: usize, to: &mut [f32], values: &[f32]) {
        to[..values.len()].copy_from_slice(values);
    }

    /// Codes per load: one 512-bit register, four 16-lane f32 quarters.
    const STEP: usize = 64;

    /// Rows per pass of [`rows_times`]: their codes for one pass (16 x 512 bytes) stay in
    /// L1 beside the pass's activations.
    pub(super) const PASS_ROWS: usize = 16;
    /// 128-column blocks per pass: a group's activations for one pass
    /// ([`FMA_GROUP`] x 512 f32, 16 KiB) stay in L1 while every row of the pass meets
    /// them (read from L2 per row, they bounded the kernel).
    pub(super) const PASS_BLOCKS: usize = 4;

    /// See [`super::rows_times`], for any `n`: the vectors in near-equal groups of at most
    /// [`FMA_GROUP`] (each group's kernel monomorphized on its size so that every
    /// accumulator is a register), each group over [`PASS_ROWS`] rows at a time. False
    /// (nothing written) where the memory for the activations' blocked copy is not there.
    ///
    /// # Safety
    /// AVX-512F, AVX-512BW and AVX-512VL must be available; rows `first..first + rows`
    /// of `w.cols` codes and their scales, `n` (>= 1) vectors of `w.cols` activations and
    /// `rows * n` outputs must exist.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn rows_times(
        w: &Fp8Weights<'_>,
        first: usize,
        rows: usize,
        n: usize,
        act: &[f32],
        out: &mut [f32],
    ) -> bool {
        blocked(w.cols, n, |x| {
            place_all(x, act, w.cols, n, copy);
            // SAFETY: as this function's contract; `x` holds the n vectors in blocks.
            unsafe { rows_times_blocked(w, first, rows, n, x, out) }
        })
        .is_some()
    }

    /// [`rows_times`] on the activations in blocks (`x`, as [`blocked`] lays them out).
    ///
    /// # Safety
    /// As [`rows_times`], `x` holding `ceil(k / 128) * n * 128` values from a 64-byte
    /// boundary ([`block`] loads them aligned).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn rows_times_blocked(
        w: &Fp8Weights<'_>,
        first: usize,
        rows: usize,
        n: usize,
        x: &[f32],
        out: &mut [f32],
    ) {
        debug_assert!(
            (x.as_ptr() as usize).is_multiple_of(crate::aligned::ALIGN),
            "x on a 64-byte boundary"
        );
        for r0 in (0..rows).step_by(PASS_ROWS) {
            let pass_rows = PASS_ROWS.min(rows - r0);
            for (j0, size) in super::groups(n, FMA_GROUP) {
                // SAFETY: vectors j0..j0 + size exist (j0 + size <= n), and so do outputs
                // (r0 + i) * n + j0 + j for i < pass_rows, j < size.
                let xg = x.as_ptr().add(j0 * BLOCK);
                let o = out.as_mut_ptr().add(r0 * n + j0);
                let at = (w, first + r0, pass_rows, (xg, n * BLOCK), o, n);
                match size {
                    1 => rows_n::<1, 4>(at),
                    2 => rows_n::<2, 4>(at),
                    3 => rows_n::<3, 4>(at),
                    4 => rows_n::<4, 4>(at),
                    5 => rows_n::<5, 2>(at),
                    6 => rows_n::<6, 2>(at),
                    7 => rows_n::<7, 2>(at),
                    _ => rows_n::<FMA_GROUP, 2>(at),
                }
            }
        }
    }

    /// [`rows_n`]'s arguments: the weights, the first row (of the flattened `[E * R, C]`
    /// matrix), the number of rows (1..=[`PASS_ROWS`]), the first activation vector's
    /// first block in the blocked copy ([`blocked`]; the vectors 128 values apart) with
    /// the stride from one column block to the next, the first output and the output row
    /// stride.
    pub(super) type RowsAt<'a, 'w> = (
        &'a Fp8Weights<'w>,
        usize,
        usize,
        (*const f32, usize),
        *mut f32,
        usize,
    );

    /// `rows` rows times `N` activation vectors into `out + i * stride + j`, in passes of
    /// [`PASS_BLOCKS`] 128-column blocks (every row meets the pass's activations while
    /// they are in L1): whole blocks' codes unmasked, a partial last block's masked (its
    /// activations zero-padded). Each decoded weight is multiplied by its block scale
    /// first (the dequantized value the contract defines, `e4m3 * scale` rounded to
    /// f32), so the `P` partial sums per vector run through the whole pass and are added
    /// into the row's totals once per pass.
    ///
    /// # Safety
    /// As [`rows_times`]: the rows, their scales, the `N` vectors and the outputs exist.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn rows_n<const N: usize, const P: usize>(
        (w, first, rows, (x, block_stride), out, stride): RowsAt<'_, '_>,
    ) {
        let k = w.cols;
        let whole = k / BLOCK;
        let col_blocks = k.div_ceil(BLOCK);
        let mut total = [[_mm512_setzero_ps(); N]; PASS_ROWS];
        // Per row, the largest low-7-bit pattern seen, per byte lane: 0x7F means a NaN code.
        let mut seen = [_mm512_setzero_si512(); PASS_ROWS];
        for b0 in (0..col_blocks).step_by(PASS_BLOCKS) {
            for i in 0..rows {
                let (codes, scales) = w.row(first + i);
                let (codes, scales) = (codes.as_ptr(), scales.as_ptr());
                // The same columns of the row [`PASS_ROWS`] further on (the next call's)
                // into L2: the column-wise passes defeat the hardware prefetcher. A hint,
                // never a fault, past the last row too.
                let ahead = codes.wrapping_add(PASS_ROWS * k + b0 * BLOCK);
                for line in (0..PASS_BLOCKS * BLOCK).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(line).cast());
                }
                let mut part = [[_mm512_setzero_ps(); P]; N];
                for b in b0..col_blocks.min(b0 + PASS_BLOCKS) {
                    let c = b * BLOCK;
                    // The f16 images are 2^-8 times the e4m3 values: times 2^8 (exact) and
                    // the block scale, one rounding, as `e4m3 * scale` in f32.
                    let scale = _mm512_set1_ps(256.0 * *scales.add(b));
                    let at = (codes.add(c), x.add(b * block_stride), scale);
                    // SAFETY: codes c..c + live of this row exist (live = the block's
                    // width), and so do the group's N padded blocks b of activations.
                    if b < whole {
                        block::<N, P, true>(at, BLOCK, &mut seen[i], &mut part);
                    } else {
                        block::<N, P, false>(at, k - c, &mut seen[i], &mut part);
                    }
                }
                for (t, p) in total[i].iter_mut().zip(&part) {
                    *t = p.iter().fold(*t, |a, &v| _mm512_add_ps(a, v));
                }
            }
        }
        for (i, (row_total, row_seen)) in total.iter().zip(seen).take(rows).enumerate() {
            let nan = _mm512_cmpeq_epi8_mask(row_seen, _mm512_set1_epi8(0x7F)) != 0;
            for (j, t) in row_total.iter().enumerate() {
                *out.add(i * stride + j) = if nan {
                    f32::NAN
                } else {
                    _mm512_reduce_add_ps(*t)
                };
            }
        }
    }

    /// Accumulates into `part` the products of `live` (1..=128; 128 when `FULL`) codes at
    /// `codes`, decoded and multiplied by `scale` (2^8 times the block scale, broadcast),
    /// with the `N` padded activation blocks at `x + j * 128`: `P` (1, 2 or 4) independent
    /// partial sums of 16 lanes per vector, the 64-code chunk's four quarters taking them
    /// in turn. Folds the codes' low 7 bits into `seen` (a byte-wise maximum).
    ///
    /// # Safety
    /// AVX-512F/BW must be available; `codes[..live]` (masked codes beyond `live` are
    /// neither read nor faulted on) and `x[..N * 128]` must be readable, from a 64-byte
    /// boundary (aligned loads).
    #[inline(always)]
    unsafe fn block<const N: usize, const P: usize, const FULL: bool>(
        (codes, x, scale): (*const u8, *const f32, __m512),
        live: usize,
        seen: &mut __m512i,
        part: &mut [[__m512; P]; N],
    ) {
        let low7 = _mm512_set1_epi8(0x7F);
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
            let q = decode(v).map(|wq| _mm512_mul_ps(wq, scale));
            for (j, p) in part.iter_mut().enumerate() {
                // Padded with zeros past `live`, which meet zero codes.
                let xj = x.add(j * BLOCK + at);
                for (i, wq) in q.into_iter().enumerate() {
                    let xv = _mm512_load_ps(xj.add(16 * i));
                    p[i % P] = _mm512_fmadd_ps(wq, xv, p[i % P]);
                }
            }
        }
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
    use crate::aligned::Aligned;
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

    /// Test weights, owned: see [`test_weights_of`].
    struct TestWeights {
        /// R: rows per expert.
        r: usize,
        /// C: columns.
        c: usize,
        codes: Vec<u8>,
        scales: Vec<f32>,
    }

    impl TestWeights {
        /// The weights as the kernels take them.
        fn weights(&self) -> Fp8Weights<'_> {
            Fp8Weights {
                codes: &self.codes,
                scales: &self.scales,
                rows: self.r,
                cols: self.c,
            }
        }
    }

    /// E 2, R 130 (a partial row block), C 300 (two full 128-blocks, a partial one, and a
    /// partial 64-step): see [`test_weights_of`].
    fn test_weights() -> TestWeights {
        test_weights_of(300, false)
    }

    /// E 2, R 130, C `c` (>= 78): codes with every value but NaN in play, -0.0 (0x80) and
    /// +-448 (0x7E, 0xFE) included, and one NaN code in row 5 and one in the last column
    /// of row 140 (expert 1); scales `[2, 2, ceil(c / 128)]`, 0.37 times powers of two,
    /// or (`pow2`, UE8M0 scales) powers of two (2^-6, 2^-17, 2^-28, 2^-39, 2^-50 in turn,
    /// so neighbouring blocks differ).
    fn test_weights_of(c: usize, pow2: bool) -> TestWeights {
        let (e, r) = (2, 130);
        let mut codes: Vec<u8> = (0..e * r * c).map(|i| (i * 37 % 256) as u8).collect();
        for b in codes.iter_mut() {
            if *b & 0x7F == 0x7F {
                *b = 0x80;
            }
        }
        codes[5 * c + 77] = 0xFF;
        codes[140 * c + c - 1] = 0x7F;
        let scales: Vec<f32> = (0..e * 2 * c.div_ceil(BLOCK))
            .map(|i| match pow2 {
                false => 2f32.powi(-(i as i32) % 7) * 0.37,
                true => 2f32.powi(-6 - (i as i32 * 11) % 55),
            })
            .collect();
        TestWeights {
            r,
            c,
            codes,
            scales,
        }
    }

    /// `n` activation vectors of `c`: bf16 values (`"bf16"`: bf16 tokens),
    /// `fp8_block128`-quantized ones with f32 scales (`"quantized"`), or plain f32 ones
    /// (`"f32"`; `"f32 wide"` and `"f32 apart"` far from 1, see below).
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
        if kind == "f32 wide" {
            // Activations scaled by 2^-45, 1 and 2^45 in turn, and vectors after the first
            // by 2^60 more (the AVX2 path's exponent then depends on the vector).
            for (i, v) in act.iter_mut().enumerate() {
                let e = 45 * (i % 3) as i32 - 45 + if i >= c { 60 } else { 0 };
                *v *= 2f32.powi(e);
            }
        }
        if kind == "f32 apart" {
            // Vectors 2^-100 and 2^100 times the plain ones in turn: each must keep its
            // own precision beside the others.
            for (i, v) in act.iter_mut().enumerate() {
                *v *= 2f32.powi(if (i / c).is_multiple_of(2) { -100 } else { 100 });
            }
        }
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
                let (_, scales) = w.row(row);
                let mag: f64 = (0..c)
                    .map(|cc| {
                        let scale = scales[cc / BLOCK] as f64;
                        let code = e4m3_decode(w.codes[row * c + cc]) as f64;
                        (code * scale * act[j * c + cc] as f64).abs()
                    })
                    .sum::<f64>();
                assert!(
                    (got as f64 - want).abs() <= 1e-6 * mag.max(1e-30),
                    "{what} row {row} vector {j}: {got} vs {want}"
                );
            }
        }
    }

    /// The kinds of test activations ([`test_act`]): bf16 values (bf16 tokens),
    /// fp8_block128-quantized ones (f32 scales), and plain f32 ones of every magnitude.
    const KINDS: [&str; 5] = ["bf16", "quantized", "f32", "f32 wide", "f32 apart"];

    /// How many of the [`KINDS`] `path` takes: the bf16 dot declines the plain f32 ones.
    fn kinds_taken(path: Path) -> usize {
        match path {
            #[cfg(target_arch = "x86_64")]
            Path::Bf16Dot => 2,
            #[cfg(target_arch = "x86_64")]
            Path::F32Fma | Path::Avx2Fma => 5,
        }
    }

    #[test]
    fn fused_rows_match_the_dequantized_dot_products_with_partial_blocks_and_nan_codes() {
        let mut ran = 0;
        // Last blocks of 44 columns (32 and 12) and of 13; UE8M0 scales (2^-6 to 2^-60).
        for t in [
            test_weights(),
            test_weights_of(269, false),
            test_weights_of(300, true),
        ] {
            let (w, r, c) = (t.weights(), t.r, t.c);
            for path in available_paths().into_iter().flatten() {
                for kind in KINDS {
                    for n in 1..=MAX_VECTORS {
                        let act = test_act(kind, n, c);
                        let (first, rows) = (3, 2 * r - 6); // crosses the expert boundary
                        let mut out = vec![0.0; rows * n];
                        // SAFETY: the path is available; the arguments fit.
                        if !unsafe { run(path, &w, first, rows, n, &act, &mut out) } {
                            // Only the bf16 path declines, and only plain f32 activations.
                            #[cfg(target_arch = "x86_64")]
                            assert!(path == Path::Bf16Dot && kind.starts_with("f32"), "{kind}");
                            assert!(out.iter().all(|&v| v == 0.0), "nothing written");
                            continue;
                        }
                        ran += 1;
                        let what = format!("{path:?} {kind} c {c} n {n}");
                        check_out(&w, first, &act, &out, &what);
                    }
                }
            }
        }
        // Every available path ran: 4 counts of each kind it takes, on the 3 weight sets.
        let want: usize = available_paths()
            .into_iter()
            .flatten()
            .map(|p| 3 * 4 * kinds_taken(p))
            .sum();
        assert_eq!(ran, want);
    }

    /// `act` prepared for the native bf16 dot wherever the CPU has it, whether or not it
    /// is this CPU's compute path ([`Prepared::new`] asks that too), for AMX tiles where
    /// `tiles` allows them and the process may use them.
    fn prepared_wherever_available(act: &[f32], c: usize, tiles: bool) -> Option<Prepared> {
        #[cfg(target_arch = "x86_64")]
        {
            let vectors = super::super::dpbf16::Prepared::build(act, c, tiles);
            vectors.map(|vectors| Prepared { vectors })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (act, c, tiles);
            None
        }
    }

    /// Whether [`Prepared::new`] takes AMX tiles in this process.
    fn tiles() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            super::super::dpbf16::available() && moemla_core::amx::enabled()
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    #[test]
    fn prepared_vectors_match_the_dequantized_dot_products_and_refuse_what_does_not_fit() {
        // C 1100 ends in a block of 76 columns (a whole step and a partial one), C 300 in
        // one of 44 (a partial step alone).
        // Weight scales of both kinds: on tiles, groups of rows with one scale row of
        // powers of two keep their sums in the tiles over all columns (with tokens of
        // scale 1, at most 32 of them).
        for pow2 in [false, true] {
            for (c, counts) in [
                (1100, &[1, 5, 7, 8, 13, 18, 24, 25, 32, 33, 48][..]),
                (300, &[8, 18]),
            ] {
                prepared_vectors_at(c, counts, pow2);
            }
        }
        // Plain f32 activations are declined, as are ragged vectors.
        let c = 1100;
        assert!(Prepared::new(&test_act("f32", 3, c), c).is_none());
        assert!(Prepared::new(&test_act("bf16", 3, c)[1..], c).is_none());
    }

    /// [`prepared_vectors_match_the_dequantized_dot_products_and_refuse_what_does_not_fit`]
    /// at `c` columns for each count of vectors.
    fn prepared_vectors_at(c: usize, counts: &[usize], pow2: bool) {
        let t = test_weights_of(c, pow2);
        let (w, r) = (t.weights(), t.r);
        let (first, rows) = (3, 2 * r - 7);
        for kind in ["bf16", "quantized"] {
            // The grid below 8 vectors, the quad kernel from 8: one part (18: groups of
            // 4 and a last one of 2), and two (25 as 13 + 12, 48 as 24 + 24).
            for &n in counts {
                let act = test_act(kind, n, c);
                // Made only where the native bf16 dot is this CPU's compute path, or tiles
                // take the vectors.
                let made = Prepared::new(&act, c).is_some();
                let compute = compute_paths(n)[0].is_some() || tiles();
                assert_eq!(made, compute, "{kind} n {n}");
                // Wherever the CPU has it (Intel cores too), for the checks below: on
                // tiles where they run, and on the grid or quads.
                for on_tiles in [false, true] {
                    let Some(p) = prepared_wherever_available(&act, c, on_tiles) else {
                        continue;
                    };
                    #[cfg(target_arch = "x86_64")]
                    assert_eq!(
                        p.vectors.on_quads(),
                        n >= 8 && !(on_tiles && tiles()),
                        "{kind} n {n}: the quad kernel"
                    );
                    // NaN: an output the kernel leaves unwritten fails the check.
                    let mut out = vec![f32::NAN; rows * n];
                    assert!(rows_times_prepared(&w, first, rows, &p, &mut out));
                    check_out(&w, first, &act, &out, &format!("prepared {kind} n {n}"));
                    // Refused, nothing written: another column count, an output of another
                    // size, rows past the weights.
                    let narrower = Fp8Weights { cols: c - 1, ..w };
                    let mut out = vec![0.0; rows * n];
                    assert!(!rows_times_prepared(&narrower, first, rows, &p, &mut out));
                    assert!(!rows_times_prepared(&w, first, rows, &p, &mut out[1..]));
                    assert!(!rows_times_prepared(
                        &w,
                        2 * r - 1,
                        2,
                        &p,
                        &mut out[..2 * n]
                    ));
                    assert!(out.iter().all(|&v| v == 0.0));
                }
            }
        }
    }

    #[test]
    fn many_vectors_match_the_dequantized_dot_products_on_every_path_at_odd_shapes() {
        // C 1100: the f32 FMA path's column passes of 512 (two whole, one partial with a
        // partial block), the bf16 dot's passes of 8 blocks (one whole, one of the partial
        // block); n from 1 to 17: one to four groups (the bf16 dot's groups of 5 and the
        // FMA paths' of 8: every group size from 1 to 8, 9 = 5 + 4, 17 = 6 + 6 + 5 and
        // 5 + 4 + 4 + 4); an odd row count (the last
        // row alone for the bf16 dot's pairs, a partial last pass of 16 rows for the FMA
        // path) crossing the expert boundary (rows 129 and 130).
        let t = test_weights_of(1100, false);
        let (w, r, c) = (t.weights(), t.r, t.c);
        let (first, rows) = (3, 2 * r - 7);
        let mut ran = 0;
        for path in available_paths().into_iter().flatten() {
            for kind in KINDS {
                for n in [1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 16, 17] {
                    let act = test_act(kind, n, c);
                    // At a 64-byte boundary and 4 bytes past one (the bf16 dot's loads
                    // are unaligned; the FMA path's copy must not depend on it).
                    let mut store = Aligned::try_filled(act.len() + 1, 0.0, "test").unwrap();
                    for skip in [0, 1] {
                        store[skip..skip + act.len()].copy_from_slice(&act);
                        let act = &store[skip..skip + act.len()];
                        let mut out = vec![0.0; rows * n];
                        // SAFETY: the path is available; the arguments fit.
                        if !unsafe { run(path, &w, first, rows, n, act, &mut out) } {
                            // Only the bf16 path declines, and only plain f32 activations.
                            #[cfg(target_arch = "x86_64")]
                            assert!(path == Path::Bf16Dot && kind.starts_with("f32"), "{kind}");
                            assert!(out.iter().all(|&v| v == 0.0), "nothing written");
                            continue;
                        }
                        ran += 1;
                        let what = format!("{path:?} {kind} n {n} skip {}", skip);
                        check_out(&w, first, act, &out, &what);
                    }
                }
            }
        }
        // Every available path ran: 12 counts x 2 placements of each kind it takes.
        let want: usize = available_paths()
            .into_iter()
            .flatten()
            .map(|p| 24 * kinds_taken(p))
            .sum();
        assert_eq!(ran, want);
        // Through the entry point: the paths for compute-bound work, whichever they are
        // on this CPU; only a CPU without any declines.
        let act = test_act("quantized", 9, c);
        let mut out = vec![0.0; rows * 9];
        if rows_times_many(&w, first, rows, &act, &mut out) {
            check_out(&w, first, &act, &out, "rows_times_many");
        } else {
            assert_eq!(compute_paths(9), [None, None, None]);
        }
        // Up to FMA_MAX_VECTORS the FMA path takes them where the bf16 dot does not;
        // past it only the bf16 dot, where it outpaces the FMA.
        for n in [FMA_MAX_VECTORS, FMA_MAX_VECTORS + 1] {
            let act = test_act("quantized", n, c);
            let mut out = vec![0.0; rows * n];
            let took = rows_times_many(&w, first, rows, &act, &mut out);
            assert_eq!(took, compute_paths(n).iter().any(Option::is_some), "n {n}");
            if took {
                check_out(&w, first, &act, &out, &format!("rows_times_many n {n}"));
            } else {
                assert!(out.iter().all(|&v| v == 0.0), "nothing written");
            }
        }
        #[cfg(target_arch = "x86_64")]
        for fma in [1, 2] {
            if available_paths()[fma].is_some() {
                assert!(compute_paths(FMA_MAX_VECTORS)[fma].is_some());
                assert!(compute_paths(FMA_MAX_VECTORS + 1)[fma].is_none());
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

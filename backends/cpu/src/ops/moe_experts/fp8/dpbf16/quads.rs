//! FP8 weight rows times at most [`MAX_ROWS`] prepared vectors (an expert's tokens at
//! prefill) on the quad layout of [`crate::quads`] (4 vectors per register): per tile of
//! weight rows and 128-column block, each row's codes are decoded to bf16 once, into a
//! buffer in L1, however many the vectors (the grid of [`super::many`] decodes a row
//! again for every group of [`super::GRID_VECTORS`]); each 16-byte piece of them is
//! broadcast against 4 vectors per `VDPBF16PS` ([`quads::steps`]). Each sum takes 16
//! instructions (32 products per f32 element) of a block before the block's scaling
//! (one multiply-add, [`add_scaled`]); in the grid, with columns across the elements, a
//! block is 4 instructions per sum.

use super::prepared::View;
use super::{add_scaled, codes_at, decode, Tables, STEP};
use crate::aligned::Aligned;
use crate::ops::moe_experts::fp8::Fp8Weights;
use crate::quads::{self, Bf16, Kind, MAX_GROUPS, MAX_ROWS, TILE_ROWS};
use moemla_core::fp8::BLOCK;
use std::arch::x86_64::*;

/// Vectors per group: one per 128-bit lane of a register.
const ROWS: usize = Bf16::ROWS;

/// 16-byte pieces (8 columns) per [`STEP`] of 64 columns.
const PIECES: usize = STEP / 8;

/// Fewest vectors that take [`multiply`]; fewer take the grid ([`super::many`]). One core
/// of a 2-core Zen 5, 7168-column rows, GFLOP/s (this kernel / the grid), rows in L2 and
/// streamed from memory: 6 vectors 222/268 and 216/220, 8 vectors 290/302 and 279/242,
/// 12 vectors 365/296 and 347/272, 16 vectors 431/292 and 395/260, 24 vectors 425/197
/// and 377/182; in parts, 48 vectors 389/204 and 360/216, 96 vectors 384/192 and 372/214.
pub const MIN_VECTORS: usize = 8;

/// Prepared vectors `first..first + n` of a call's `out_cols` in groups of 4: per piece of
/// 8 columns (in the prepared words' order within each 64 columns, the order [`decode`]
/// gives the codes), each group's 4 vectors' 8 bf16 as u32 pairs, `[ceil(k / 64) *
/// 8][groups][4][4]`; where the vectors carry scales, per 128-column block and group the
/// 4 vectors' scales, each over its lane's 4 f32 elements, `[blocks][groups][16]` (empty
/// when all are 1).
#[derive(Debug)]
pub struct QuadForm {
    words: Aligned<u32>,
    scales: Vec<f32>,
    first: usize,
    n: usize,
    /// The call's vector count: the length of an output row.
    out_cols: usize,
}

impl QuadForm {
    /// The `view`'s vectors of `k` columns as near-equal parts of at most [`MAX_ROWS`],
    /// each in groups of 4; `None` for fewer than [`MIN_VECTORS`] or where the memory is
    /// not there.
    ///
    /// # Safety
    /// `view` points at `view.n` prepared vectors of `k` columns (words and scales).
    pub(super) unsafe fn parts(view: View, k: usize) -> Option<Vec<Self>> {
        if view.n < MIN_VECTORS {
            return None;
        }
        let parts = view.n.div_ceil(MAX_ROWS);
        let mut first = 0;
        (0..parts)
            .map(|i| {
                let n = (view.n - first).div_ceil(parts - i);
                first += n;
                // SAFETY: as this function's contract; vectors first - n..first exist.
                unsafe { Self::new(view, k, first - n, n) }
            })
            .collect()
    }

    /// The `view`'s vectors `first..first + n` (`n` in 1..=[`MAX_ROWS`]); `None` where
    /// the memory is not there.
    ///
    /// # Safety
    /// `view` points at `view.n` prepared vectors of `k` columns (words and scales), and
    /// `first + n <= view.n`.
    unsafe fn new(view: View, k: usize, first: usize, n: usize) -> Option<Self> {
        debug_assert!((1..=MAX_ROWS).contains(&n) && first + n <= view.n);
        let out_cols = view.n;
        let (groups, steps) = (n.div_ceil(ROWS), k.div_ceil(STEP));
        let len = steps.checked_mul(PIECES * groups * 16)?;
        let mut words = Aligned::try_filled(len, 0u32, "fp8 quad form").ok()?;
        for s in 0..steps {
            for j in 0..n {
                // SAFETY: vector first + j's 64 words of step s are at
                // (s * out_cols + first + j) * 64.
                let at = (s * out_cols + first + j) * STEP;
                let src = std::slice::from_raw_parts(view.words.add(at), STEP);
                for (p, piece) in src.chunks_exact(8).enumerate() {
                    let at = ((s * PIECES + p) * groups + j / ROWS) * 16 + j % ROWS * 4;
                    for (d, pair) in words[at..at + 4].iter_mut().zip(piece.chunks_exact(2)) {
                        *d = u32::from(pair[0]) | u32::from(pair[1]) << 16;
                    }
                }
            }
        }
        let mut scales = Vec::new();
        if !view.unit {
            let len = k.div_ceil(BLOCK).checked_mul(groups * 16)?;
            scales.try_reserve_exact(len).ok()?;
            for b in 0..k.div_ceil(BLOCK) {
                for j in 0..groups * ROWS {
                    // SAFETY: vector first + j's scale of block b is at b * out_cols +
                    // first + j (j < n).
                    let s = if j < n {
                        *view.scales.add(b * out_cols + first + j)
                    } else {
                        1.0
                    };
                    scales.extend([s; ROWS]);
                }
            }
        }
        Some(QuadForm {
            words,
            scales,
            first,
            n,
            out_cols,
        })
    }

    /// Groups of 4 vectors (the last one partly live).
    fn groups(&self) -> usize {
        self.n.div_ceil(ROWS)
    }
}

/// `out[r * q.out_cols + j] = W[first + r] . v_j` for the vectors `j` of `q` (of the
/// call's `q.out_cols`), with the weights' block scales and the vectors' (where `q` has them).
///
/// # Safety
/// [`super::available`]; `q` holds vectors of `w.cols` columns; rows `first..first +
/// rows` of `w` and their scale rows, and `rows * q.out_cols` outputs, exist.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx512bf16")]
pub(super) unsafe fn multiply(
    w: &Fp8Weights<'_>,
    first: usize,
    rows: usize,
    q: &QuadForm,
    out: &mut [f32],
) {
    debug_assert!(out.len() >= rows * q.out_cols);
    let at = (w, first, rows, q, out.as_mut_ptr());
    if q.scales.is_empty() {
        by_groups::<true>(q.groups(), at);
    } else {
        by_groups::<false>(q.groups(), at);
    }
}

/// [`tiles`] for the vectors' `groups`; `UNIT`: they carry no scales.
///
/// # Safety
/// As [`multiply`]; `groups` is the vectors'.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx512bf16")]
unsafe fn by_groups<const UNIT: bool>(groups: usize, at: At<'_, '_>) {
    match groups {
        1 => tiles::<{ TILE_ROWS[0] }, 1, UNIT>(at),
        2 => tiles::<{ TILE_ROWS[1] }, 2, UNIT>(at),
        3 => tiles::<{ TILE_ROWS[2] }, 3, UNIT>(at),
        4 => tiles::<{ TILE_ROWS[3] }, 4, UNIT>(at),
        5 => tiles::<{ TILE_ROWS[4] }, 5, UNIT>(at),
        _ => tiles::<{ TILE_ROWS[MAX_GROUPS - 1] }, MAX_GROUPS, UNIT>(at),
    }
}

/// [`multiply`]'s arguments: the weights, the first row, the row count, the vectors and
/// the outputs.
type At<'a, 'w> = (&'a Fp8Weights<'w>, usize, usize, &'a QuadForm, *mut f32);

/// [`multiply`] for `G` groups, `MR` rows at a time (rows past the last repeat it; their
/// sums are not stored); `UNIT`: the vectors carry no scales.
///
/// # Safety
/// As [`multiply`], `q.groups() == G`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx512bf16")]
#[allow(clippy::needless_range_loop)]
unsafe fn tiles<const MR: usize, const G: usize, const UNIT: bool>(
    (w, first, rows, q, out): At<'_, '_>,
) {
    debug_assert_eq!(q.groups(), G);
    let (k, n, ldo) = (w.cols, q.n, q.out_cols);
    let tables = Tables::load();
    let stride = G * 16;
    // Two buffers: the next block's rows are decoded into one while the other's meet
    // the vectors (a block's broadcasts then load what was stored an iteration earlier,
    // not what the stores just before them are still writing).
    let mut decoded = [[[0u16; BLOCK]; MR]; 2];
    let blocks = k.div_ceil(BLOCK);
    let mut r = 0;
    while r < rows {
        let live = (rows - r).min(MR);
        let stored: [(&[u8], &[f32]); MR] =
            std::array::from_fn(|i| w.row(first + r + i.min(live - 1)));
        let codes = stored.map(|(c, _)| c.as_ptr());
        let scales = stored.map(|(_, s)| s.as_ptr());
        let mut total = [[_mm512_setzero_ps(); G]; MR];
        decode_block(&tables, codes, k, 0, &mut decoded[0]);
        for b in 0..blocks {
            if b + 1 < blocks {
                decode_block(&tables, codes, k, b + 1, &mut decoded[(b + 1) % 2]);
            }
            let live_steps = (k - b * BLOCK).min(BLOCK).div_ceil(STEP);
            let mut acc = [[_mm512_setzero_ps(); G]; MR];
            let wp: [*const u16; MR] = std::array::from_fn(|i| decoded[b % 2][i].as_ptr());
            // SAFETY: the block's pieces (8 per step of 64 columns, zero past k) hold the
            // G groups from piece 16b; each row's decoded words of its live steps are
            // written (`decode_block`).
            let xq = q.words.as_ptr().add(b * BLOCK / 8 * stride);
            let pieces = (0, live_steps * PIECES);
            quads::steps::<Bf16, MR, G, false>(&mut acc, &wp, (xq, stride), pieces, 0);
            for i in 0..MR {
                let ws = _mm512_set1_ps(*scales[i].add(b));
                for g in 0..G {
                    // The vectors' scales exist unless UNIT (`add_scaled` calls `act` only
                    // then).
                    let act = || _mm512_loadu_ps(q.scales.as_ptr().add((b * G + g) * 16));
                    total[i][g] = add_scaled::<UNIT>(total[i][g], acc[i][g], ws, act);
                }
            }
        }
        for i in 0..live {
            for g in 0..G {
                let cols = n.saturating_sub(g * ROWS).min(ROWS);
                if cols > 0 {
                    // SAFETY: output row r + i < rows, its vectors q.first + 4g .. + cols
                    // within the call's `ldo`.
                    let o = out.add((r + i) * ldo + q.first + g * ROWS);
                    quads::store_sums::<Bf16>(total[i][g], o, cols, false);
                }
            }
        }
        r += live;
    }
}

/// Decodes block `b` (128 columns, fewer at the end of a row of `k`) of the `MR` rows at
/// `codes` into `into` (bf16 in [`decode`]'s order per 64 columns; zero past `k`), and
/// prefetches the same block of the rows `MR` on (the next tile's) into L2.
///
/// # Safety
/// As [`tiles`]: each row holds `k` codes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx512bf16")]
#[inline]
unsafe fn decode_block<const MR: usize>(
    tables: &Tables,
    codes: [*const u8; MR],
    k: usize,
    b: usize,
    into: &mut [[u16; BLOCK]; MR],
) {
    let c = b * BLOCK;
    let cols = (k - c).min(BLOCK);
    for (row, d) in codes.iter().zip(into.iter_mut()) {
        // A hint, never a fault, past the last row too.
        let ahead = row.wrapping_add(MR * k + c);
        _mm_prefetch::<_MM_HINT_T1>(ahead.cast());
        _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64).cast());
        let d = d.as_mut_ptr();
        for at in (0..cols).step_by(STEP) {
            // SAFETY: codes c + at.. of the row up to the `cols - at` left in the block
            // exist (masked past them); `d` holds the block's 128 words.
            let (lo, hi) = decode(tables, codes_at(row.add(c + at), cols - at));
            _mm512_storeu_si512(d.add(at).cast(), lo);
            _mm512_storeu_si512(d.add(at + 32).cast(), hi);
        }
    }
}

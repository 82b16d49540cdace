//! FP8 weight rows times an expert's prepared tokens on AMX tiles ([`crate::tiles`]),
//! where this process may use them: per group of up to 32 weight rows and 128-column
//! block, the rows' codes are decoded to bf16 once ([`super::decode`], exact) into a
//! buffer in L1, which is the `a` of the tile products against every token; each block's
//! sums are then scaled as the other kernels scale them ([`super::add_scaled`]: the
//! weights' block scale, then the tokens'). The codes stay in the order `decode` gives
//! them within each 64 columns, and the tokens are packed in pairs in that same order
//! ([`TileForm::new`]), so the products pair each code with its token value.
//!
//! Where a group's rows share one scale row of powers of two (UE8M0 scales, as
//! DeepSeek-V3.1's checkpoints have them) and at most 32 tokens of scale 1 meet them,
//! each block's scale goes into its decoded values instead (exact: an e4m3 value times
//! a power of two from 2^-117 to 2^119 is a normal bf16, [`super::pow2_exponent`]) and
//! the sums stay in the accumulator tiles over all of `k` ([`group_whole`]): no block's
//! sums leave the tiles to be scaled. Intel Xeon with AMX, 2 cores, `moemla bench
//! --backend cpu --op moe_experts --filter "T=256 H=7168 I=2048 E=256"`: w8a16 and w8a8
//! at T=256 1.02-1.08 s with UE8M0 scales against 1.39-1.53 s with f32 scales, the same
//! codes (0.83-0.90 s and 1.25-1.32 s with the prefetch distance of [`PREFETCH_BLOCKS`];
//! 0.97-1.03 s with f32 scales once each block's scaled sums add into whole-width
//! [`Totals`] instead of masked rows of the output).

use super::prepared::View;
use super::{codes_at, decode, pow2_exponent, Tables, STEP};
use crate::aligned::{Aligned, Lined};
use crate::ops::moe_experts::fp8::Fp8Weights;
use crate::tiles::{config, Steps, COLS, ROWS, ROW_BYTES};
use moemla_core::amx::{self, store};
use moemla_core::fp8::BLOCK;
use std::arch::x86_64::*;

/// bf16 words (columns) per tile step: one 64-byte tile row.
const TILE_STEP: usize = ROW_BYTES / 2;
/// Weight rows per group: two row tiles.
const GROUP: usize = 2 * ROWS;
/// Blocks ahead of the one decoded that each row's codes are prefetched (into L2): a
/// group reads 32 rows side by side, 128 bytes of each per block. One core, 7168-column
/// rows streamed from memory, 8 tokens, GB/s of codes (a one-off probe, alternated): 2
/// blocks ahead 7.3-8.0 (power-of-two scales) and 4.4-5.0 (f32 scales), 3 blocks about
/// the same, 1 block 5.6-6.0 and 3.9-4.2, 8192 bytes ahead (the row-at-a-time kernels'
/// distance, which here lands in the next row) 6.2-6.5 and 4.0-4.2.
const PREFETCH_BLOCKS: usize = 2;

/// An expert's prepared tokens as tiles read them: each token's words (in the order of
/// [`View`]: within each 64 columns as `decode` orders codes) in pairs, `[pairs][n_pad]`
/// u32 with `n_pad` the tokens rounded up to 16 (zeros past them and past `k`), and the
/// per-block scales `[blocks][n]`.
#[derive(Debug)]
pub struct TileForm {
    pairs: Aligned<u32>,
    scales: Vec<f32>,
    unit: bool,
    n: usize,
    n_pad: usize,
}

impl TileForm {
    /// The `view`'s `n` vectors of `k` columns in pairs; `None` where the memory is not
    /// there.
    ///
    /// # Safety
    /// `view` points at `n` prepared vectors of `k` columns (words `[ceil(k / 64)][n][64]`,
    /// scales `[ceil(k / 128)][n]`).
    pub(super) unsafe fn new(view: View, k: usize) -> Option<TileForm> {
        let (n, steps) = (view.n, k.div_ceil(STEP));
        let n_pad = n.div_ceil(COLS) * COLS;
        let len = steps.checked_mul(STEP / 2)?.checked_mul(n_pad)?;
        let mut pairs = Aligned::try_filled(len, 0u32, "fp8 tile token pairs").ok()?;
        for s in 0..steps {
            for j in 0..n {
                // SAFETY: step s of vector j: 64 words inside the view.
                let w =
                    unsafe { std::slice::from_raw_parts(view.words.add((s * n + j) * STEP), STEP) };
                for (i, pair) in w.chunks_exact(2).enumerate() {
                    pairs[(s * STEP / 2 + i) * n_pad + j] =
                        u32::from(pair[0]) | u32::from(pair[1]) << 16;
                }
            }
        }
        let blocks = k.div_ceil(BLOCK);
        let mut scales = Vec::new();
        scales.try_reserve_exact(blocks * n).ok()?;
        // SAFETY: the view holds blocks * n scales.
        scales.extend_from_slice(unsafe { std::slice::from_raw_parts(view.scales, blocks * n) });
        Some(TileForm {
            pairs,
            scales,
            unit: view.unit,
            n,
            n_pad,
        })
    }
}

/// `out[r * n + j] = W[first + r] . x_j` for the form's `n` tokens: groups of 32 weight
/// rows (then 16, then the last `rows % 16` with a configuration of that many), each
/// 128-column block decoded once and multiplied with every token (blocks of 32 tokens,
/// then 16), its sums scaled into the group's [`Totals`] (or, UE8M0 scales:
/// [`group_whole`], its scale in its decoded values and the sums kept in the tiles), which
/// are written to `out` at the end of the group. Returns false (nothing written) where the
/// memory for the totals is not there.
///
/// # Safety
/// [`super::available`] and [`amx::enabled`] must hold; rows `first..first + rows` of
/// `w.cols` codes and their scale rows must exist, `t` must hold tokens of `w.cols`, and
/// `out` is `rows * t.n` long.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx512bf16")]
pub(super) unsafe fn multiply(
    w: &Fp8Weights<'_>,
    first: usize,
    rows: usize,
    t: &TileForm,
    out: &mut [f32],
) -> bool {
    let Some(mut totals) = Totals::new(t.n_pad) else {
        return false;
    };
    let whole = rows / ROWS * ROWS;
    // SAFETY (all below): as this function's contract; every group's rows exist.
    unsafe {
        config(ROWS).load();
        let mut r = 0;
        while r + GROUP <= whole {
            group::<2>(w, first + r, ROWS, t, &mut totals, &mut out[r * t.n..]);
            r += GROUP;
        }
        if r < whole {
            group::<1>(w, first + r, ROWS, t, &mut totals, &mut out[r * t.n..]);
            r += ROWS;
        }
        if r < rows {
            config(rows - r).load();
            group::<1>(w, first + r, rows - r, t, &mut totals, &mut out[r * t.n..]);
        }
        amx::release();
    }
    true
}

/// A group's running f32 outputs while its blocks' scaled sums are added, `[32 rows]
/// [n_pad]`: every token column tile whole, so that each addition is a full-width load
/// and store. Adding into `out` itself (`[rows][n]`) took masked loads and stores wherever
/// `n` is not a multiple of 16, which held the kernel to three quarters of its speed at
/// 8 tokens (one core, 7168-column rows streamed from memory, f32 scales: 4.6 GB/s of
/// codes against 5.8-6.1 with these totals, and 6.0-6.1 at 16 tokens either way).
struct Totals {
    sums: Aligned<f32>,
    n_pad: usize,
}

impl Totals {
    /// Zeroed totals for a group against `n_pad` token columns; `None` where the memory
    /// is not there.
    fn new(n_pad: usize) -> Option<Totals> {
        let sums = Aligned::try_filled(GROUP.checked_mul(n_pad)?, 0.0, "fp8 tile totals").ok()?;
        Some(Totals { sums, n_pad })
    }

    /// Writes the first `rows` rows' first `n` columns to `out` (`[rows][n]`) and zeroes
    /// the totals for the next group.
    fn write_out(&mut self, rows: usize, n: usize, out: &mut [f32]) {
        for (o, s) in out
            .chunks_exact_mut(n)
            .zip(self.sums.chunks_exact(self.n_pad))
            .take(rows)
        {
            o.copy_from_slice(&s[..n]);
        }
        self.sums.fill(0.0);
    }
}

/// `R` row tiles of `rows` rows each (the loaded configuration's) from weight row `row`
/// against every token, block by block, written to `out` (`[R * rows, n]`); rows that
/// share one scale row of powers of two against at most 32 tokens of scale 1 go to
/// [`group_whole`] instead. Software pipelined, so that the vector units work while the
/// tile unit multiplies: each block of tokens' products is issued, then the previous
/// block's sums are scaled into `totals` (read back from memory, which waits for their
/// tile stores: [`scale_into`]), then its own sums stored; the next 128 columns are
/// decoded (into the other buffer) right after the last products of a block are issued.
///
/// # Safety
/// As [`multiply`]; the configuration has `rows` rows per tile, `R * rows` rows from
/// `row` exist, and `totals` are zero, for the form's `n_pad`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx512bf16")]
unsafe fn group<const R: usize>(
    w: &Fp8Weights<'_>,
    row: usize,
    rows: usize,
    t: &TileForm,
    totals: &mut Totals,
    out: &mut [f32],
) {
    let k = w.cols;
    let blocks = k.div_ceil(BLOCK);
    let live_rows = R * rows;
    let stored: [(&[u8], &[f32]); GROUP] =
        std::array::from_fn(|i| w.row(row + i.min(live_rows - 1)));
    let codes = &stored[..live_rows];
    let end = t.n.div_ceil(COLS) * COLS;
    // One scale row for the whole group (its rows within one 128-row block), every scale
    // a power of two, tokens of scale 1 that fit the accumulators: each block's scale
    // goes into its decoded values, and the sums stay in the tiles over all of k.
    let scales = codes[0].1;
    let whole = t.unit
        && end <= 2 * COLS
        && codes
            .iter()
            .all(|(_, s)| std::ptr::eq(s.as_ptr(), scales.as_ptr()))
        && scales.iter().all(|&s| pow2_exponent(s).is_some());
    if whole {
        // SAFETY: as this function's contract; the checks above.
        unsafe {
            match end / COLS {
                2 => group_whole::<R, 2>(codes, rows, t, out),
                _ => group_whole::<R, 1>(codes, rows, t, out),
            }
        }
        return;
    }
    // Each row's block of codes, decoded (128 words a row), for two blocks in turn.
    let mut decoded = [Lined([0u16; GROUP * BLOCK]); 2];
    // Two blocks of tokens' sums in turn: [tile][16 rows][16].
    let mut sums = [Lined([0.0f32; 4 * 256]); 2];
    let mut pending: Option<Sums> = None;
    // SAFETY (all below): the rows, their codes and scale rows exist; each block's words
    // are decoded before its products read them, and the products stay within the form
    // (block b's pair rows, columns below `end`).
    unsafe {
        let tables = Tables::load();
        decode_block(&tables, codes, k, 0, &mut decoded[0].0);
        for b in 0..blocks {
            let live = (k - b * BLOCK).min(BLOCK);
            let [Lined(even), Lined(odd)] = &mut decoded;
            let (dec, next) = if b % 2 == 0 { (even, odd) } else { (odd, even) };
            let mut c0 = 0;
            while c0 < end {
                let cols = if c0 + 2 * COLS <= end { 2 } else { 1 };
                let st = block_steps(dec, t, (b, live), c0);
                match cols {
                    2 => crate::tiles::products::<R, 2>(&st),
                    _ => crate::tiles::products::<R, 1>(&st),
                }
                if c0 + cols * COLS >= end && b + 1 < blocks {
                    decode_block(&tables, codes, k, b + 1, next);
                }
                let slot = pending.map_or(0, |p| 1 - p.slot);
                if let Some(p) = pending {
                    scale_into(codes, rows, t, p, &sums[p.slot].0, totals);
                }
                match cols {
                    2 => store_sums::<R, 2>(&mut sums[slot].0),
                    _ => store_sums::<R, 1>(&mut sums[slot].0),
                }
                pending = Some(Sums {
                    block: b,
                    c0,
                    cols,
                    slot,
                });
                c0 += cols * COLS;
            }
        }
        if let Some(p) = pending {
            scale_into(codes, rows, t, p, &sums[p.slot].0, totals);
        }
    }
    totals.write_out(live_rows, t.n, out);
}

/// [`group`] for rows that share one scale row of powers of two ([`pow2_exponent`])
/// against at most `16 C` tokens of scale 1: each block decoded with its scale in the
/// values (exact), its products added onto the `R x C` accumulator tiles, which hold
/// every block's sums until they are written to `out` (overwritten) at the end; the next
/// block is decoded while the tile unit multiplies.
///
/// # Safety
/// As [`group`]; every row of `codes` has the scale row of the first, each of its first
/// `ceil(k / 128)` scales is a power of two [`pow2_exponent`] takes, the tokens' scales
/// are all 1 and there are at most `16 C` of them.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx512bf16")]
unsafe fn group_whole<const R: usize, const C: usize>(
    codes: &[(&[u8], &[f32])],
    rows: usize,
    t: &TileForm,
    out: &mut [f32],
) {
    let k = codes[0].0.len();
    let blocks = k.div_ceil(BLOCK);
    let scales = codes[0].1;
    // Block b's exponent (the caller checked that `pow2_exponent` takes every scale: the
    // default is never used), and the tables for the latest one (blocks often share it).
    let exponent = |b: usize| pow2_exponent(scales[b]).unwrap_or_default();
    let mut tables = (exponent(0), Tables::scaled(exponent(0)));
    let mut decoded = [Lined([0u16; GROUP * BLOCK]); 2];
    // SAFETY (all below): the rows, their codes and scale rows exist; each block's words
    // are decoded before its products read them, and the products stay within the form
    // (block b's pair rows, the first 16 C columns).
    unsafe {
        decode_block(&tables.1, codes, k, 0, &mut decoded[0].0);
        crate::tiles::zero_sums::<R, C>();
        for b in 0..blocks {
            let live = (k - b * BLOCK).min(BLOCK);
            let [Lined(even), Lined(odd)] = &mut decoded;
            let (dec, next) = if b % 2 == 0 { (even, odd) } else { (odd, even) };
            crate::tiles::steps::<R, C>(&block_steps(dec, t, (b, live), 0));
            if b + 1 < blocks {
                let e = exponent(b + 1);
                if e != tables.0 {
                    tables = (e, Tables::scaled(e));
                }
                decode_block(&tables.1, codes, k, b + 1, next);
            }
        }
        let mut sums = Lined([0.0f32; 4 * 256]);
        store_sums::<R, C>(&mut sums.0);
        for (i, o) in out.chunks_exact_mut(t.n).take(codes.len()).enumerate() {
            for (j, o) in o.iter_mut().enumerate() {
                *o = sums.0[sum_at(i, rows, j / COLS) + j % COLS];
            }
        }
    }
}

/// Block `block`'s sums against the tokens from column `c0` (`cols` column tiles), in
/// buffer `slot`.
#[derive(Clone, Copy)]
struct Sums {
    block: usize,
    c0: usize,
    cols: usize,
    slot: usize,
}

/// The 128-column block `b` of each row of `codes` (its first `min(128, k - 128 b)`
/// codes) decoded through `tables` into `into`, 128 words a row, in [`decode`]'s order
/// per 64 columns; each row's codes [`PREFETCH_BLOCKS`] blocks on prefetched into L2.
///
/// # Safety
/// AVX-512F/BW and VBMI must be available; each row of `codes` holds `k` codes and at
/// most 32 rows are given.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn decode_block(
    tables: &Tables,
    codes: &[(&[u8], &[f32])],
    k: usize,
    b: usize,
    into: &mut [u16; GROUP * BLOCK],
) {
    let c = b * BLOCK;
    let live = (k - c).min(BLOCK);
    for (i, (row, _)) in codes.iter().enumerate() {
        let p = row.as_ptr();
        // A hint, never a fault (wrapping arithmetic, no in-bounds claim).
        let ahead = c + PREFETCH_BLOCKS * BLOCK;
        _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(ahead).cast());
        _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(ahead + 64).cast());
        for h in 0..live.div_ceil(STEP) {
            // SAFETY: codes c + 64h.. of this row, at most `live - 64h` of them, exist;
            // row i of `into` holds 128 words (i < 32).
            unsafe {
                let (lo, hi) = decode(tables, codes_at(p.add(c + h * STEP), live - h * STEP));
                let d = into.as_mut_ptr().add(i * BLOCK + h * STEP);
                _mm512_storeu_si512(d.cast(), lo);
                _mm512_storeu_si512(d.add(TILE_STEP).cast(), hi);
            }
        }
    }
}

/// `totals[i][j] += sums[i][j] * ws_i (* xs_j)` for the rows of `codes` and the column
/// tiles of `s`: its block's sums scaled by each row's weight scale, then the tokens'
/// scale (unless every one is 1: [`super::add_scaled`]'s arithmetic; columns past the
/// tokens add zeros).
///
/// # Safety
/// AVX-512F must be available; `totals` are for the form's `n_pad`, `s` lies within it,
/// and at most 32 rows are given; rows below `rows` are in the first row tile of `sums`,
/// the rest in the second.
#[target_feature(enable = "avx512f")]
unsafe fn scale_into(
    codes: &[(&[u8], &[f32])],
    rows: usize,
    t: &TileForm,
    s: Sums,
    sums: &[f32; 4 * 256],
    totals: &mut Totals,
) {
    for (i, (_, scales)) in codes.iter().enumerate() {
        let ws = _mm512_set1_ps(scales[s.block]);
        for u in 0..s.cols {
            let j0 = s.c0 + u * COLS;
            let at = sum_at(i, rows, u);
            // SAFETY: 16 sums from `at` lie in `sums`; columns j0..j0 + 16 of row i (< 32)
            // of the totals exist (j0 + 16 <= n_pad), and so do the block's token scales
            // at the columns below n the mask keeps.
            unsafe {
                let sum = _mm512_loadu_ps(sums.as_ptr().add(at));
                let o = totals.sums.as_mut_ptr().add(i * totals.n_pad + j0);
                let total = _mm512_loadu_ps(o);
                let total = if t.unit {
                    _mm512_fmadd_ps(sum, ws, total)
                } else {
                    let m = crate::lanes::first16(t.n.saturating_sub(j0));
                    let xs = t.scales.as_ptr().add(s.block * t.n + j0);
                    _mm512_fmadd_ps(_mm512_mul_ps(sum, ws), _mm512_maskz_loadu_ps(m, xs), total)
                };
                _mm512_storeu_ps(o, total);
            }
        }
    }
}

/// The tile steps of block `b` (its first `live` columns, in whole 64-column steps) of
/// `decoded` against the form's tokens from column `c0`: row tile r of the decoded block
/// at 16 r rows of 256 bytes, pair row `b * 64` of the form at `b * 64 * n_pad + c0`
/// words.
///
/// # Safety
/// `b` is a block of the form's `k` columns, `live` at most its columns, and `c0` below
/// the form's `n_pad`.
#[inline(always)]
unsafe fn block_steps(
    decoded: &[u16; GROUP * BLOCK],
    t: &TileForm,
    (b, live): (usize, usize),
    c0: usize,
) -> Steps {
    Steps {
        a: decoded.as_ptr().cast(),
        lda: BLOCK * 2,
        a_tile: ROWS * BLOCK * 2,
        // SAFETY: as this function's contract: pair row b * 64, column c0 are in the form.
        b: unsafe { t.pairs.as_ptr().add(b * (BLOCK / 2) * t.n_pad + c0).cast() },
        ldb: t.n_pad * 4,
        steps: live.div_ceil(STEP) * (STEP / TILE_STEP),
    }
}

/// Where row `i` of a group (`rows` per row tile) and column tile `u` start in the sums
/// [`store_sums`] stores: `[tile][16 rows][16]`, tile `2r + u` for row tile `r`.
fn sum_at(i: usize, rows: usize, u: usize) -> usize {
    (i / rows * 2 + u) * 256 + i % rows * COLS
}

/// Stores the `R x C` accumulator tiles into `sums` (`[tile][16 rows][16]`, tile
/// `2r + c`).
///
/// # Safety
/// A configuration from [`config`] is loaded, with the tiles' products issued
/// ([`crate::tiles::products`] or [`crate::tiles::steps`]).
#[inline(always)]
unsafe fn store_sums<const R: usize, const C: usize>(sums: &mut [f32; 4 * 256]) {
    let o = sums.as_mut_ptr();
    // SAFETY: each tile is at most 16 rows of 64 bytes, stored into its 1 KiB of `sums`.
    unsafe {
        store::<0>(o.cast(), ROW_BYTES);
        if C == 2 {
            store::<1>(o.add(256).cast(), ROW_BYTES);
        }
        if R == 2 {
            store::<2>(o.add(512).cast(), ROW_BYTES);
            if C == 2 {
                store::<3>(o.add(768).cast(), ROW_BYTES);
            }
        }
    }
}

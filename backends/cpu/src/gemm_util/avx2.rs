//! [`super::matmul_nt_packed`] on AVX2 + FMA, for x86 CPUs without AVX-512 (AMD Zen 2/3,
//! Intel client cores): `b` transposed ([`pack`]: each column of `b`'s rows side by side,
//! padded to whole registers), so that one register holds one column of 8 rows of `b`; a
//! value of `a` is broadcast against 1 to 3 such registers, into accumulators that are the
//! output itself (8 consecutive outputs of one row of `a`, no horizontal sums). Tiles of
//! 12 rows x 1 group of 8, 6 x 2 or 3 x 3: 12 or 9 accumulators, the registers of `b` and
//! one broadcast in the 16 registers. The last 1 to [`REST_DOTS_MAX`] rows of `b` past
//! whole groups are not padded into a group of their own (where up to 7 of its 8 lanes
//! would be zeros multiplied like the rest) but taken by dot products, 8 columns per FMA,
//! on each block of rows of `a` the tiles just read: the experts op at V2-Lite shapes,
//! T=256 (15 to 34 tokens per expert; a harness, best of 8 calls, builds alternated on a
//! 2-core Zen 3), f32 194.6-205.4 against 216.6-227.0 ms, bf16 191.2-194.4 against
//! 206.7-207.3 ms; H=7168 T=64 (16 experts, 26 to 39 tokens each) f32 316.8-320.1
//! against 353.2-372.9 ms.
//!
//! Rows of `a` other than f32 are converted a block of [`MR`] rows of a pass at a time,
//! just before the block's tiles, into rows one cache line longer than the pass ([`PAD`]).
//! f32 rows are read in place where the tiles have at most 6 rows (the packed rows of `b`,
//! past those taken by dot products, fill more than one register), and copied into that
//! block where they have 12: in place they lie a multiple of 4 KiB apart at DeepSeek's
//! widths (2048 and 7168 values), as rows copied at the pass's width ([`KC`]) would, so a
//! tile's 12 rows fell in one L1 set (8 ways) and evicted each other. 3 or 6 rows fit a
//! set, and the copy cost more than it saved ([`f32_in_place`]). `b` is transposed rather
//! than packed group after group for the same reason (groups `k * 32` bytes apart). While a
//! block's first chunk of tiles runs, each tile prefetches its rows' columns of the next
//! block into L2: the experts op at V2-Lite shapes, T = 256 (a harness, best of 8 calls,
//! builds alternated on a 2-core Zen 3), f32 241-269 ms with the prefetch and 269-291 ms
//! without, bf16 210-220 and 233-240 ms.
//!
//! It replaces the `gemm` crate on these CPUs, which packed both operands of every
//! product (and took weights of other types converted to f32 first): in the same
//! harness, 246-284 ms for f32 and 280-301 ms for bf16. One product of 512 weight rows
//! of 2048 (read from memory) against 24 packed rows, one thread, best of 30: bf16 rows
//! 75 against 49-52 GFLOP/s, f32 rows 64-66 against 61-62 GFLOP/s (passes of 2048
//! columns, no prefetch).

use super::{Prefetch, NO_PREFETCH};
use crate::gemv::avx2::{cached_f32_dots, Walk};
use crate::storage::FloatSlice;
use std::arch::x86_64::*;

/// f32 lanes of one AVX2 register: rows of `b` per packed group.
pub const LANES: usize = 8;

/// Rows of `a` per block: converted together (types other than f32) and met by every
/// chunk of groups; a multiple of each tile's rows ([`tile_rows`]).
pub const MR: usize = 12;

/// Columns of `k` per pass: a block's rows of `a` (12 x 1024 f32, 48 KiB), the pass's
/// columns of `b` (1024 x 32 f32, 128 KiB, at 32 rows) and the next block's rows being
/// prefetched stay in L2 (512 KiB on Zen 3) while the block's tiles run over them, and
/// each pass reads the weights in runs of 2 to 4 KiB per row. The experts op on a 2-core
/// Zen 3 (a harness, best of 8 calls, two builds alternated), 1024 against 2048
/// columns: H=7168 T=64 bf16 382-403 vs 403-432 ms, f32 384-438 vs 410-455 ms; V2-Lite
/// T=256 no different beyond the noise. Passes of 256 columns (with the rows in place
/// before [`PAD`]) were slower from memory in the module doc's measurement: f32 and bf16
/// rows 46 and 64 GFLOP/s, against 54 and 70 at 2048.
pub const KC: usize = 1024;

/// Whether [`gemm_nt`] reads f32 rows of `a` in place: against more than one register
/// of packed rows of `b` (`groups` > 1), whose tiles take 6 or 3 rows. The experts op
/// at V2-Lite shapes (a harness, best of 8 calls, builds alternated on a 2-core Zen 3),
/// f32, in place against copied: T=256 (15 to 34 tokens per expert) 199.0-206.4 against
/// 231.0-240.7 ms, T=160 137.4-137.5 against 157.6-161.2 ms, T=80 (7.5 tokens per
/// expert on average) 114.7-118.5 against 119.5-123.9 ms; H=7168 T=64 (26 to 39 tokens
/// per expert) 353.5-355.4 against 377.0-378.7 ms. With tiles of 12 rows read in place
/// too, T=80 was slower: 129.7-136.2 against 117.3-120.9 ms.
fn f32_in_place(groups: usize) -> bool {
    groups > 1
}

/// f32 values past each row of a block (one cache line): rows `kc` apart would lie a
/// multiple of 4 KiB apart at whole passes, all in one L1 set.
const PAD: usize = 16;

/// The f32 values of [`gemm_nt`]'s `block` for `a` times `main` packed rows of `b`
/// (those past them taken by dot products) of width `k`: none where f32 rows are read in
/// place ([`f32_in_place`]).
pub fn block_len(a: FloatSlice<'_>, main: usize, k: usize) -> usize {
    let groups = main.div_ceil(LANES);
    match a {
        FloatSlice::F32(_) if f32_in_place(groups) => 0,
        _ => MR * (KC.min(k) + PAD),
    }
}

/// Most rows of `b` past its whole groups of 8 that [`gemm_nt`] multiplies by dot
/// products ([`crate::gemv::avx2::cached_f32_dots`], on the rows of `a` its tiles just
/// read) rather than in a register of 8 partly padded lanes: the most that kernel takes
/// at once. 1 to 4 vectors cost at most half a group's FMAs that way (the kernel's
/// loads, two per FMA at one vector, make up part of it back).
pub const REST_DOTS_MAX: usize = 4;
const _: () = assert!(REST_DOTS_MAX <= crate::gemv::MAX_VECTORS);

/// The last rows of `n` that [`gemm_nt`] takes by dot products: `n % 8` where that is 1
/// to [`REST_DOTS_MAX`] past at least one whole group, else 0.
pub fn rest_rows(n: usize) -> usize {
    match n % LANES {
        rest if n > LANES && rest <= REST_DOTS_MAX => rest,
        _ => 0,
    }
}

/// `n` rounded up to whole registers (the width of [`pack`]'s rows); `None` on overflow.
pub fn padded(n: usize) -> Option<usize> {
    n.checked_next_multiple_of(LANES)
}

/// Lays the `n` rows of `k` in `b` out transposed, `[k][padded(n)]`
/// ([`crate::transpose::strided`]; the lanes past `n` keep their zeros, so that a padded
/// lane accumulates zero). `packed` must hold `k * padded(n)` values, zeroed.
pub fn pack(b: &[f32], k: usize, packed: &mut [f32]) {
    let width = packed.len() / k.max(1);
    crate::transpose::strided(b, k, (b.len() / k.max(1), k), packed, width);
}

/// Rows of `a` per tile against `groups` (1 to 3) registers of `b`: 12 accumulators for
/// 1 and 2, 9 for 3 (12 would leave no register for the broadcast besides the three of
/// `b`: LLVM spilled an accumulator on every column).
const fn tile_rows(groups: usize) -> usize {
    match groups {
        1 => 12,
        2 => 6,
        _ => 3,
    }
}
const _: () = assert!(MR.is_multiple_of(tile_rows(2)) && MR.is_multiple_of(tile_rows(3)));

/// `out[r * n + c] = a[r] . b[c]` for the `m` rows of `a` (`m * k` values) and the `n`
/// rows of `b`, the first `main` as [`pack`] lays them out and the last [`rest_rows`]
/// (`rest`) as they are: passes of [`KC`] columns; in each, blocks of [`MR`] rows of `a`
/// (in place, or copied or converted into `block`: [`f32_in_place`]) times chunks of 3,
/// 2 or 1 registers' rows of `b` (2 and 2 for 4), lanes past `main` neither read nor
/// written, then times the rest rows by dot products. The first pass stores, later ones
/// add.
///
/// # Safety
/// AVX2, FMA and F16C must be available; `k >= 1`; `a` holds `m * k` values, `rest`
/// whole rows of `k` (at most [`REST_DOTS_MAX`], fewer than `n`: the last `n - main`),
/// `packed` `k * padded(main)`, `out` `m * n`, and `block` [`block_len`]`(a, main, k)`
/// (in place: nothing).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_nt(
    a: FloatSlice<'_>,
    (packed, rest): (&[f32], &[f32]),
    (m, n, k): (usize, usize, usize),
    out: &mut [f32],
    block: &mut [f32],
) {
    let main = n - rest.len() / k;
    let groups = main.div_ceil(LANES);
    let width = groups * LANES;
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        for r in (0..m).step_by(MR) {
            let rows = MR.min(m - r);
            // This block's columns as f32, rows `lda` apart: in place, or in `block`.
            let (ap, lda) = match a {
                FloatSlice::F32(v) if f32_in_place(groups) => (v.as_ptr().add(r * k + k0), k),
                _ => {
                    let lda = kc + PAD;
                    for (i, dst) in block[..rows * lda].chunks_exact_mut(lda).enumerate() {
                        a.read_f32_inline((r + i) * k + k0, &mut dst[..kc]);
                    }
                    (block.as_ptr(), lda)
                }
            };
            // The next block's columns of this pass, prefetched by the first chunk's tiles
            // (where the next block is full: r + 2 MR <= m).
            let next = (r + 2 * MR <= m).then(|| Prefetch::rows_of(a, k, r + MR, k0));
            let mut g = 0;
            while g < groups {
                let vecs = match groups - g {
                    1 => 1,
                    2 | 4 => 2,
                    _ => 3,
                };
                let tile = Tile {
                    lda,
                    kc,
                    ldb: width,
                    ldo: n,
                    add: k0 > 0,
                    lanes: [
                        live_lanes(main, g),
                        live_lanes(main, g + 1),
                        live_lanes(main, g + 2),
                    ],
                };
                let per_tile = tile_rows(vecs);
                let mut i = 0;
                while i < rows {
                    let tr = per_tile.min(rows - i);
                    // SAFETY: rows i..i + tr of the block hold columns 0..kc, lda
                    // apart (in place: rows r + i.. of `a`, columns k0..k0 + kc);
                    // `packed` holds columns k0..k0 + kc of rows g * 8..(g + vecs) * 8
                    // (at most `width`), `width` apart; the outputs (r + i + j) * n +
                    // (g + v) * 8 + l for j < tr, v < vecs and live lanes l lie inside
                    // m * n; `next` (rows r + MR + i.., columns k0..) lies inside `a`.
                    let bp = packed.as_ptr().add(k0 * width + g * LANES);
                    let op = out.as_mut_ptr().add((r + i) * n + g * LANES);
                    let next = (next.filter(|_| g == 0)).map(|p| Prefetch {
                        at: p.at.add(i * p.row_bytes),
                        ..p
                    });
                    tile.dispatch(tr, vecs, ap.add(i * lda), bp, op, next);
                    i += tr;
                }
                g += vecs;
            }
            if main < n {
                let walk = Walk {
                    ldw: lda,
                    ldx: k,
                    ldo: n,
                    add: k0 > 0,
                    into_l1: false,
                };
                // SAFETY: the block's rows hold columns 0..kc (kc >= 1: k0 < k), `lda`
                // apart; `rest` holds n - main (1 to 4) rows of k, whose columns k0..k0 +
                // kc are read; the outputs (r + i) * n + main + c for i < rows and c < n -
                // main lie inside m * n and alias neither.
                let x = rest.as_ptr().add(k0);
                let o = out.as_mut_ptr().add(r * n + main);
                cached_f32_dots(n - main, ap, rows, kc, x, o, walk);
            }
        }
    }
}

/// The lanes of packed group `g` that are rows of `b` (below `n`): 0 to 8.
fn live_lanes(n: usize, g: usize) -> usize {
    n.saturating_sub(g * LANES).min(LANES)
}

/// One register tile's geometry: rows of `a` `lda` apart, `kc` columns, columns of `b`
/// `ldb` apart, output rows `ldo` apart, added to (`add`) or stored, live lanes per
/// register of `b` in `lanes`.
#[derive(Clone, Copy)]
struct Tile {
    lda: usize,
    kc: usize,
    ldb: usize,
    ldo: usize,
    add: bool,
    lanes: [usize; 3],
}

impl Tile {
    /// [`Tile::run`] for `rows` rows of `a` (1 to [`tile_rows`] of `vecs`) and `vecs`
    /// (1 to 3) groups.
    #[inline(always)]
    unsafe fn dispatch(
        self,
        rows: usize,
        vecs: usize,
        a: *const f32,
        b: *const f32,
        out: *mut f32,
        next: Option<Prefetch>,
    ) {
        match (vecs, rows, next) {
            (3, 3, Some(next)) => return self.run::<3, 3, true>(a, b, out, next),
            (2, 6, Some(next)) => return self.run::<6, 2, true>(a, b, out, next),
            (1, 12, Some(next)) => return self.run::<12, 1, true>(a, b, out, next),
            _ => {}
        }
        match (vecs, rows) {
            (3, 3) => self.run::<3, 3, false>(a, b, out, NO_PREFETCH),
            (3, 2) => self.run::<2, 3, false>(a, b, out, NO_PREFETCH),
            (3, _) => self.run::<1, 3, false>(a, b, out, NO_PREFETCH),
            (2, 6) => self.run::<6, 2, false>(a, b, out, NO_PREFETCH),
            (2, 5) => self.run::<5, 2, false>(a, b, out, NO_PREFETCH),
            (2, 4) => self.run::<4, 2, false>(a, b, out, NO_PREFETCH),
            (2, 3) => self.run::<3, 2, false>(a, b, out, NO_PREFETCH),
            (2, 2) => self.run::<2, 2, false>(a, b, out, NO_PREFETCH),
            (2, _) => self.run::<1, 2, false>(a, b, out, NO_PREFETCH),
            (_, 12) => self.run::<12, 1, false>(a, b, out, NO_PREFETCH),
            (_, 11) => self.run::<11, 1, false>(a, b, out, NO_PREFETCH),
            (_, 10) => self.run::<10, 1, false>(a, b, out, NO_PREFETCH),
            (_, 9) => self.run::<9, 1, false>(a, b, out, NO_PREFETCH),
            (_, 8) => self.run::<8, 1, false>(a, b, out, NO_PREFETCH),
            (_, 7) => self.run::<7, 1, false>(a, b, out, NO_PREFETCH),
            (_, 6) => self.run::<6, 1, false>(a, b, out, NO_PREFETCH),
            (_, 5) => self.run::<5, 1, false>(a, b, out, NO_PREFETCH),
            (_, 4) => self.run::<4, 1, false>(a, b, out, NO_PREFETCH),
            (_, 3) => self.run::<3, 1, false>(a, b, out, NO_PREFETCH),
            (_, 2) => self.run::<2, 1, false>(a, b, out, NO_PREFETCH),
            _ => self.run::<1, 1, false>(a, b, out, NO_PREFETCH),
        }
    }

    /// `out[i * ldo + v * 8 + l] (+)= a_i . b_(v * 8 + l)` for `R` rows of `a` and the `V`
    /// registers' rows of `b` at `b`, lanes past `lanes` neither read nor written.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run<const R: usize, const V: usize, const PF: bool>(
        self,
        a: *const f32,
        b: *const f32,
        out: *mut f32,
        next: Prefetch,
    ) {
        let mut acc = [[_mm256_setzero_ps(); V]; R];
        columns::<R, V, PF>(&mut acc, (a, self.lda), (b, self.ldb), self.kc, next);
        for (i, row) in acc.iter().enumerate() {
            for (v, &s) in row.iter().enumerate() {
                let o = out.add(i * self.ldo + v * LANES);
                match self.lanes[v] {
                    LANES if self.add => _mm256_storeu_ps(o, _mm256_add_ps(s, _mm256_loadu_ps(o))),
                    LANES => _mm256_storeu_ps(o, s),
                    live => {
                        let mask = lane_mask(live);
                        let s = match self.add {
                            true => _mm256_add_ps(s, _mm256_maskload_ps(o, mask)),
                            false => s,
                        };
                        _mm256_maskstore_ps(o, mask, s);
                    }
                }
            }
        }
    }
}

/// The mask of the first `live` (0 to 8) lanes, for `VMASKMOVPS`.
///
/// # Safety
/// AVX2 must be available.
#[inline(always)]
unsafe fn lane_mask(live: usize) -> __m256i {
    let index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    // `live` is at most 8.
    _mm256_cmpgt_epi32(_mm256_set1_epi32(live as i32), index)
}

/// The columns of [`Tile::run`], `acc[i][v] += a[i][c] * b_v[c]` column by column. Not
/// inlined, so that LLVM keeps the accumulators in registers through the loop (as the
/// AVX-512 kernel's).
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
unsafe fn columns<const R: usize, const V: usize, const PF: bool>(
    acc_out: &mut [[__m256; V]; R],
    (a, lda): (*const f32, usize),
    (b, ldb): (*const f32, usize),
    kc: usize,
    next: Prefetch,
) {
    let mut acc = *acc_out;
    for c in 0..kc {
        if PF && c % 16 == 0 {
            for i in 0..R {
                let line = next.at.add(i * next.row_bytes + c * next.size);
                _mm_prefetch::<_MM_HINT_T1>(line.cast());
            }
        }
        let mut bv = [_mm256_setzero_ps(); V];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(b.add(c * ldb + v * LANES));
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*a.add(i * lda + c));
            for (s, &x) in row.iter_mut().zip(&bv) {
                *s = _mm256_fmadd_ps(av, x, *s);
            }
        }
    }
    *acc_out = acc;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row j's column c lands at `[c][j]`, the lanes past the rows keep their zeros, at
    /// row counts below, at and past one group of 8.
    #[test]
    fn pack_transposes_into_zeroed_padded_lanes() {
        for (n, k) in [(1, 1), (3, 5), (8, 16), (13, 7), (17, 33)] {
            let b: Vec<f32> = (0..n * k).map(|x| x as f32 + 1.0).collect();
            let width = padded(n).unwrap();
            let mut packed = vec![0.0; width * k];
            pack(&b, k, &mut packed);
            for c in 0..k {
                for j in 0..width {
                    let want = if j < n { b[j * k + c] } else { 0.0 };
                    assert_eq!(packed[c * width + j], want, "{n} x {k} [{c}][{j}]");
                }
            }
        }
    }
}

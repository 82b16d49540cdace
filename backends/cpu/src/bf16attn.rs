//! The two products of bf16 attention on the native bf16 dot instruction (AVX512-BF16
//! `VDPBF16PS`) where the CPU has one, chosen at run time; elsewhere f32 loops with the
//! same pairing: the scores `S = Q K^T` straight from the cache rows ([`gemm_qk`]), and
//! `acc += P V` ([`gemm_pv`]).
//!
//! The dot instruction multiplies adjacent bf16 pairs. For `Q K^T` they run along the
//! key width, as stored. For `P V` the reduction runs over positions, so the kernel pairs
//! the value rows as it reads them: 16 columns of two rows interleaved in a register (one
//! `VPERMT2W`), against which each probability pair of a row is broadcast. The
//! probabilities are bf16 ([`round_rows`], as FlashMLA does);
//! every bf16 x bf16 product is exact in f32 and is added to an f32 accumulator, so only
//! the rounding of `P` and the order of the f32 additions differ from an f32 product.
//! Like every `VDPBF16PS`, subnormal inputs and results count as zero.
//!
//! Where this process may use AMX tiles and the key width is whole tile steps of 32
//! ([`Query::new`] with `tiles`), both products run on tiles instead
//! ([`crate::tiles`]): the query rows packed in pairs are a tile of `b` against 16 cache
//! rows side by side (the scores come out transposed, as from the packed rows above),
//! and `P V` takes `P` as the tile rows of `a` against the value rows paired by position
//! (`tiles`), or, for up to 16 query rows, read in place against `P` spread over the
//! pairs (`spread`). The tile unit's order of additions is its own; the same bound holds.

use crate::aligned::Aligned;
use crate::bf16dot;
use crate::f32attn::{device, qk_shape, sized};
use half::bf16;
use moemla_core::Result;

#[cfg(target_arch = "x86_64")]
mod spread;
#[cfg(target_arch = "x86_64")]
mod tiles;

/// Query rows [m, k] (bf16) prepared once for every chunk's [`gemm_qk`]: from
/// [`PACKED_MIN_ROWS`] rows on the native dot, also packed in column pairs
/// ([`bf16dot::Packed`]), so that each cache row's pairs are broadcast against 16 query
/// rows at a time (the scores come out transposed and are turned back in registers);
/// from [`QUAD_MIN_ROWS`] to 24 rows in octets or quads (each cache row's pieces
/// broadcast against 8 query rows per 64-bit lane at 16 and 21 to 24 rows, else 4 per
/// 128-bit lane; the scores come out transposed as well).
/// On a 2-core Zen 5, at DeepSeek's width over 128-position chunks, one thread: that
/// product ran at 82-86% of a core's bf16 dot peak at 32 and 128 rows, against 58-62%
/// for the 4 x 4 tiles of row dots, whose 16 sums each end in a reduction.
/// Prepared for AMX tiles ([`Query::new`] with `tiles`), every row is packed in pairs:
/// the packed rows are a tile of `b` against 16 cache rows side by side (the scores come
/// out transposed), and [`gemm_pv`] takes `P V` on tiles too.
#[derive(Debug)]
pub struct Query {
    /// The rows, row-major.
    rows: Vec<bf16>,
    /// Their width.
    k: usize,
    /// The rows packed, where the native dot or the tiles take them so.
    packed: Option<bf16dot::Packed>,
    /// Whether both products run on AMX tiles.
    tiles: bool,
}

impl Query {
    /// `rows` [m, k] prepared, for AMX tiles where `tiles` is asked and they take `k`
    /// ([`bf16dot::on_tiles`]), else for the native dot; a `k` of 0 or rows that are not
    /// whole rows of `k` are [`moemla_core::Error::Device`], the packed copy is allocated
    /// fallibly.
    pub fn new(rows: Vec<bf16>, k: usize, tiles: bool) -> Result<Query> {
        if k == 0 || !rows.len().is_multiple_of(k) {
            return Err(device(
                "bf16 query rows",
                format!("{} elements are not whole rows of k = {k} >= 1", rows.len()),
            ));
        }
        let m = rows.len() / k;
        if tiles && bf16dot::on_tiles(k) {
            let packed = bf16dot::Packed::for_tiles(&rows, k)?;
            return Ok(Query {
                rows,
                k,
                tiles: packed.is_some(),
                packed,
            });
        }
        let packed = if m >= PACKED_MIN_ROWS {
            bf16dot::Packed::new(&rows, k)?
        } else if m >= QUAD_MIN_ROWS {
            bf16dot::Packed::in_quads(&rows, k)?
        } else {
            None
        };
        Ok(Query {
            rows,
            k,
            packed,
            tiles: false,
        })
    }

    /// Whether [`gemm_qk`] and [`gemm_pv`] run on AMX tiles for these rows.
    pub fn on_tiles(&self) -> bool {
        self.tiles
    }
}

/// Working memory of [`gemm_pv`]: the probabilities rounded to bf16 and, on tiles, the
/// value rows paired by position.
#[derive(Debug, Default)]
pub struct PvBuffers {
    /// `P` in bf16, rows padded with zeros.
    p: Aligned<bf16>,
    /// Value rows `2t` and `2t + 1` interleaved, column by column, or `P` spread over
    /// pairs ([`spread`]) (tiles only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    v: Aligned<u32>,
    /// Value rows copied where [`spread`] cannot read them in place (tiles only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    rows: Aligned<bf16>,
}

/// Query rows from which [`Query`] packs them in pairs ([`bf16dot::Packed::new`]). At 16
/// rows (h_q 16, s_q 1) MLA decode came out 4-8% slower packed so, at 32 rows 5-10%
/// faster, at 128 and 256 rows 7-16% faster (`moemla bench --backend cpu --op mla_decode
/// --dtype bf16`, 2-core Zen 5).
pub const PACKED_MIN_ROWS: usize = 32;

/// Query rows from which (below [`PACKED_MIN_ROWS`], and up to 24) [`Query`] packs them in
/// quads or octets ([`bf16dot::Packed::in_quads`]: 4 query rows per 128-bit lane, a piece
/// of 8 columns of a cache row broadcast against them; at 16 and 21 to 24 rows 8 query
/// rows per 64-bit lane, pieces of 4 columns). 2-core Zen 5, MLA decode at h_q 16, s_q
/// 1, b 4, in one process, three interleaved rounds of quads against the row dots: 4096
/// positions 1.02-1.06 vs 1.15-1.18 ms, 1024 positions 0.32-0.34 vs 0.33 ms; the FP8
/// cache at 4096 positions 1.47-1.51 vs 1.53-1.58 ms. Octets against quads at 16 rows:
/// the same within 1% on the product alone (cache rows from L2), the op within the
/// noise.
pub const QUAD_MIN_ROWS: usize = 16;

/// `out[r * n + j] = q_r . row_j` for the `m` rows of `q` and the `n` rows `rows` (each
/// at least `k` long; its first `k` columns are used), each an f32 sum of exact products;
/// `out` is [m, n] and is overwritten, `scores_t` is working memory (the scores
/// transposed, where the packed rows make them so). Single-threaded.
///
/// A short row or an `out` that is not `m * n` long are [`moemla_core::Error::Device`]; nothing is
/// written to `out` then.
pub fn gemm_qk(
    q: &Query,
    rows: &[&[bf16]],
    out: &mut [f32],
    scores_t: &mut Aligned<f32>,
) -> Result<()> {
    let Some(packed) = &q.packed else {
        return gemm_qk_with(crate::bf16dot::native(), &q.rows, q.k, rows, out);
    };
    let m = qk_shape("bf16 gemm_qk", q.rows.len(), q.k, rows, out.len())?;
    let n = rows.len();
    sized(scores_t, m * n, "bf16 transposed scores")?;
    bf16dot::gemm_rows(rows, packed, scores_t)?;
    // Row j of the product is position j's scores for every query row.
    crate::transpose::matrix(scores_t, (n, m), out);
    Ok(())
}

/// [`gemm_qk`] on the native instruction or (`native` false) the f32 path.
fn gemm_qk_with(
    native: bool,
    q: &[bf16],
    k: usize,
    rows: &[&[bf16]],
    out: &mut [f32],
) -> Result<()> {
    let (m, n) = (
        qk_shape("bf16 gemm_qk", q.len(), k, rows, out.len())?,
        rows.len(),
    );
    #[cfg(target_arch = "x86_64")]
    if native {
        // SAFETY: the three AVX-512 features were detected at run time (`native` is only
        // true then), and the lengths were checked above: `q` holds m rows of k, every row at least k
        // elements, `out` m * n, which is all `x86::gemm_qk` reads and writes.
        unsafe { x86::gemm_qk(q, (m, k), rows, out) };
        return Ok(());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = native;
    for (qr, o) in q.chunks_exact(k).zip(out.chunks_exact_mut(n.max(1))) {
        for (row, x) in rows.iter().zip(o.iter_mut()) {
            let mut acc = [0.0f32; 16];
            for (i, (a, b)) in qr.iter().zip(&row[..k]).enumerate() {
                acc[i % 16] += a.to_f32() * b.to_f32();
            }
            *x = acc.iter().sum();
        }
    }
    Ok(())
}

/// The `n`-wide rows of `s` rounded to bf16 (nearest even; subnormals may become zero,
/// as the dot instruction reads them anyway) into `out`, each padded with one zero when
/// `n` is odd: `out` becomes [rows, 2 * n.div_ceil(2)], the layout [`gemm_pairs_pv`] takes.
fn round_rows(s: &[f32], n: usize, out: &mut Aligned<bf16>) -> Result<()> {
    round_rows_with(crate::bf16dot::native(), s, n, out)
}

/// [`round_rows`] on the native instruction or (`native` false) in software.
fn round_rows_with(native: bool, s: &[f32], n: usize, out: &mut Aligned<bf16>) -> Result<()> {
    round_rows_padded(native, s, (n, n.div_ceil(2) * 2), out)
}

/// [`round_rows_with`], each row padded with zeros to `width` (at least `n`).
fn round_rows_padded(
    native: bool,
    s: &[f32],
    (n, width): (usize, usize),
    out: &mut Aligned<bf16>,
) -> Result<()> {
    let rows = s.len() / n.max(1);
    let len = rows
        .checked_mul(width)
        .filter(|_| n > 0 && rows * n == s.len() && width >= n);
    let Some(len) = len else {
        return Err(device(
            "bf16 round_rows",
            format!("{} values are not whole rows of n = {n} >= 1", s.len()),
        ));
    };
    sized(out, len, "bf16 round_rows")?;
    for (src, dst) in s.chunks_exact(n).zip(out.chunks_exact_mut(width)) {
        dst[n..].fill(bf16::ZERO); // the pad
        let done = {
            #[cfg(target_arch = "x86_64")]
            if native {
                // SAFETY: the features were detected at run time (`native` is only true
                // then); `src` and `dst` are
                // slices of at least `n` elements, all that is touched.
                unsafe { x86::round(src, dst) }
            } else {
                0
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = native;
                0
            }
        };
        for (d, &x) in dst[done..n].iter_mut().zip(&src[done..]) {
            *d = bf16::from_f32(x);
        }
    }
    Ok(())
}

/// `acc[r * d + c] += sum_j P[r, j] * v_j[c]`, `P` the probabilities `s` [m, n] (f32)
/// rounded to bf16 (as FlashMLA does), for the `n` value rows `rows` (each at least `d`
/// long; its first `d` columns are used); `acc` is [m, d] f32. On AMX tiles where `q`
/// was prepared for them (the value rows paired by position into `buf`, `P` padded to
/// whole tile steps with zeros), else [`gemm_pairs_pv`]. Single-threaded.
///
/// Shapes that do not fit are [`moemla_core::Error::Device`]; `acc` is not written then.
pub fn gemm_pv(
    q: &Query,
    s: &[f32],
    n: usize,
    rows: &[&[bf16]],
    d: usize,
    acc: &mut [f32],
    buf: &mut PvBuffers,
) -> Result<()> {
    if rows.len() != n {
        return Err(device(
            "bf16 gemm_pv",
            format!(
                "{} value rows for probabilities over {n} positions",
                rows.len()
            ),
        ));
    }
    #[cfg(target_arch = "x86_64")]
    if q.tiles {
        let m = tiles::pv_rows(s, n, rows, d, acc.len())?;
        if spread::takes(m, d) {
            return spread::gemm_pv(s, (m, n), rows, d, acc, buf);
        }
        return tiles::gemm_pv(s, (m, n), rows, d, acc, buf);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = q;
    round_rows(s, n, &mut buf.p)?;
    gemm_pairs_pv(&buf.p, rows, d, acc)
}

/// `acc[r * d + c] += sum_j p[r * w + j] * v_j[c]` for the `m` rows of `p` [m, w] (bf16,
/// row-major, `w` = `n` rounded up to even as [`round_rows`] leaves them: a padded
/// position's probability is 0) and the `n` value rows `rows` (each at least `d` long;
/// its first `d` columns are used); `acc` is [m, d] f32. Position pairs (rows `2t` and
/// `2t + 1`, a zero row standing in for the missing partner when `n` is odd) meet each
/// probability pair, the two products added to the f32 sum in turn. Single-threaded
/// (callers parallelise over independent tiles).
///
/// No rows, a short row, or lengths that do not fit these shapes are
/// [`moemla_core::Error::Device`]; nothing is written then.
fn gemm_pairs_pv(p: &[bf16], rows: &[&[bf16]], d: usize, acc: &mut [f32]) -> Result<()> {
    gemm_pairs_pv_with(crate::bf16dot::native(), p, rows, d, acc)
}

/// [`gemm_pairs_pv`] on the native instruction or (`native` false) the f32 path.
fn gemm_pairs_pv_with(
    native: bool,
    p: &[bf16],
    rows: &[&[bf16]],
    d: usize,
    acc: &mut [f32],
) -> Result<()> {
    let (n, width) = (rows.len(), rows.len().div_ceil(2) * 2);
    let m = acc.len() / d.max(1);
    let fits = d > 0
        && n > 0
        && m * d == acc.len()
        && Some(p.len()) == m.checked_mul(width)
        && rows.iter().all(|r| r.len() >= d);
    if !fits {
        return Err(device(
            "bf16 gemm_pv",
            format!(
                "p ({} elements), {n} value rows (each at least d = {d} >= 1) and acc ({}) \
                 do not make [m, {width}] x [{n}, {d}] into [m, {d}]",
                p.len(),
                acc.len()
            ),
        ));
    }
    #[cfg(target_arch = "x86_64")]
    if d >= 16 && native {
        let wide = d / 16 * 16;
        // SAFETY: the three AVX-512 features were detected at run time (`native` is only
        // true then), and the shapes were checked above: `p` holds m rows of width,
        // every row at least d, `acc` m rows of d; the kernel touches columns below
        // `wide` (<= d) only; the portable loop does the rest.
        unsafe { x86::gemm_pairs_pv(p, rows, (m, d, wide), acc) };
        if wide < d {
            portable_pv(p, rows, (m, d), wide..d, acc);
        }
        return Ok(());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = native;
    portable_pv(p, rows, (m, d), 0..d, acc);
    Ok(())
}

/// The f32 path of [`gemm_pairs_pv`] over columns `cols`: each pair's two products added to the
/// f32 sum in turn, as the native instruction does (a missing partner adds nothing).
fn portable_pv(
    p: &[bf16],
    rows: &[&[bf16]],
    (m, d): (usize, usize),
    cols: std::ops::Range<usize>,
    acc: &mut [f32],
) {
    let width = rows.len().div_ceil(2) * 2;
    for (pr, ar) in p.chunks_exact(width).zip(acc.chunks_exact_mut(d)).take(m) {
        for (t, pair) in rows.chunks(2).enumerate() {
            let (p0, p1) = (pr[2 * t].to_f32(), pr[2 * t + 1].to_f32());
            for c in cols.clone() {
                let s = ar[c] + p0 * pair[0][c].to_f32();
                ar[c] = match pair.get(1) {
                    Some(v1) => s + p1 * v1[c].to_f32(),
                    None => s,
                };
            }
        }
    }
}

/// Whether every one of `values` is a bf16 value (NaN counts as one); if so `out` becomes
/// them as bf16 (grown fallibly; NaN as the quiet NaN), else it is left unspecified
/// ([`bf16dot::exact_into_slice`]).
pub fn exact_into(values: &[f32], out: &mut Aligned<bf16>) -> Result<bool> {
    sized(out, values.len(), "bf16 exact")?;
    Ok(bf16dot::exact_into_slice(values, out))
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use crate::f32attn::x86::{pv, qk, Lanes};
    use half::bf16;
    use std::arch::x86_64::*;

    /// Bf16 values, multiplied in adjacent pairs by `VDPBF16PS`; a unit of `P V` is a
    /// pair of probabilities, one u32.
    impl Lanes for bf16 {
        const STEP: usize = 32;
        type V = __m512bh;
        type Unit = u32;
        #[inline(always)]
        unsafe fn load(p: *const bf16, live: usize) -> __m512bh {
            crate::bf16dot::x86::load(p.cast(), live)
        }
        #[inline(always)]
        unsafe fn madd(acc: __m512, a: __m512bh, b: __m512bh) -> __m512 {
            _mm512_dpbf16_ps(acc, a, b)
        }
        #[inline(always)]
        unsafe fn splat(p: *const u32) -> __m512bh {
            let a = _mm512_set1_epi32(p.read_unaligned() as i32);
            // SAFETY: both are plain 512-bit vectors (32 x 16 bits).
            std::mem::transmute::<__m512i, __m512bh>(a)
        }
    }

    /// See [`super::gemm_qk`]: `VDPBF16PS` steps of 32 in the shared tiles
    /// ([`crate::f32attn::x86::qk`]).
    ///
    /// # Safety
    /// AVX-512F, AVX-512BW and AVX512-BF16 must be available; `q` holds `m * k`
    /// elements, every row at least `k`, `out` `m * rows.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn gemm_qk(q: &[bf16], (m, k): (usize, usize), rows: &[&[bf16]], out: &mut [f32]) {
        qk(q, (m, k, k), rows, out);
    }

    /// Rounds the leading multiple of 16 of `src` to bf16 into `dst` (nearest even;
    /// subnormals flushed); returns how many were done.
    ///
    /// # Safety
    /// AVX-512F, AVX-512BW and AVX512-BF16 must be available; `dst` at least as long as
    /// `src`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn round(src: &[f32], dst: &mut [bf16]) -> usize {
        let wide = src.len() / 16 * 16;
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr().cast::<__m256i>());
        for i in (0..wide).step_by(16) {
            let r = _mm512_cvtneps_pbh(_mm512_loadu_ps(s.add(i)));
            // SAFETY: a plain 256-bit vector (16 x 16 bits).
            let r = std::mem::transmute::<__m256bh, __m256i>(r);
            _mm256_storeu_si256(d.cast::<u16>().add(i).cast(), r);
        }
        wide
    }

    /// See [`super::gemm_pairs_pv`], columns `0..wide` (`wide` a multiple of 16, <= d): the
    /// shared tiles ([`crate::f32attn::x86::pv`]) over position pairs, each step 16
    /// columns of rows `2t` and `2t + 1` interleaved into column pairs in a register (a
    /// zero row for the missing partner of an odd count) against one probability pair
    /// per row of `p`.
    ///
    /// # Safety
    /// AVX-512F, AVX-512BW and AVX512-BF16 must be available; `rows` is not empty and
    /// every row holds at least `wide` elements, `p` holds `m * 2 * ceil(rows / 2)` and
    /// `acc` `m * d`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn gemm_pairs_pv(
        p: &[bf16],
        rows: &[&[bf16]],
        (m, d, wide): (usize, usize, usize),
        acc: &mut [f32],
    ) {
        // Word e of a step takes column e / 2 of the first row (e even) or of the second
        // (e odd; the second operand's words are indices 32..64).
        let at: [i16; 32] = std::array::from_fn(|e| e as i16 / 2 + e as i16 % 2 * 32);
        let pick = _mm512_loadu_si512(at.as_ptr().cast());
        let n = rows.len();
        let half = |row: &[bf16], c: usize| {
            // SAFETY: columns c..c + 16 <= wide of a row of at least wide elements.
            _mm512_castsi256_si512(_mm256_loadu_si256(row.as_ptr().add(c).cast()))
        };
        let step = |t: usize, c: usize| {
            let first = half(rows[2 * t], c);
            let second = match rows.get(2 * t + 1) {
                Some(row) => half(row, c),
                None => _mm512_setzero_si512(),
            };
            let pairs = _mm512_permutex2var_epi16(first, pick, second);
            // SAFETY: both are plain 512-bit vectors (32 x 16 bits).
            std::mem::transmute::<__m512i, __m512bh>(pairs)
        };
        // SAFETY: p holds m rows of n.div_ceil(2) pairs (u32); step t < n.div_ceil(2)
        // reads rows 2t and 2t + 1 (where it exists), columns below wide.
        pv::<bf16>(p.as_ptr().cast(), (m, n.div_ceil(2)), step, (d, wide), acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform-ish values in [lo, lo + 4) from a fixed-seed generator, as bf16.
    fn values(len: usize, seed: u64, lo: f32) -> Vec<bf16> {
        crate::test_util::bf16_values(len, seed, lo)
    }

    /// The paths this CPU can run: the f32 one, and the native one where it has it.
    fn paths() -> Vec<bool> {
        let mut p = vec![false];
        if crate::bf16dot::native() {
            p.push(true);
        }
        p
    }

    #[test]
    fn prepared_queries_score_as_the_reference_packed_or_not() {
        // From 32 rows on the native dot the rows are packed and the scores transposed
        // back: whole and partial 16 x 16 blocks, one and several column blocks of the
        // packed product, an odd k; from 16 to 24 rows in octets (16, 21, 24: two and
        // three groups) or quads (17, 20: five groups), cache rows past a tile, an odd k;
        // below 16 and from 25 to 31 the row dots.
        for (m, n, k) in [
            (15, 9, 576),
            (16, 9, 576),
            (16, 37, 576),
            (21, 30, 577),
            (17, 30, 577),
            (20, 11, 9),
            (24, 13, 9),
            (25, 9, 576),
            (32, 128, 576),
            (33, 67, 577),
            (64, 20, 576),
            (100, 17, 33),
            (130, 33, 576),
            (48, 1, 3),
        ] {
            let stride = k + 3;
            let q = values(m * k, 5 + k as u64, -2.0);
            let mat = values(n * stride, 7 + m as u64, -2.0);
            let rows: Vec<&[bf16]> = mat.chunks_exact(stride).collect();
            let query = Query::new(q.clone(), k, false).unwrap();
            let packs =
                crate::bf16dot::native() && (m >= PACKED_MIN_ROWS || (16..=24).contains(&m));
            assert_eq!(query.packed.is_some(), packs, "m {m}");
            let (mut out, mut scratch) = (vec![f32::NAN; m * n], Aligned::default());
            gemm_qk(&query, &rows, &mut out, &mut scratch).unwrap();
            // Packed: one chain of k additions per score.
            assert_scores((&q, k), &rows, &out, k + 32, "prepared");
        }
    }

    /// Asserts that `out` [m, n] holds `q` [m, k] times `rows` against an f64 reference,
    /// within the rounding of `adds` f32 additions of the products' magnitudes.
    fn assert_scores(
        (q, k): (&[bf16], usize),
        rows: &[&[bf16]],
        out: &[f32],
        adds: usize,
        what: &str,
    ) {
        let n = rows.len();
        for (r, qr) in q.chunks_exact(k).enumerate() {
            for (j, row) in rows.iter().enumerate() {
                let prods = qr
                    .iter()
                    .zip(&row[..k])
                    .map(|(a, b)| a.to_f64() * b.to_f64());
                let (want, abs) = prods.fold((0.0, 0.0), |(s, a), x| (s + x, a + x.abs()));
                let tol = adds as f64 * f32::EPSILON as f64 * abs;
                let got = out[r * n + j] as f64;
                assert!(
                    (got - want).abs() <= tol,
                    "{what}: n {n} k {k} [{r},{j}]: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn scores_match_an_f64_reference_at_odd_and_tail_shapes() {
        // (m, n, k): below one step, odd, whole 4 x 4 tiles, every remainder, the
        // DeepSeek width (with a tail tile of prefetched rows and more query tiles than
        // rows to prefetch) and one past it. Rows are read from a wider matrix.
        for native in paths() {
            for (m, n, k) in [
                (1, 1, 1),
                (3, 5, 7),
                (4, 4, 32),
                (5, 9, 33),
                (16, 130, 576),
                (33, 67, 576),
                (9, 7, 577),
            ] {
                let stride = k + 5;
                let q = values(m * k, 1 + k as u64, -2.0);
                let mat = values(n * stride, 9 + m as u64, -2.0);
                let rows: Vec<&[bf16]> = mat.chunks_exact(stride).collect();
                let mut out = vec![f32::NAN; m * n];
                gemm_qk_with(native, &q, k, &rows, &mut out).unwrap();
                assert_scores(
                    (&q, k),
                    &rows,
                    &out,
                    k / 16 + 32,
                    &format!("native {native}"),
                );
            }
        }
    }

    #[test]
    fn values_match_an_f64_reference_at_odd_and_tail_shapes() {
        // (m, n, d): odd n (a padded pair: a zero partner row), n of 1, column counts
        // below, at and past whole vectors and register tiles, rows past whole register
        // tiles. Each value row is followed by 3 NaN, which must not be read.
        for native in paths() {
            for (m, n, d) in [
                (1, 1, 1),
                (3, 7, 5),
                (4, 2, 16),
                (5, 33, 17),
                (9, 128, 512),
                (16, 129, 80),
                (6, 64, 100),
                // Tiles of 8 rows, then 4, then single rows; 3, 2 and 1 vectors per tile.
                (15, 9, 80),
                (13, 6, 64),
            ] {
                let rows = values(n * d, 7 + n as u64, -2.0);
                let stride = d + 3;
                let mut stored = vec![bf16::NAN; n * stride];
                for (dst, src) in stored.chunks_exact_mut(stride).zip(rows.chunks_exact(d)) {
                    dst[..d].copy_from_slice(src);
                }
                let vrows: Vec<&[bf16]> = stored.chunks_exact(stride).collect();
                // Probabilities in [0, 1], rounded and padded as the decode does.
                let probs: Vec<f32> = values(m * n, 3 + d as u64, 0.0)
                    .iter()
                    .map(|x| x.to_f32() / 4.0)
                    .collect();
                let mut p = Aligned::default();
                round_rows_with(native, &probs, n, &mut p).unwrap();
                let init: Vec<f32> = (0..m * d).map(|i| (i % 5) as f32 - 2.0).collect();
                let mut acc = init.clone();
                gemm_pairs_pv_with(native, &p, &vrows, d, &mut acc).unwrap();
                let width = n.div_ceil(2) * 2;
                for r in 0..m {
                    for c in 0..d {
                        let (mut want, mut abs) = (init[r * d + c] as f64, 2.0f64);
                        for j in 0..n {
                            let x = p[r * width + j].to_f64() * rows[j * d + c].to_f64();
                            want += x;
                            abs += x.abs();
                        }
                        let tol = (n + 2) as f64 * f32::EPSILON as f64 * abs;
                        let got = acc[r * d + c] as f64;
                        assert!(
                            (got - want).abs() <= tol,
                            "native {native} m {m} n {n} d {d} [{r},{c}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rounding_is_nearest_even_with_a_zero_pad_for_an_odd_count() {
        // 37 values per row: two whole vectors of 16 and a tail; 1 + 2^-8 is a tie that
        // rounds to even (1.0), 1 + 3 * 2^-8 one that rounds up.
        let mut s: Vec<f32> = (0..74).map(|i| i as f32 * 0.37 - 9.0).collect();
        s[3] = 1.0 + 1.0 / 256.0;
        s[40] = 1.0 + 3.0 / 256.0;
        for native in paths() {
            let mut out = Aligned::try_filled(3, bf16::ONE, "test").unwrap();
            round_rows_with(native, &s, 37, &mut out).unwrap();
            assert_eq!(out.len(), 2 * 38);
            for (r, row) in out.chunks_exact(38).enumerate() {
                for (j, &x) in row[..37].iter().enumerate() {
                    assert_eq!(
                        x,
                        bf16::from_f32(s[r * 37 + j]),
                        "native {native} [{r},{j}]"
                    );
                }
                assert_eq!(row[37], bf16::ZERO);
            }
            assert_eq!(out[3].to_f32(), 1.0);
            assert_eq!(out[38 + 3].to_f32(), 1.0 + 4.0 / 256.0);
            assert!(round_rows_with(native, &s, 0, &mut out).is_err());
            assert!(round_rows_with(native, &s, 5, &mut out).is_err());
        }
    }

    #[test]
    fn the_missing_partner_of_an_odd_count_adds_nothing_even_beside_infinity() {
        // Three value rows: the last pair's partner is missing, its probability the zero
        // pad. The lone row's infinity must give infinity (0.125 x inf), not NaN (as a
        // stand-in partner holding it, times the pad, would). 16 and 20 columns: the
        // native kernel alone, and with the portable tail.
        for native in paths() {
            for d in [16, 20] {
                let mut rows = values(3 * d, 4, -2.0);
                rows[2 * d + 5] = bf16::INFINITY;
                let vrows: Vec<&[bf16]> = rows.chunks_exact(d).collect();
                let mut p = Aligned::default();
                round_rows_with(native, &[0.5, 0.25, 0.125], 3, &mut p).unwrap();
                let mut acc = vec![0.0; d];
                gemm_pairs_pv_with(native, &p, &vrows, d, &mut acc).unwrap();
                for (c, &got) in acc.iter().enumerate() {
                    let want: f64 = (0..3)
                        .map(|j| p[j].to_f64() * rows[j * d + c].to_f64())
                        .sum();
                    let close = (got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0);
                    assert!(
                        got as f64 == want || close,
                        "native {native} d {d} [{c}]: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn mismatched_shapes_are_errors_and_write_nothing() {
        for native in paths() {
            let p = values(8, 1, 0.0);
            let packed = values(2 * 4 * 2, 2, -2.0);
            let mut acc = vec![0.5; 8];
            // p [2, 4] x 4 value rows of 4 -> acc [2, 4]: fine (3 rows too: p's width is
            // the count rounded up to even); wrong d, lengths, no rows or a short row fail.
            let vrows: Vec<&[bf16]> = packed.chunks_exact(4).collect();
            assert!(gemm_pairs_pv_with(native, &p, &vrows, 4, &mut acc).is_ok());
            assert!(gemm_pairs_pv_with(native, &p, &vrows[..3], 4, &mut acc).is_ok());
            let before = acc.clone();
            assert!(gemm_pairs_pv_with(native, &p, &vrows, 3, &mut acc).is_err());
            assert!(gemm_pairs_pv_with(native, &p, &vrows, 0, &mut acc).is_err());
            assert!(gemm_pairs_pv_with(native, &p[..6], &vrows, 4, &mut acc).is_err());
            assert!(gemm_pairs_pv_with(native, &p, &vrows, 4, &mut acc[..7]).is_err());
            assert!(gemm_pairs_pv_with(native, &p, &vrows[..2], 4, &mut acc).is_err());
            assert!(gemm_pairs_pv_with(native, &p, &[], 4, &mut acc).is_err());
            let short = [vrows[0], vrows[1], vrows[2], &packed[12..15]];
            assert!(gemm_pairs_pv_with(native, &p, &short, 4, &mut acc).is_err());
            // q [2, 4] against rows of 4 -> out [2, 2]; k 0, a short row, a wrong out fail.
            let rows = [&packed[..4], &packed[4..8]];
            assert!(gemm_qk_with(native, &p, 0, &rows, &mut acc[..4]).is_err());
            assert!(gemm_qk_with(native, &p, 4, &[&packed[..3]], &mut acc[..2]).is_err());
            assert!(gemm_qk_with(native, &p, 4, &rows, &mut acc[..3]).is_err());
            assert!(gemm_qk_with(native, &p, 3, &rows, &mut acc[..4]).is_err());
            assert_eq!(acc, before);
        }
    }

    #[test]
    fn both_products_on_tiles_match_an_f64_reference() {
        if !crate::bf16dot::tiles_enabled() {
            eprintln!("skipped: this process may not use AMX-BF16 tiles");
            return;
        }
        // (m, n, k, d, run): query rows from 1 to 130 (one partial column tile to several,
        // a partial row tile of P); cache rows in runs of `run` side by side, one row
        // apart from the next run (a run per tile call: whole, partial and single-row
        // tiles of a); positions below, at and past a tile step of P (32); values at
        // DeepSeek's width and partial column tiles (d 20: the second tile of a 32-column
        // block partly live).
        for (m, n, k, d, run) in [
            (1usize, 1usize, 32usize, 16usize, 1usize),
            (16, 37, 576, 512, 64),
            (15, 128, 576, 512, 128),
            (17, 33, 64, 40, 5),
            (130, 70, 96, 72, 16),
            (20, 50, 64, 20, 50),
            (128, 128, 576, 512, 64),
        ] {
            let q = values(m * k, 5 + k as u64, -2.0);
            let runs = n.div_ceil(run);
            let mat = values((n + runs) * k, 7 + m as u64, -2.0);
            // Run r's rows start at row r * (run + 1) of mat.
            let rows: Vec<&[bf16]> = (0..n)
                .map(|j| &mat[(j / run * (run + 1) + j % run) * k..][..k])
                .collect();
            let query = Query::new(q.clone(), k, true).unwrap();
            assert!(query.on_tiles(), "m {m} k {k}");
            let (mut out, mut scratch) = (vec![f32::NAN; m * n], Aligned::default());
            gemm_qk(&query, &rows, &mut out, &mut scratch).unwrap();
            assert_scores((&q, k), &rows, &out, k + 32, "tiles");
            // P V: probabilities in [0, 1), onto an accumulator that holds values.
            let probs: Vec<f32> = values(m * n, 3 + d as u64, 0.0)
                .iter()
                .map(|x| x.to_f32() / 4.0)
                .collect();
            let init: Vec<f32> = (0..m * d).map(|i| (i % 5) as f32 - 2.0).collect();
            let mut acc = init.clone();
            let mut buf = PvBuffers::default();
            gemm_pv(&query, &probs, n, &rows, d, &mut acc, &mut buf).unwrap();
            // One value row short or too many: an error, nothing written.
            let before = acc.clone();
            for wrong in [&rows[..n - 1], &[rows.as_slice(), &rows[..1]].concat()[..]] {
                assert!(gemm_pv(&query, &probs, n, wrong, d, &mut acc, &mut buf).is_err());
            }
            assert_eq!(acc, before);
            for r in 0..m {
                for c in 0..d {
                    let (mut want, mut abs) = (init[r * d + c] as f64, 2.0f64);
                    for (j, row) in rows.iter().enumerate() {
                        let p = bf16::from_f32(probs[r * n + j]).to_f64();
                        want += p * row[c].to_f64();
                        abs += (p * row[c].to_f64()).abs();
                    }
                    let tol = (n + 2) as f64 * f32::EPSILON as f64 * abs;
                    let got = acc[r * d + c] as f64;
                    assert!(
                        (got - want).abs() <= tol,
                        "m {m} n {n} d {d} [{r},{c}]: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn prepared_queries_of_bad_shapes_are_errors_and_write_nothing() {
        // Not whole rows, and k 0, whether or not they would be packed, for tiles or not.
        for tiles in [false, true] {
            for len in [10, 40 * 7 + 3] {
                assert!(Query::new(values(len, 3, -2.0), 7, tiles).is_err(), "{len}");
            }
            assert!(Query::new(values(64, 3, -2.0), 0, tiles).is_err());
        }
        // 32 rows of 8 (packed on the native dot) against rows of 8: a short row or an out
        // of the wrong length fail before anything is written.
        let (m, k) = (32, 8);
        let query = Query::new(values(m * k, 4, -2.0), k, false).unwrap();
        let mat = values(3 * k, 5, -2.0);
        let rows: Vec<&[bf16]> = mat.chunks_exact(k).collect();
        let (mut out, mut scratch) = (vec![0.5; m * 3], Aligned::default());
        assert!(gemm_qk(&query, &rows, &mut out[..m * 3 - 1], &mut scratch).is_err());
        let short = [rows[0], &mat[..k - 1]];
        assert!(gemm_qk(&query, &short, &mut out[..m * 2], &mut scratch).is_err());
        assert!(out.iter().all(|&x| x == 0.5));
        assert!(gemm_qk(&query, &rows, &mut out, &mut scratch).is_ok());
    }
}

//! The indexer's scores for BF16 inputs on the native bf16 dot (AVX512-BF16 `VDPBF16PS`):
//! `score(key) = sum_h w[h] * max(0, q[h] . key)`, every key row read in place.
//!
//! The query is packed once per row as `[ceil(Di / 2), Hp]` pairs of bf16 (heads padded to
//! a multiple of 16, padding zero): lane `h` of a vector holds head `h`'s two query values
//! of one pair of dims, and each key's pair of values is broadcast to all lanes, so one
//! `VDPBF16PS` adds two exact products for 16 heads of one key. A register tile holds 4
//! vectors of heads (64) x 6 keys; after the dims, the ReLU (a NaN dot counts as 0),
//! the weights and the sum over heads are applied in f32 and the lanes added. Only the
//! order of the f32 additions differs from the f32 path; like every `VDPBF16PS`, subnormal
//! inputs and results count as zero (see [`crate::bf16dot`]).
//!
//! Where this process may use AMX tiles and `Di` is a multiple of 32, each run of 16 keys
//! that lie side by side in the cache (a block's consecutive positions) is multiplied on
//! tiles instead ([`tiles`]): the packed query is already the layout a tile of `b` must
//! have (16 pairs of dims x 16 heads), the keys are read in place as tile rows, and the
//! ReLU, weights and sum over heads follow as above. Other keys take the vector tiles.

use crate::aligned::Aligned;
use half::bf16;
use moemla_core::alloc::try_filled_vec;
use moemla_core::Result;

/// Keys per register tile.
const NK: usize = 6;
/// Head vectors (16 heads each) per register tile.
const HB: usize = 4;

/// One query row packed for [`scores`].
pub(super) struct Query {
    /// `[ceil(Di / 2), h_pad]`: head `h`'s values at dims `2j` (low half) and `2j + 1`
    /// (high half, 0 past `Di`).
    pairs: Aligned<u32>,
    /// The heads' weights, 0 for the padding.
    weights: Vec<f32>,
    /// Heads rounded up to a multiple of 16.
    h_pad: usize,
    /// Dims (`Di`).
    d_i: usize,
}

impl Query {
    /// Packs `q` `[Hi, Di]` with its weights `w` `[Hi]`.
    pub(super) fn new(q: &[bf16], w: &[f32], heads: usize, d_i: usize) -> Result<Self> {
        let h_pad = heads.div_ceil(16) * 16;
        let steps = d_i.div_ceil(2);
        let len = steps
            .checked_mul(h_pad)
            .ok_or_else(|| moemla_core::Error::OutOfMemory {
                what: "cpu dsa_indexer_topk packed query".into(),
                bytes: usize::MAX,
            })?;
        let mut pairs = Aligned::try_filled(len, 0u32, "cpu dsa_indexer_topk packed query")?;
        for (h, row) in q.chunks_exact(d_i).take(heads).enumerate() {
            for (j, two) in row.chunks(2).enumerate() {
                let hi = two.get(1).map_or(0, |v| v.to_bits());
                pairs[j * h_pad + h] = u32::from(two[0].to_bits()) | u32::from(hi) << 16;
            }
        }
        let mut weights: Vec<f32> = try_filled_vec(h_pad, "cpu dsa_indexer_topk weights")?;
        weights[..heads].copy_from_slice(&w[..heads]);
        Ok(Query {
            pairs,
            weights,
            h_pad,
            d_i,
        })
    }
}

/// `out[j] = sum_h w[h] * max(0, q[h] . keys[j])` (a NaN dot counts as 0, as `f32::max`
/// has it) for every key row (each `Di` long; `out` as long as `keys`).
///
/// # Panics
/// When a key row is not `Di` long or `out` not as long as `keys` (callers build both).
pub(super) fn scores(query: &Query, keys: &[&[bf16]], out: &mut [f32]) {
    assert!(
        keys.len() == out.len() && keys.iter().all(|k| k.len() == query.d_i),
        "indexer bf16 scores: {} keys of {} dims for {} outputs",
        keys.len(),
        query.d_i,
        out.len()
    );
    if !crate::tiles::fits(query.d_i) {
        return vector_scores(query, keys, out);
    }
    let d_i = query.d_i;
    let runs = keys
        .chunks_exact(tiles::KEYS)
        .zip(out.chunks_exact_mut(tiles::KEYS));
    // SAFETY: the caller checked `native()` (AVX-512F) and `fits` saw AMX enabled; each
    // run's 16 keys lie d_i apart from its first (checked), each d_i long, and the query
    // holds d_i / 2 pair rows of h_pad heads.
    unsafe {
        tiles::begin();
        for (run, o) in runs {
            let first = run[0].as_ptr();
            if run
                .iter()
                .enumerate()
                .all(|(i, k)| k.as_ptr() == first.wrapping_add(i * d_i))
            {
                tiles::scores(query, first.cast(), o);
            } else {
                vector_scores(query, run, o);
            }
        }
        tiles::end();
    }
    let whole = keys.len() / tiles::KEYS * tiles::KEYS;
    vector_scores(query, &keys[whole..], &mut out[whole..]);
}

/// [`scores`] on the vector tiles alone.
fn vector_scores(query: &Query, keys: &[&[bf16]], out: &mut [f32]) {
    out.fill(0.0);
    if keys.is_empty() {
        return;
    }
    // A short last tile repeats its first key; those results are dropped.
    let rows_of = |t: usize| {
        let tile = &keys[(t * NK).min(keys.len() - 1)..keys.len().min(t * NK + NK)];
        let mut rows = [tile[0].as_ptr().cast::<u16>(); NK];
        for (r, k) in rows.iter_mut().zip(tile) {
            *r = k.as_ptr().cast();
        }
        rows
    };
    for (t, o) in out.chunks_mut(NK).enumerate() {
        let rows = rows_of(t);
        // The next tile's keys (this one's after the last) are prefetched meanwhile.
        let next = rows_of(t + 1);
        let mut sums = [0.0f32; NK];
        let mut g = 0;
        while g < query.h_pad / 16 {
            let vecs = (query.h_pad / 16 - g).min(HB);
            // SAFETY: `native` was checked by the caller (only calls this where
            // `crate::bf16dot::outpaces_fma()` or `on_tiles` holds, which imply
            // `native()`: AVX-512F, AVX-512BW, AVX512-BF16); every row pointer starts a key of `d_i` bf16
            // (checked above); `pairs` holds
            // ceil(d_i / 2) * h_pad values and `weights` h_pad, of which the tile reads
            // vectors g..g + vecs (<= h_pad / 16) of each step.
            unsafe {
                match vecs {
                    4 => x86::tile::<4>(query, g, (&rows, &next), &mut sums),
                    3 => x86::tile::<3>(query, g, (&rows, &next), &mut sums),
                    2 => x86::tile::<2>(query, g, (&rows, &next), &mut sums),
                    _ => x86::tile::<1>(query, g, (&rows, &next), &mut sums),
                }
            }
            g += vecs;
        }
        o.copy_from_slice(&sums[..o.len()]);
    }
}

mod tiles {
    use super::Query;
    use crate::tiles::{config, COLS, ROWS, ROW_BYTES};
    use moemla_core::amx::{self, dot_bf16, load, store, zero};
    use std::arch::x86_64::*;

    /// Keys per run: the rows of a tile.
    pub const KEYS: usize = ROWS;
    /// Head tiles (16 heads each) per pass over the dims: accumulators 0 to 3.
    const HEAD_TILES: usize = 4;

    /// Loads the tile configuration on this thread.
    ///
    /// # Safety
    /// [`amx::enabled`] must have returned true.
    pub unsafe fn begin() {
        // SAFETY: as this function's contract.
        unsafe { config(ROWS).load() };
    }

    /// Releases this thread's tiles.
    ///
    /// # Safety
    /// As [`begin`].
    pub unsafe fn end() {
        // SAFETY: as this function's contract.
        unsafe { amx::release() };
    }

    /// `out[i] = sum_h w[h] * max(0, q[h] . key_i)` for the 16 keys at `keys` (`Di`
    /// apart): per pass of up to 64 heads, the dots on tiles (key tile 4, query tiles 5
    /// to 7 in turn, accumulators 0 to 3), stored, then ReLU, weights and the sum in f32.
    ///
    /// # Safety
    /// AVX-512F must be available (the caller's `native()`); [`begin`] ran on this
    /// thread; `Di` is a multiple of 32; 16 keys of `Di` bf16 lie at `keys`, `keys + Di`,
    /// ... (16 slices side by side, read as one tile); `out` holds 16.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn scores(query: &Query, keys: *const u16, out: &mut [f32]) {
        let (h_pad, d_i) = (query.h_pad, query.d_i);
        let (lda, ldb) = (d_i * 2, h_pad * 4);
        let mut dots = [0.0f32; HEAD_TILES * KEYS * COLS];
        out.fill(0.0);
        let zero_ps = _mm512_setzero_ps();
        for g in (0..h_pad / COLS).step_by(HEAD_TILES) {
            let tiles = (h_pad / COLS - g).min(HEAD_TILES);
            let q = query.pairs.as_ptr().add(g * COLS);
            // SAFETY: the 16 keys' dims s * 32.. and the query's pair rows s * 16.. of
            // heads 16 (g + t).. exist; `dots` holds 4 tiles of 16 x 16.
            unsafe {
                for t in 0..tiles {
                    match t {
                        0 => zero::<0>(),
                        1 => zero::<1>(),
                        2 => zero::<2>(),
                        _ => zero::<3>(),
                    }
                }
                for s in 0..d_i / 32 {
                    load::<4>(keys.add(s * 32).cast(), lda);
                    let b = q.add(s * ROWS * h_pad);
                    for t in 0..tiles {
                        let bt = b.add(t * COLS).cast();
                        match t {
                            0 => {
                                load::<5>(bt, ldb);
                                dot_bf16::<0, 4, 5>();
                            }
                            1 => {
                                load::<6>(bt, ldb);
                                dot_bf16::<1, 4, 6>();
                            }
                            2 => {
                                load::<7>(bt, ldb);
                                dot_bf16::<2, 4, 7>();
                            }
                            _ => {
                                load::<5>(bt, ldb);
                                dot_bf16::<3, 4, 5>();
                            }
                        }
                    }
                }
                let d = dots.as_mut_ptr();
                for t in 0..tiles {
                    let at = d.add(t * KEYS * COLS).cast();
                    match t {
                        0 => store::<0>(at, ROW_BYTES),
                        1 => store::<1>(at, ROW_BYTES),
                        2 => store::<2>(at, ROW_BYTES),
                        _ => store::<3>(at, ROW_BYTES),
                    }
                }
            }
            let w = query.weights.as_ptr().add(g * COLS);
            for (i, o) in out.iter_mut().enumerate() {
                let mut total = zero_ps;
                for t in 0..tiles {
                    // SAFETY: key i's 16 dots of head tile t lie in `dots`; the weights
                    // of heads 16 (g + t).. exist (h_pad of them).
                    unsafe {
                        let dot = _mm512_loadu_ps(dots.as_ptr().add((t * KEYS + i) * COLS));
                        // VMAXPS returns the second operand when either is NaN: a NaN
                        // dot gives 0, as in the vector tiles.
                        let relu = _mm512_max_ps(dot, zero_ps);
                        total = _mm512_fmadd_ps(_mm512_loadu_ps(w.add(t * COLS)), relu, total);
                    }
                }
                *o += _mm512_reduce_add_ps(total);
            }
        }
    }
}

mod x86 {
    use super::{Query, NK};
    use std::arch::x86_64::*;

    /// Adds to `sums[k]` the weighted ReLU sum over heads `16 g .. 16 (g + V)` of
    /// `q . rows[k]`; the first head group (`g` 0) also prefetches the `next` rows.
    ///
    /// # Safety
    /// AVX-512F, AVX-512BW and AVX512-BF16 must be available; each of `rows` and `next`
    /// points at `query.d_i` readable bf16; `16 (g + V) <= query.h_pad`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn tile<const V: usize>(
        query: &Query,
        g: usize,
        (rows, next): (&[*const u16; NK], &[*const u16; NK]),
        sums: &mut [f32; NK],
    ) {
        let (h_pad, d_i) = (query.h_pad, query.d_i);
        if g == 0 {
            for &r in next {
                // One prefetch per 64-byte line of the row, inside the row.
                for at in (0..d_i).step_by(32) {
                    _mm_prefetch::<_MM_HINT_T0>(r.add(at).cast());
                }
            }
        }
        let q = query.pairs.as_ptr().add(16 * g).cast::<i32>();
        let mut acc = [[_mm512_setzero_ps(); NK]; V];
        let full = d_i / 2;
        let step = |acc: &mut [[__m512; NK]; V], j: usize, keys: [__m512i; NK]| {
            let mut qv = [_mm512_setzero_si512(); V];
            for (v, x) in qv.iter_mut().enumerate() {
                *x = _mm512_loadu_si512(q.add(j * h_pad + 16 * v).cast());
            }
            for (v, row) in acc.iter_mut().enumerate() {
                let a = std::mem::transmute::<__m512i, __m512bh>(qv[v]);
                for (s, &kv) in row.iter_mut().zip(&keys) {
                    *s = _mm512_dpbf16_ps(*s, a, std::mem::transmute::<__m512i, __m512bh>(kv));
                }
            }
        };
        for j in 0..full {
            let mut keys = [_mm512_setzero_si512(); NK];
            for (x, &r) in keys.iter_mut().zip(rows) {
                // Dims 2j and 2j + 1 of the key (< d_i), one 32-bit broadcast.
                *x = _mm512_set1_epi32(r.add(2 * j).cast::<i32>().read_unaligned());
            }
            step(&mut acc, j, keys);
        }
        if d_i % 2 == 1 {
            // The last dim alone: its pair's high half is 0 in the key (and the query).
            let mut keys = [_mm512_setzero_si512(); NK];
            for (x, &r) in keys.iter_mut().zip(rows) {
                *x = _mm512_set1_epi32(i32::from(r.add(d_i - 1).read()));
            }
            step(&mut acc, full, keys);
        }
        let w = query.weights.as_ptr().add(16 * g);
        let zero = _mm512_setzero_ps();
        for (k, s) in sums.iter_mut().enumerate() {
            let mut total = zero;
            for (v, row) in acc.iter().enumerate() {
                // VMAXPS returns the second operand when either is NaN: a NaN dot gives 0
                // (padded heads' dots are 0, or NaN from 0 * inf, and their weight 0).
                let relu = _mm512_max_ps(row[k], zero);
                total = _mm512_fmadd_ps(_mm512_loadu_ps(w.add(16 * v)), relu, total);
            }
            *s += _mm512_reduce_add_ps(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed-seed values in [-2, 2), as bf16.
    fn values(len: usize, seed: u64) -> Vec<bf16> {
        crate::test_util::bf16_values(len, seed, -2.0)
    }

    /// The f64 reference score of each key and its rounding bound: the dims' f32 sum on
    /// lanes then the heads' (`(Di / 2 + Hi + 32) eps` times the sum of magnitudes); where
    /// AMX tiles take `Di`, the tile unit adds a step's products in an order Intel does not
    /// specify, so the dims' part is that of any order, `Di` additions.
    fn reference(q: &[bf16], w: &[f32], keys: &[&[bf16]], d_i: usize) -> Vec<(f64, f64)> {
        let dims = if crate::tiles::fits(d_i) {
            d_i
        } else {
            d_i / 2
        };
        let heads = w.len();
        keys.iter()
            .map(|k| {
                let (mut s, mut mag) = (0.0f64, 0.0f64);
                for h in 0..heads {
                    let row = &q[h * d_i..(h + 1) * d_i];
                    let dot: f64 = row
                        .iter()
                        .zip(*k)
                        .map(|(a, b)| a.to_f64() * b.to_f64())
                        .sum();
                    let abs: f64 = row
                        .iter()
                        .zip(*k)
                        .map(|(a, b)| (a.to_f64() * b.to_f64()).abs())
                        .sum();
                    s += w[h] as f64 * dot.max(0.0);
                    mag += (w[h] as f64).abs() * abs;
                }
                (s, (dims + heads + 32) as f64 * f32::EPSILON as f64 * mag)
            })
            .collect()
    }

    #[test]
    fn scores_match_an_f64_reference_at_odd_shapes() {
        if !crate::bf16dot::native() {
            return;
        }
        // Heads below, at and past one vector and the 64-head tile; odd dims; key counts
        // below, at and past the 6-key tile. Where AMX tiles run (Di a multiple of 32),
        // runs of 16 keys take them: two runs and a tail of 5 (37 keys), one pass of four
        // head tiles and more (64, 130 heads: passes of 4, 4, 1), a partial head tile (17).
        for (heads, d_i, n) in [
            (64, 128, 37),
            (130, 64, 16),
            (17, 32, 20),
            (1, 1, 1),
            (3, 7, 5),
            (16, 2, 6),
            (17, 33, 7),
            (64, 128, 13),
            (65, 129, 12),
            (130, 128, 3),
            (48, 31, 19),
        ] {
            let q = values(heads * d_i, 7 + heads as u64);
            let w: Vec<f32> = values(heads, 3 + d_i as u64)
                .iter()
                .map(|v| v.to_f32() * 0.25)
                .collect();
            let cache = values(n * d_i, 11 + n as u64);
            let keys: Vec<&[bf16]> = cache.chunks_exact(d_i).collect();
            let query = Query::new(&q, &w, heads, d_i).unwrap();
            let mut out = vec![f32::NAN; n];
            scores(&query, &keys, &mut out);
            for (j, (&got, &(want, tol))) in
                out.iter().zip(&reference(&q, &w, &keys, d_i)).enumerate()
            {
                assert!(
                    (got as f64 - want).abs() <= tol,
                    "Hi {heads} Di {d_i} key {j}: {got} vs {want} (tol {tol})"
                );
            }
        }
    }

    #[test]
    fn keys_that_do_not_lie_side_by_side_take_the_vector_tiles() {
        if !crate::bf16dot::native() {
            return;
        }
        // 32 keys in two runs of 16: the first in reverse cache order (not side by side),
        // the second in order; both must give the reference scores.
        let (heads, d_i, n) = (20, 64, 32);
        let q = values(heads * d_i, 5);
        let w: Vec<f32> = values(heads, 6).iter().map(|v| v.to_f32()).collect();
        let cache = values(n * d_i, 8);
        let rows: Vec<&[bf16]> = cache.chunks_exact(d_i).collect();
        let mut keys: Vec<&[bf16]> = rows[..16].iter().rev().copied().collect();
        keys.extend_from_slice(&rows[16..]);
        let mut out = vec![f32::NAN; n];
        scores(&Query::new(&q, &w, heads, d_i).unwrap(), &keys, &mut out);
        for (j, (&got, &(want, tol))) in out.iter().zip(&reference(&q, &w, &keys, d_i)).enumerate()
        {
            assert!((got as f64 - want).abs() <= tol, "key {j}: {got} vs {want}");
        }
    }

    #[test]
    fn infinite_and_nan_dots_on_tiles_as_on_the_vector_tiles() {
        if !crate::bf16dot::native() {
            return;
        }
        // 16 keys side by side (a run the tiles take where AMX runs), 32 dims, 5 heads
        // (11 padded lanes) of ones: key 0 all +inf (every dot +inf: score +inf, the
        // padded heads' 0 * inf = NaN adding nothing), key 1 +inf then -inf (every dot
        // NaN: ReLU 0, score 0), the others ones (every dot 32).
        let (heads, d_i, n) = (5, 32, 16);
        let w = [1.0f32, 0.5, 0.25, 2.0, 1.0];
        let mut cache = vec![bf16::from_f32(1.0); n * d_i];
        cache[..d_i].fill(bf16::INFINITY);
        cache[d_i] = bf16::INFINITY;
        cache[d_i + 1] = bf16::NEG_INFINITY;
        let keys: Vec<&[bf16]> = cache.chunks_exact(d_i).collect();
        let q = vec![bf16::from_f32(1.0); heads * d_i];
        let mut out = vec![f32::NAN; n];
        scores(&Query::new(&q, &w, heads, d_i).unwrap(), &keys, &mut out);
        let finite = 32.0 * w.iter().sum::<f32>();
        let mut want = vec![finite; n];
        want[0] = f32::INFINITY;
        want[1] = 0.0;
        assert_eq!(out, want);
    }

    #[test]
    fn padded_heads_and_nan_dots_add_nothing() {
        if !crate::bf16dot::native() {
            return;
        }
        // 5 heads: 11 padded lanes, whose dots with an infinite key are 0 * inf = NaN.
        let (heads, d_i) = (5, 3);
        let (one, inf) = (bf16::from_f32(1.0), bf16::INFINITY);
        let w = [1.0f32, 0.5, 0.25, 2.0, 1.0];
        let cache = [inf, one, one, inf, inf, one];
        let keys: Vec<&[bf16]> = cache.chunks_exact(d_i).collect();
        // Every head's dot with key 0 and key 1 is +inf: the score is +inf, not NaN.
        let q = vec![one; heads * d_i];
        let mut out = [0.0f32; 2];
        scores(&Query::new(&q, &w, heads, d_i).unwrap(), &keys, &mut out);
        assert_eq!(out, [f32::INFINITY; 2]);
        // Head 0 = [1, -1, 1]: inf - 1 + 1 = +inf on key 0, inf - inf = NaN on key 1 (ReLU
        // 0, as f32::max gives); the other heads -1 everywhere: -inf, ReLU 0.
        let mut q = vec![bf16::from_f32(-1.0); heads * d_i];
        q[0] = one;
        q[2] = one;
        scores(&Query::new(&q, &w, heads, d_i).unwrap(), &keys, &mut out);
        assert_eq!(out, [f32::INFINITY, 0.0]);
    }
}

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
    pairs: Vec<u32>,
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
        let mut pairs: Vec<u32> = try_filled_vec(len, "cpu dsa_indexer_topk packed query")?;
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
            // `crate::bf16dot::outpaces_fma()` holds, which implies `native()`: AVX-512F,
            // AVX-512BW, AVX512-BF16); every row pointer starts a key of `d_i` bf16
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
    /// lanes then the heads' (`(Di / 2 + Hi + 32) eps` times the sum of magnitudes).
    fn reference(q: &[bf16], w: &[f32], keys: &[&[bf16]], d_i: usize) -> Vec<(f64, f64)> {
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
                (s, (d_i / 2 + heads + 32) as f64 * f32::EPSILON as f64 * mag)
            })
            .collect()
    }

    #[test]
    fn scores_match_an_f64_reference_at_odd_shapes() {
        if !crate::bf16dot::native() {
            return;
        }
        // Heads below, at and past one vector and the 64-head tile; odd dims; key counts
        // below, at and past the 6-key tile.
        for (heads, d_i, n) in [
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

//! Both products of f32 attention on AVX2 + FMA, for CPUs without AVX-512 (AMD Zen 2/3,
//! Intel client cores): the scheme of the AVX-512 kernels ([`super::x86`]) on 8-lane
//! registers and 16 of them. `Q K^T` in register tiles of 3 query rows by 4 cache rows
//! (12 sums, the 3 query vectors and one cache row's: 7 loads per 12 products; where the
//! rows do not make whole tiles of 3, the last 4 as 2 + 2 or the last 2 as one tile
//! ([`tile_rows`]; one row only where that is all), by 4 too), cache rows outermost so a
//! tile's rows stay in L1 across all query rows; `acc += P V` in tiles of the same rows
//! by 4 vectors (32 columns: 12 sums, 4 value loads and 3 broadcasts per 12 products),
//! column tiles outermost so a tile's value columns stay in L1 across all rows. Both read
//! the cache rows in place. Where they replace the general GEMM (which packed both
//! operands of each chunk's two products), on a 2-core AMD EPYC (Zen 3), `mla_decode` f32
//! at h_q 128 ran at 48-81% of the FMA peak.

use std::arch::x86_64::*;

/// f32 lanes of one register.
const LANES: usize = 8;
/// Query rows per register tile of `Q K^T`.
const QR: usize = 3;
/// Cache rows per register tile of `Q K^T`.
const KR: usize = 4;
/// Rows of `p` per register tile of `P V`.
const PR: usize = 3;
/// 8-column vectors per register tile of `P V`.
const PV: usize = 4;
// Both products take their row tiles from `tile_rows`.
const _: () = assert!(QR == PR);

/// Rows of the next register tile of either product with `left` rows to go: [`QR`] (=
/// [`PR`]), but the last 4 as 2 + 2 and the last 2 together. A tile of one row keeps
/// only 4 sums in flight, too few to cover the FMA latency (4 cycles at 2 FMAs a cycle on
/// Zen 3: at most one FMA a cycle, half the rate); tiles of 2 rows keep 8. At h_q 16 (16
/// rows per sequence: 3 x 4 + 2 + 2 instead of 3 x 5 + 1) `mla_decode` ran 0-4% faster on
/// a 2-core Zen 3 (builds alternated, `moemla bench --backend cpu --op mla_decode
/// --filter h_q=16`: f32 sk 4096 s_q 1 5.08-5.34 -> 4.86-5.13 ms, bf16 with the FP8
/// cache 5.44-5.46 -> 5.30-5.34 ms).
fn tile_rows(left: usize) -> usize {
    match left {
        4 | 2 => 2,
        1 => 1,
        _ => QR,
    }
}

/// `out[r * n + j] = q_r . rows_j` for `q` [m, k] and the `n = rows.len()` cache rows
/// (their first `k` columns).
///
/// # Safety
/// AVX2 and FMA must be available; `q` holds `m * k` elements (`k >= 1`), every row at
/// least `k`, `out` `m * rows.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gemm_qk(q: &[f32], (m, k): (usize, usize), rows: &[&[f32]], out: &mut [f32]) {
    let n = rows.len();
    let (q, o) = (q.as_ptr(), out.as_mut_ptr());
    let mut c = 0;
    while c < n {
        let nc = (n - c).min(KR);
        let mut r = 0;
        while r < m {
            let mr = tile_rows(m - r);
            // SAFETY (all): rows r..r + mr of q exist (`tile_rows` never exceeds the rows
            // left), rows c..c + nc of the cache hold k values each, and
            // out[(r + i) * n + c + j] lies inside m * n.
            let (ap, op) = (q.add(r * k), o.add(r * n + c));
            if nc == KR {
                let b = std::array::from_fn(|j| rows[c + j].as_ptr());
                match mr {
                    QR => qk_tile::<QR>(ap, k, b, (op, n)),
                    2 => qk_tile::<2>(ap, k, b, (op, n)),
                    // mr == 1.
                    _ => qk_tile::<1>(ap, k, b, (op, n)),
                }
            } else {
                for i in 0..mr {
                    for j in 0..nc {
                        *op.add(i * n + j) = dot(ap.add(i * k), rows[c + j].as_ptr(), k);
                    }
                }
            }
            r += mr;
        }
        c += nc;
    }
}

/// `out[i * ldo + j] = a_i . b_j` over `k` columns for `R` (1..=[`QR`]) rows of `a`
/// (stride `k`) and the [`KR`] rows `b`.
#[inline(always)]
unsafe fn qk_tile<const R: usize>(
    a: *const f32,
    k: usize,
    b: [*const f32; KR],
    (out, ldo): (*mut f32, usize),
) {
    let mut acc = [[_mm256_setzero_ps(); KR]; R];
    let whole = k / LANES * LANES;
    let mut off = 0;
    while off < whole {
        // The R query vectors in registers, each cache row's vector loaded as it is used:
        // 12 sums + 3 + 1 = 16 registers.
        let av: [__m256; R] = std::array::from_fn(|i| _mm256_loadu_ps(a.add(i * k + off)));
        for (j, &bj) in b.iter().enumerate() {
            let bv = _mm256_loadu_ps(bj.add(off));
            for (row, &ai) in acc.iter_mut().zip(&av) {
                row[j] = _mm256_fmadd_ps(ai, bv, row[j]);
            }
        }
        off += LANES;
    }
    for (i, row) in acc.iter().enumerate() {
        for (j, &s) in row.iter().enumerate() {
            let tail = tail_dot(a.add(i * k), b[j], whole, k);
            *out.add(i * ldo + j) = crate::avx2::sum_lanes(s) + tail;
        }
    }
}

/// `a . b` over `k` elements (two accumulators, then the last `k % 8` in scalar).
#[inline(always)]
unsafe fn dot(a: *const f32, b: *const f32, k: usize) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 2];
    let whole = k / LANES * LANES;
    let mut off = 0;
    while off < whole {
        let s = &mut acc[(off / LANES) % 2];
        *s = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(off)), _mm256_loadu_ps(b.add(off)), *s);
        off += LANES;
    }
    crate::avx2::sum_lanes(_mm256_add_ps(acc[0], acc[1])) + tail_dot(a, b, whole, k)
}

/// `a[from..k] . b[from..k]` in scalar f32 (fewer than 8 elements).
#[inline(always)]
unsafe fn tail_dot(a: *const f32, b: *const f32, from: usize, k: usize) -> f32 {
    (from..k).fold(0.0, |s, t| (*a.add(t)).mul_add(*b.add(t), s))
}

/// `acc[r * d + c] += sum_j p[r * n + j] * rows[j][c]` for columns `c < wide` (`wide` a
/// multiple of 8, <= `d`), `p` [m, n], `n = rows.len()`.
///
/// # Safety
/// AVX2 and FMA must be available; `wide` is a multiple of 8 and at most `d`; `p` holds
/// `m * rows.len()` elements, every row at least `wide`, `acc` `m * d`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gemm_pv(
    p: &[f32],
    rows: &[&[f32]],
    (m, d, wide): (usize, usize, usize),
    acc: &mut [f32],
) {
    let n = rows.len();
    let (p, o) = (p.as_ptr(), acc.as_mut_ptr());
    let mut c = 0;
    while c < wide {
        let nv = if wide - c >= PV * LANES { PV } else { 1 };
        let mut r = 0;
        while r < m {
            let mr = tile_rows(m - r);
            // SAFETY (all): rows r..r + mr of p and acc exist (`tile_rows` never exceeds
            // the rows left), and columns c..c + 8 nv lie below wide <= d in acc and in
            // every value row.
            let g = (p.add(r * n), n, c, o.add(r * d + c), d);
            match (mr, nv) {
                (PR, PV) => pv_tile::<PR, PV>(g, rows),
                (PR, _) => pv_tile::<PR, 1>(g, rows),
                (2, PV) => pv_tile::<2, PV>(g, rows),
                (2, _) => pv_tile::<2, 1>(g, rows),
                (_, PV) => pv_tile::<1, PV>(g, rows),
                _ => pv_tile::<1, 1>(g, rows),
            }
            r += mr;
        }
        c += nv * LANES;
    }
}

/// `R` rows x `C` vectors of `acc` (at `o`, row stride `d`) += `p` (rows of `n`) times
/// columns `c..c + 8 C` of the value rows.
#[inline(always)]
unsafe fn pv_tile<const R: usize, const C: usize>(
    (p, n, c, o, d): (*const f32, usize, usize, *mut f32, usize),
    rows: &[&[f32]],
) {
    let mut acc: [[__m256; C]; R] =
        std::array::from_fn(|i| std::array::from_fn(|j| _mm256_loadu_ps(o.add(i * d + LANES * j))));
    for (t, row) in rows.iter().enumerate() {
        // The R broadcast probabilities in registers, each value vector loaded as it is
        // used: 12 sums + 3 + 1 = 16 registers.
        let v = row.as_ptr().add(c);
        let a: [__m256; R] = std::array::from_fn(|i| _mm256_broadcast_ss(&*p.add(i * n + t)));
        for j in 0..C {
            let b = _mm256_loadu_ps(v.add(LANES * j));
            for (sums, &ai) in acc.iter_mut().zip(&a) {
                sums[j] = _mm256_fmadd_ps(ai, b, sums[j]);
            }
        }
    }
    for (i, sums) in acc.iter().enumerate() {
        for (j, &s) in sums.iter().enumerate() {
            _mm256_storeu_ps(o.add(i * d + LANES * j), s);
        }
    }
}

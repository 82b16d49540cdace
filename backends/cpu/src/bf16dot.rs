//! Products of bf16 matrices on the CPU's native bf16 dot instruction (AVX512-BF16
//! `VDPBF16PS`) where it has one, chosen at run time; elsewhere an f32 loop.
//!
//! The contract's semantics hold: a bf16 x bf16 product is exact in f32 (8 + 8 significant
//! bits), and `VDPBF16PS` adds each product to an f32 accumulator with one rounding, as
//! an f32 multiply-add of the upcast values would. Only the order of the f32 additions
//! differs from other paths (16 lanes, two products per lane and step, then the lanes).
//! Like every `VDPBF16PS`, subnormal inputs and results count as zero (below 2^-126,
//! where the f32 path's contributions are far under any tolerance).

use half::bf16;
use moemla_core::alloc::try_filled_vec;
use moemla_core::{Error, Result};

/// Whether [`gemm_nt`] runs on the native bf16 dot instruction on this CPU.
pub fn native() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[r * n + c] = a[r] . b[c]` for the `m` rows of `a` [m, k] and the `n` rows of `b`
/// [n, k] (bf16, row-major), each an f32 sum of exact products; `out` is [m, n] and is
/// overwritten. Single-threaded (callers parallelise over independent tiles).
///
/// A `k` of 0, lengths that do not make whole rows of `k`, or an `out` that is not
/// `m * n` long are [`Error::Device`]; nothing is read or written then.
pub fn gemm_nt(a: &[bf16], b: &[bf16], k: usize, out: &mut [f32]) -> Result<()> {
    let rows = |len: usize| Some(len / k.max(1)).filter(|r| k > 0 && r * k == len);
    let (m, n) = match rows(a.len()).zip(rows(b.len())) {
        Some((m, n)) if m.checked_mul(n) == Some(out.len()) => (m, n),
        _ => {
            return Err(Error::Device {
                backend: crate::NAME.to_string(),
                call: "bf16 gemm_nt".to_string(),
                message: format!(
                    "a ({} elements) and b ({}) must be whole rows of k = {k} >= 1, out ({}) \
                     rows(a) x rows(b)",
                    a.len(),
                    b.len(),
                    out.len()
                ),
            })
        }
    };
    #[cfg(target_arch = "x86_64")]
    if native() {
        // SAFETY: the three AVX-512 features were detected at run time by `native`, and
        // the lengths were checked above: `a` holds m rows of k, `b` n rows of k, `out`
        // m * n elements, which is all `x86::gemm_nt` reads and writes.
        unsafe { x86::gemm_nt(a, b, m, n, k, out) };
        return Ok(());
    }
    portable(a, b, (m, n, k), out);
    Ok(())
}

/// `values` as bf16 when every one is a bf16 value (f32 values upcast from bf16; NaN
/// counts as one), else `None`: rounding would change the result, so the caller keeps its
/// f32 path. Allocated fallibly ([`Error::OutOfMemory`]).
pub fn exact(values: &[f32]) -> Result<Option<Vec<bf16>>> {
    if !values
        .iter()
        .all(|&v| v.is_nan() || bf16::from_f32(v).to_f32() == v)
    {
        return Ok(None);
    }
    let mut out: Vec<bf16> = try_filled_vec(values.len(), "cpu bf16 dot operand")?;
    for (o, &v) in out.iter_mut().zip(values) {
        *o = bf16::from_f32(v);
    }
    Ok(Some(out))
}

/// Rows `first..first + rows` of the row-major `matrix` of `k` columns;
/// [`Error::Device`] when they are not all there.
pub fn rows(matrix: &[bf16], first: usize, rows: usize, k: usize) -> Result<&[bf16]> {
    let span = first
        .checked_mul(k)
        .zip(first.checked_add(rows).and_then(|end| end.checked_mul(k)));
    span.and_then(|(a, b)| matrix.get(a..b))
        .ok_or_else(|| Error::Device {
            backend: crate::NAME.to_string(),
            call: "bf16 rows".to_string(),
            message: format!(
                "rows {first}..{first}+{rows} of {k} columns outside a matrix of {} elements",
                matrix.len()
            ),
        })
}

/// The f32 path: each product upcast, 16 partial sums per dot product; `a` [m, k], `b`
/// [n, k], `out` [m, n].
fn portable(a: &[bf16], b: &[bf16], (m, n, k): (usize, usize, usize), out: &mut [f32]) {
    for (ar, o) in a.chunks_exact(k).zip(out.chunks_mut(n)).take(m) {
        for (br, x) in b.chunks_exact(k).zip(o.iter_mut()) {
            let mut acc = [0.0f32; 16];
            for (i, (p, q)) in ar.iter().zip(br).enumerate() {
                acc[i % 16] += p.to_f32() * q.to_f32();
            }
            *x = acc.iter().sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use half::bf16;
    use std::arch::x86_64::*;

    /// Rows of `a` per register tile.
    const MR: usize = 4;
    /// Rows of `b` per register tile.
    const NR: usize = 4;

    /// See [`super::gemm_nt`]: 4 x 4 register tiles (4 x 3, 4 x 2, 4 x 1 and 1 x 4 ... at
    /// the edges) of 32-wide `VDPBF16PS` steps, the last step of every row masked (any
    /// `k`, odd included); a row of `a` stays in L1 across a whole pass over `b`.
    ///
    /// # Safety
    /// AVX-512F, AVX-512BW and AVX512-BF16 must be available; `a` holds `m * k`, `b`
    /// `n * k` and `out` `m * n` elements.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn gemm_nt(a: &[bf16], b: &[bf16], m: usize, n: usize, k: usize, out: &mut [f32]) {
        let (a, b, o) = (
            a.as_ptr().cast::<u16>(),
            b.as_ptr().cast::<u16>(),
            out.as_mut_ptr(),
        );
        let mut r = 0;
        while r < m {
            let mr = (m - r).min(MR);
            let mut c = 0;
            while c < n {
                let nr = (n - c).min(NR);
                // SAFETY (all four): rows r..r + mr of a and c..c + nr of b exist (mr, nr
                // clipped to m, n), and out[(r + i) * n + c + j] for i < mr, j < nr is
                // inside the m * n elements.
                let (ap, bp, op) = (a.add(r * k), b.add(c * k), o.add(r * n + c));
                // Edge tiles keep every row of `b` they load in registers across the
                // rows of `a` (4 x 3, 4 x 2, ...), rather than one column at a time.
                if mr == MR && c == 0 && r + 2 * MR <= m {
                    // The first pass over these rows of `a` also prefetches the next MR
                    // rows (which exist: r + 2 MR <= m): rows streamed from memory (one
                    // page each, where the hardware prefetcher stops) arrive while this
                    // block computes.
                    let next = ap.add(MR * k);
                    match nr {
                        NR => tile::<MR, NR, true>(ap, bp, k, op, n, next),
                        3 => tile::<MR, 3, true>(ap, bp, k, op, n, next),
                        2 => tile::<MR, 2, true>(ap, bp, k, op, n, next),
                        _ => tile::<MR, 1, true>(ap, bp, k, op, n, next),
                    }
                } else if mr == MR {
                    match nr {
                        NR => tile::<MR, NR, false>(ap, bp, k, op, n, ap),
                        3 => tile::<MR, 3, false>(ap, bp, k, op, n, ap),
                        2 => tile::<MR, 2, false>(ap, bp, k, op, n, ap),
                        _ => tile::<MR, 1, false>(ap, bp, k, op, n, ap),
                    }
                } else {
                    for i in 0..mr {
                        let (ai, oi) = (ap.add(i * k), op.add(i * n));
                        match nr {
                            NR => tile::<1, NR, false>(ai, bp, k, oi, n, ai),
                            3 => tile::<1, 3, false>(ai, bp, k, oi, n, ai),
                            2 => tile::<1, 2, false>(ai, bp, k, oi, n, ai),
                            _ => tile::<1, 1, false>(ai, bp, k, oi, n, ai),
                        }
                    }
                }
                c += nr;
            }
            r += mr;
        }
    }

    /// 32 bf16 from `p`, of which the first `live` (<= 32) are loaded and the rest zero.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(crate) unsafe fn load(p: *const u16, live: usize) -> __m512bh {
        let v = if live >= 32 {
            _mm512_loadu_si512(p.cast())
        } else {
            // Masked-off elements are neither read nor faulted on.
            _mm512_maskz_loadu_epi16((1u32 << live) - 1, p.cast())
        };
        // SAFETY: both are plain 512-bit vectors (32 x 16 bits).
        std::mem::transmute::<__m512i, __m512bh>(v)
    }

    /// `out[i * ldo + j] = a_i . b_j` for `R` rows of `a` and `C` rows of `b`, `k` wide;
    /// with `PF`, the `R` rows at `next` (`k` wide, which must exist) are prefetched into
    /// L2 along the way.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn tile<const R: usize, const C: usize, const PF: bool>(
        a: *const u16,
        b: *const u16,
        k: usize,
        out: *mut f32,
        ldo: usize,
        next: *const u16,
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut off = 0;
        while off < k {
            let live = (k - off).min(32);
            if PF {
                // Into L2: measured at the experts' shapes with weights streamed from
                // memory (2-core Zen 5), 10-80% faster than no prefetch or one into L1.
                for i in 0..R {
                    _mm_prefetch::<_MM_HINT_T1>(next.add(i * k + off).cast());
                }
            }
            let mut bv = [load(b.add(off), live); C];
            for (j, v) in bv.iter_mut().enumerate().skip(1) {
                *v = load(b.add(j * k + off), live);
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let av = load(a.add(i * k + off), live);
                for (s, &bj) in row.iter_mut().zip(&bv) {
                    *s = _mm512_dpbf16_ps(*s, av, bj);
                }
            }
            off += live;
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, &s) in row.iter().enumerate() {
                *out.add(i * ldo + j) = _mm512_reduce_add_ps(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform-ish bf16 values in [-2, 2) from a fixed-seed generator.
    fn values(len: usize, seed: u64) -> Vec<bf16> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                bf16::from_f32(((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0)
            })
            .collect()
    }

    /// The f64 reference: exact products, summed in f64.
    fn reference(a: &[bf16], b: &[bf16], k: usize) -> Vec<f64> {
        let mut out = Vec::new();
        for ar in a.chunks_exact(k) {
            for br in b.chunks_exact(k) {
                out.push(
                    ar.iter()
                        .zip(br)
                        .map(|(x, y)| x.to_f64() * y.to_f64())
                        .sum(),
                );
            }
        }
        out
    }

    /// The rounding bound of an f32 sum of exact products `p` on 16 lanes (k / 16 additions
    /// per lane, then at most 16 to combine the lanes): (k / 16 + 32) * eps * sum |p|.
    fn bound(a: &[bf16], b: &[bf16]) -> f64 {
        let abs: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x.to_f64() * y.to_f64()).abs())
            .sum();
        (a.len() / 16 + 32) as f64 * f32::EPSILON as f64 * abs
    }

    #[test]
    fn matches_an_f64_reference_at_odd_and_tail_shapes() {
        // k: below one step, one step, odd, one past, several steps with a tail; m and n
        // cover full 4 x 4 tiles and every remainder.
        for (m, n, k) in [
            (1, 1, 1),
            (3, 5, 7),
            (4, 4, 32),
            (5, 9, 33),
            (9, 6, 577),
            (4, 7, 65),
            (6, 11, 96),
            (8, 8, 2048),
        ] {
            let (a, b) = (values(m * k, 1 + k as u64), values(n * k, 99 + m as u64));
            let mut out = vec![f32::NAN; m * n];
            gemm_nt(&a, &b, k, &mut out).unwrap();
            let want = reference(&a, &b, k);
            // The f32 path agrees to the same bound (only the summation order differs).
            let mut port = vec![f32::NAN; m * n];
            portable(&a, &b, (m, n, k), &mut port);
            for (idx, ((&g, &p), &w)) in out.iter().zip(&port).zip(&want).enumerate() {
                let (ar, br) = (&a[idx / n * k..][..k], &b[idx % n * k..][..k]);
                let tol = bound(ar, br);
                assert!(
                    (g as f64 - w).abs() <= tol,
                    "m {m} n {n} k {k} [{idx}]: {g} vs {w}"
                );
                assert!((p as f64 - w).abs() <= tol, "f32 path [{idx}]: {p} vs {w}");
            }
        }
    }

    #[test]
    fn products_are_exact_when_the_sum_is() {
        // Integers: every partial sum is exact in f32, so the native path must be exact.
        let k = 101;
        let a: Vec<bf16> = (0..2 * k)
            .map(|i| bf16::from_f32((i % 13) as f32 - 6.0))
            .collect();
        let b: Vec<bf16> = (0..3 * k)
            .map(|i| bf16::from_f32((i % 7) as f32 - 3.0))
            .collect();
        let mut out = vec![0.0; 6];
        gemm_nt(&a, &b, k, &mut out).unwrap();
        let want: Vec<f32> = reference(&a, &b, k).iter().map(|&w| w as f32).collect();
        assert_eq!(out, want);
    }

    #[test]
    fn exact_converts_only_bf16_values_and_rows_are_bounds_checked() {
        let v = [1.5f32, -0.0, f32::NAN, f32::INFINITY, bf16::MAX.to_f32()];
        let got = exact(&v).unwrap().unwrap();
        assert_eq!(got[0].to_f32(), 1.5);
        assert!(got[2].is_nan());
        // 1 + 2^-10 needs 11 significant bits: not a bf16 value.
        assert_eq!(exact(&[1.0, 1.0 + 1.0 / 1024.0]).unwrap(), None);
        let m = values(12, 3);
        assert_eq!(rows(&m, 1, 2, 4).unwrap(), &m[4..12]);
        assert!(rows(&m, 2, 2, 4).is_err());
        assert!(rows(&m, usize::MAX, 2, 4).is_err());
    }

    #[test]
    fn mismatched_lengths_and_k_zero_are_errors() {
        let a = values(6, 1);
        let mut out = vec![0.0; 4];
        // 6 elements are not whole rows of 4.
        assert!(gemm_nt(&a, &a[..4], 4, &mut out).is_err());
        // 2 x 2 products need 4 outputs, not 3.
        assert!(gemm_nt(&a[..4], &a[..4], 2, &mut out[..3]).is_err());
        assert!(gemm_nt(&a, &a, 0, &mut out).is_err());
        assert!(gemm_nt(&[], &[], 0, &mut []).is_err());
        // The failed calls wrote nothing.
        assert_eq!(out, vec![0.0; 4]);
    }
}

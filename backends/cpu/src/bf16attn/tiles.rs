//! `acc += P V` of bf16 attention on AMX tiles ([`crate::tiles::gemm_pairs`], adding): `P`
//! (the probabilities rounded to bf16, rows padded with zeros to whole tile steps of 32
//! positions) is the tiles' `a`, read in place; the value rows are paired by position,
//! rows `2t` and `2t + 1` interleaved column by column (`[positions / 2][d]` u32, zero
//! pairs for the padding), which is the layout a tile of `b` must have (Intel SDM vol. 2,
//! `TDPBF16PS`: each 32-bit element of `b` holds the pair of the reduction dimension).
//! The accumulators are loaded from `acc` and stored back, so each output carries its f32
//! sum on across chunks, as the other paths do.

use super::{round_rows_padded, PvBuffers};
use crate::f32attn::{device, sized};
use crate::tiles::{COLS, STEP};
use half::bf16;
use moemla_core::Result;
use std::arch::x86_64::*;

/// See [`super::gemm_pv`], for `m` query rows and `n` positions as [`pv_rows`] checked
/// them: on tiles wherever this process may use them (else the pair kernels: `P` rounded
/// as [`super::round_rows`] does).
pub(super) fn gemm_pv(
    s: &[f32],
    (m, n): (usize, usize),
    rows: &[&[bf16]],
    d: usize,
    acc: &mut [f32],
    buf: &mut PvBuffers,
) -> Result<()> {
    let width = n.div_ceil(STEP) * STEP;
    if !crate::bf16dot::on_tiles(width) {
        super::round_rows(s, n, &mut buf.p)?;
        return super::gemm_pairs_pv(&buf.p, rows, d, acc);
    }
    round_rows_padded(true, s, (n, width), &mut buf.p)?;
    let d_pad = d.div_ceil(COLS) * COLS;
    let len = (width / 2)
        .checked_mul(d_pad)
        .ok_or_else(|| device("bf16 gemm_pv", format!("{n} value rows of {d} overflow")))?;
    sized(&mut buf.v, len, "bf16 paired value rows")?;
    // SAFETY: `on_tiles` checked AMX and the AVX-512 features (`native`) at run time;
    // every row holds at least d elements and `buf.v` width / 2 rows of d_pad words; `p`
    // holds m rows of width (a multiple of 32) and `acc` m rows of d, read and written.
    unsafe {
        pair_rows(rows, d, &mut buf.v[..len], d_pad);
        crate::tiles::gemm_pairs(
            buf.p.as_ptr().cast(),
            (m, width),
            (buf.v.as_ptr(), d, d_pad),
            (acc.as_mut_ptr(), d),
            crate::tiles::Sums::Add,
        );
    }
    Ok(())
}

/// The query rows `m` of `acc += P V` for probabilities `s` over `n` positions, `rows`
/// value rows and `acc` `acc_len` long: [`moemla_core::Error::Device`] unless `s` is
/// [m, n] and `acc` [m, d] with `n` and `d` at least 1, and there are `n` rows each at
/// least `d` long.
pub(super) fn pv_rows(
    s: &[f32],
    n: usize,
    rows: &[&[bf16]],
    d: usize,
    acc_len: usize,
) -> Result<usize> {
    let m = acc_len / d.max(1);
    let fits = d > 0
        && n > 0
        && rows.len() == n
        && m * d == acc_len
        && m.checked_mul(n) == Some(s.len())
        && rows.iter().all(|r| r.len() >= d);
    if !fits {
        return Err(device(
            "bf16 gemm_pv",
            format!(
                "probabilities ({} elements), {} value rows (each at least d = {d} >= 1) \
                 and acc ({acc_len}) do not make [m, {n}] x [{n}, {d}] into [m, {d}]",
                s.len(),
                rows.len(),
            ),
        ));
    }
    Ok(m)
}

/// `out[t * d_pad + c]` = column `c` of rows `2t` (low half) and `2t + 1` (high half) for
/// `c < d`, zero for `c` from `d` to `d_pad` and for rows past `rows` (every `t` that
/// `out` holds): 32 columns of each row at a time, interleaved in registers.
///
/// # Safety
/// AVX-512F and AVX-512BW must be available; every row holds at least `d` elements,
/// `d_pad` is `d` rounded up to a multiple of 16 and `out` is whole rows of `d_pad`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pair_rows(rows: &[&[bf16]], d: usize, out: &mut [u32], d_pad: usize) {
    // Word e of the low half takes column e / 2 of the first row (e even) or of the
    // second (e odd; the second operand's words are indices 32..64); the high half the
    // same 16 columns on.
    let at = |from: i16| -> [i16; 32] {
        std::array::from_fn(|e| from + e as i16 / 2 + e as i16 % 2 * 32)
    };
    let (lo, hi) = (at(0), at(16));
    let (lo, hi) = (
        _mm512_loadu_si512(lo.as_ptr().cast()),
        _mm512_loadu_si512(hi.as_ptr().cast()),
    );
    let half = |t: usize, c: usize, mask: __mmask32| match rows.get(t) {
        // SAFETY: the mask covers columns c..min(c + 32, d) of a row of at least d.
        Some(row) => _mm512_maskz_loadu_epi16(mask, row.as_ptr().add(c).cast()),
        None => _mm512_setzero_si512(),
    };
    for (t, dst) in out.chunks_exact_mut(d_pad).enumerate() {
        let dst = dst.as_mut_ptr();
        let mut c = 0;
        while c < d_pad {
            // c < d: a multiple of 16 below d rounded up to 16.
            let mask = crate::lanes::first32(d - c);
            let (a, b) = (half(2 * t, c, mask), half(2 * t + 1, c, mask));
            // SAFETY: columns c..c + 16 of the row lie within d_pad (a multiple of 16),
            // and c + 16..c + 32 too where stored.
            _mm512_storeu_si512(dst.add(c).cast(), _mm512_permutex2var_epi16(a, lo, b));
            if c + 16 < d_pad {
                let high = _mm512_permutex2var_epi16(a, hi, b);
                _mm512_storeu_si512(dst.add(c + 16).cast(), high);
            }
            c += 32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_interleave_rows_with_zero_padding() {
        if !crate::bf16dot::native() {
            eprintln!("skipped: no AVX-512 BF16 here");
            return;
        }
        // d: a partial vector, whole 32-column steps with a 16-column tail, a partial
        // tail; 5 rows (a missing partner) into 4 pair rows (one all padding).
        for d in [5usize, 48, 70] {
            let d_pad = d.div_ceil(COLS) * COLS;
            let vals = crate::test_util::bf16_values(5 * (d + 3), 3, -2.0);
            let rows: Vec<&[bf16]> = vals.chunks_exact(d + 3).map(|r| &r[..d]).collect();
            let mut out = vec![u32::MAX; 4 * d_pad];
            // SAFETY: checked above; rows of d, out 4 rows of d_pad.
            unsafe { pair_rows(&rows, d, &mut out, d_pad) };
            for t in 0..4 {
                for c in 0..d_pad {
                    let word = |r: usize| match rows.get(r) {
                        Some(row) if c < d => row[c].to_bits() as u32,
                        _ => 0,
                    };
                    let want = word(2 * t) | word(2 * t + 1) << 16;
                    assert_eq!(out[t * d_pad + c], want, "d {d} [{t},{c}]");
                }
            }
        }
    }
}

//! `acc += P V` on AMX tiles for a few query rows, the value rows read in place instead of
//! paired by position ([`super::tiles`]). A tile of `b` holds pairs of the reduction
//! dimension (Intel SDM vol. 2, `TDPBF16PS`); read straight from 16 cache rows, a tile row
//! is one position's 32 consecutive values, so its pairs are columns `2c` and `2c + 1`.
//! `P` is spread to meet that: one tile of `a` holds each probability in the low half of
//! its pair and zero in the high half, a second the other way round, so the two products
//! against one tile of values give the even columns and the odd columns apart. That is
//! twice the tile products of the paired layout and no pass over the value rows; with few
//! query rows the pass costs more than the products it saves (see [`MAX_ROWS`]).
//!
//! Each chunk's sums start from zero on the tiles and are added to `acc` in f32 with the
//! columns interleaved back. A non-finite value in a row also turns its neighbouring
//! column's sum into NaN (zero times infinity); in MLA the value rows are the first
//! columns of the key rows, so such a row has already made that position's score, and so
//! the whole output row, non-finite.

use super::{round_rows_padded, PvBuffers};
use crate::aligned::Aligned;
use crate::f32attn::{device, sized};
use crate::tiles::{self, Steps, COLS, ROWS, ROW_BYTES};
use half::bf16;
use moemla_core::{amx, Result};
use std::arch::x86_64::*;

/// Most query rows whose `P V` takes the value rows in place: one tile of rows (more
/// rows share the pairing pass over more products). Intel Xeon with AMX, 2 cores,
/// `moemla bench --backend cpu --op mla_decode --dtype bf16 --filter "s_q=1 h_q=16"`
/// (b 4), four alternated runs against the pairs: 1024 positions 279-371 -> 245-312 us,
/// 4096 0.96-1.13 -> 0.80-1.02 ms, the FP8 cache 327-376 -> 288-309 us and 1.06-1.32 ->
/// 0.90-1.02 ms. `perf` at 16 rows: pairing the value rows was 20% of the op and the
/// products 15%; spread, the products 26% and adding the sums back 7%. At 32 rows (s_q
/// 2) no gain in three runs, so two tiles of rows keep the pairs.
pub const MAX_ROWS: usize = 16;

/// Value columns per tile of `b`: one tile row, 64 bytes.
const WIDE: usize = 2 * COLS;

/// Whether [`gemm_pv`] takes `m` query rows against value rows `d` wide (whole tiles).
pub fn takes(m: usize, d: usize) -> bool {
    m <= MAX_ROWS && d > 0 && d.is_multiple_of(WIDE)
}

/// Whole groups of 16 value rows at one stride, in place or copied: tile steps read
/// them as they lie.
#[derive(Clone, Copy)]
struct Run {
    /// The first group (positions `16 * group` on).
    group: usize,
    /// Groups in the run.
    groups: usize,
    /// The first row's first value.
    base: *const bf16,
    /// Bytes from a row to the next.
    stride: usize,
}

/// See [`super::gemm_pv`], for `m` query rows and `n` positions as
/// [`super::tiles::pv_rows`] checked them, where [`takes`] holds and this process may use
/// tiles.
pub(super) fn gemm_pv(
    s: &[f32],
    (m, n): (usize, usize),
    rows: &[&[bf16]],
    d: usize,
    acc: &mut [f32],
    buf: &mut PvBuffers,
) -> Result<()> {
    if !takes(m, d) {
        return Err(device(
            "bf16 spread gemm_pv",
            format!("{m} query rows (at most {MAX_ROWS}) and d = {d} (whole tiles of {WIDE})"),
        ));
    }
    let width = n.div_ceil(ROWS) * ROWS;
    round_rows_padded(true, s, (n, width), &mut buf.p)?;
    // The probabilities spread: [2][m][width] words, the low halves, then the high.
    sized(&mut buf.v, 2 * m * width, "bf16 spread probabilities")?;
    let (low, high) = buf.v.split_at_mut(m * width);
    for ((p, lo), hi) in buf.p.iter().zip(low.iter_mut()).zip(high.iter_mut()) {
        (*lo, *hi) = (p.to_bits() as u32, (p.to_bits() as u32) << 16);
    }
    let runs = runs(rows, d, &mut buf.rows)?;
    // SAFETY: tiles are enabled (the caller's check); the runs' rows hold d values each
    // (checked, or copied d wide); the spread rows hold `width` words, m of each half;
    // `acc` is m rows of d.
    unsafe { products(&buf.v, (m, width), &runs, d, acc) };
    Ok(())
}

/// The value rows as [`Run`]s: groups of 16 rows at one positive stride in place, the
/// others (and the last `n % 16` rows, with zero rows after them) copied `d` wide into
/// `copies`.
fn runs(rows: &[&[bf16]], d: usize, copies: &mut Aligned<bf16>) -> Result<Vec<Run>> {
    let at = |r: &[bf16]| r.as_ptr() as usize;
    let stride = |g: &[&[bf16]]| {
        let step = at(g[1]).wrapping_sub(at(g[0]));
        let even = (step as isize) > 0
            && g.iter().enumerate().all(|(i, r)| {
                i.checked_mul(step).and_then(|o| o.checked_add(at(g[0]))) == Some(at(r))
            });
        even.then_some(step)
    };
    let groups: Vec<Option<usize>> = rows
        .chunks(ROWS)
        .map(|g| match g.len() {
            ROWS => stride(g),
            _ => None,
        })
        .collect();
    let copied = groups.iter().filter(|g| g.is_none()).count();
    sized(
        copies,
        copied * ROWS * d,
        "bf16 value rows copied for tiles",
    )?;
    let mut runs: Vec<Run> = Vec::with_capacity(groups.len());
    let mut slots = copies.chunks_exact_mut(ROWS * d);
    for (group, (rows, stride)) in rows.chunks(ROWS).zip(groups).enumerate() {
        let (base, stride) = match stride {
            Some(stride) => (rows[0].as_ptr(), stride),
            None => {
                let slot = slots.next().ok_or_else(|| {
                    device("bf16 spread gemm_pv", "a group without a copy slot".into())
                })?;
                slot.fill(bf16::ZERO);
                for (row, dst) in rows.iter().zip(slot.chunks_exact_mut(d)) {
                    dst.copy_from_slice(&row[..d]);
                }
                (slot.as_ptr(), d * 2)
            }
        };
        match runs.last_mut() {
            Some(last)
                if last.stride == stride
                    && (last.base as usize).wrapping_add(last.groups * ROWS * stride)
                        == base as usize =>
            {
                last.groups += 1;
            }
            _ => runs.push(Run {
                group,
                groups: 1,
                base,
                stride,
            }),
        }
    }
    Ok(runs)
}

/// `acc += P V` for the spread probabilities `spread` (`[2][m][width]` words) and the
/// value runs: per 16 query rows, per 64 value columns (32 at the end where `d` has
/// them), the four sums zeroed, every run's steps, the sums stored and added to `acc`.
///
/// # Safety
/// Tiles are enabled; `spread` is `2 m width` words; every run's rows hold `d` values
/// (a multiple of 32) and its groups lie below `width / 16`; `acc` is `m` rows of `d`.
unsafe fn products(
    spread: &[u32],
    (m, width): (usize, usize),
    runs: &[Run],
    d: usize,
    acc: &mut [f32],
) {
    let lda = width * 4;
    let mut r0 = 0;
    // SAFETY (all below): as this function's contract; each tile step reads 16 words of
    // `rows` spread rows at a group below width / 16, and 16 rows of 64 bytes at column
    // c0 < d of a run's rows.
    unsafe {
        while r0 < m {
            let rows = ROWS.min(m - r0);
            tiles::config(rows).load();
            let a = spread.as_ptr().add(r0 * width).cast::<u8>();
            let mut c0 = 0;
            while c0 < d {
                let pair = c0 + 2 * WIDE <= d;
                let step = |run: &Run| Steps {
                    a: a.add(run.group * ROW_BYTES),
                    lda,
                    a_tile: m * lda,
                    b: run.base.add(c0).cast(),
                    ldb: run.stride,
                    steps: run.groups,
                };
                tiles::zero_sums::<2, 2>();
                for run in runs {
                    match pair {
                        true => tiles::steps::<2, 2>(&step(run)),
                        false => tiles::steps::<2, 1>(&step(run)),
                    }
                }
                let mut sums = [[0.0f32; ROWS * COLS]; 4];
                let base = sums.as_mut_ptr();
                let o = |t: usize| base.add(t).cast::<u8>();
                amx::store::<0>(o(0), ROW_BYTES);
                amx::store::<2>(o(2), ROW_BYTES);
                if pair {
                    amx::store::<1>(o(1), ROW_BYTES);
                    amx::store::<3>(o(3), ROW_BYTES);
                }
                let acc = &mut acc[r0 * d..(r0 + rows) * d];
                interleave_add(&sums[0], &sums[2], acc, (d, c0), rows);
                if pair {
                    interleave_add(&sums[1], &sums[3], acc, (d, c0 + WIDE), rows);
                }
                c0 += if pair { 2 * WIDE } else { WIDE };
            }
            r0 += rows;
        }
        amx::release();
    }
}

/// `acc[i * d + c0 + 2c] += even[i * 16 + c]`, `acc[i * d + c0 + 2c + 1] += odd[i * 16 +
/// c]` for the first `rows` rows and `c < 16`.
///
/// # Safety
/// AVX-512F is available; `acc` holds `rows` rows of `d` with `c0 + 32 <= d`.
#[target_feature(enable = "avx512f")]
unsafe fn interleave_add(
    even: &[f32; ROWS * COLS],
    odd: &[f32; ROWS * COLS],
    acc: &mut [f32],
    (d, c0): (usize, usize),
    rows: usize,
) {
    // Lane 2e of the first half takes even[e], lane 2e + 1 odd[e] (the second operand's
    // lanes are 16..32); the second half the same from e = 8.
    const LO: [i32; 16] = [0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23];
    const HI: [i32; 16] = [8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31];
    // SAFETY: the index arrays are 16 i32; rows i < rows of `even` and `odd` are 16
    // floats; acc[i * d + c0..+ 32] lies within acc (the contract).
    unsafe {
        let (lo, hi) = (
            _mm512_loadu_si512(LO.as_ptr().cast()),
            _mm512_loadu_si512(HI.as_ptr().cast()),
        );
        for i in 0..rows {
            let e = _mm512_loadu_ps(even.as_ptr().add(i * COLS));
            let o = _mm512_loadu_ps(odd.as_ptr().add(i * COLS));
            let dst = acc.as_mut_ptr().add(i * d + c0);
            let first = _mm512_add_ps(_mm512_loadu_ps(dst), _mm512_permutex2var_ps(e, lo, o));
            let second = _mm512_add_ps(
                _mm512_loadu_ps(dst.add(COLS)),
                _mm512_permutex2var_ps(e, hi, o),
            );
            _mm512_storeu_ps(dst, first);
            _mm512_storeu_ps(dst.add(COLS), second);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{bf16_values, Lcg};

    #[test]
    fn matches_an_f64_reference_over_in_place_and_copied_rows() {
        if !crate::bf16dot::on_tiles(WIDE) {
            eprintln!("skipped: no AMX tiles here");
            return;
        }
        // Rows `stride` apart in one block, except that positions 40..44 come from a
        // second block (their group is copied) and 70 positions leave a partial group:
        // runs in place, merged and copied. m 16 and 5 (a partial row tile); d 96 (a
        // column pair and a single column tile) and 64; acc starts nonzero (added to).
        for (m, d, n) in [
            (16usize, 96usize, 70usize),
            (5, 64, 48),
            (16, 32, 16),
            (3, 96, 7),
        ] {
            let stride = d + 40;
            let block = bf16_values(n * stride, 7, -2.0);
            let other = bf16_values(4 * stride, 8, -2.0);
            let rows: Vec<&[bf16]> = (0..n)
                .map(|j| match j {
                    40..44 => &other[(j - 40) * stride..(j - 40) * stride + d + 3],
                    _ => &block[j * stride..j * stride + d],
                })
                .collect();
            let s = Lcg::new(9).vec(m * n, 0.0, 1.0);
            let before = Lcg::new(10).vec(m * d, -1.0, 1.0);
            let mut acc = before.clone();
            let mut buf = PvBuffers::default();
            gemm_pv(&s, (m, n), &rows, d, &mut acc, &mut buf).unwrap();
            for i in 0..m {
                for c in 0..d {
                    let terms: Vec<f64> = (0..n)
                        .map(|j| {
                            let p = bf16::from_f32(s[i * n + j]).to_f32() as f64;
                            p * rows[j][c].to_f32() as f64
                        })
                        .collect();
                    let want = before[i * d + c] as f64 + terms.iter().sum::<f64>();
                    let got = acc[i * d + c] as f64;
                    // The f32 rounding bound of a sum of n + 1 exact terms, in any order.
                    let size =
                        before[i * d + c].abs() as f64 + terms.iter().map(|t| t.abs()).sum::<f64>();
                    let bound = (n as f64 + 1.0) * f32::EPSILON as f64 * size;
                    assert!(
                        (got - want).abs() <= bound,
                        "m {m} d {d} n {n} [{i},{c}]: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn shapes_it_does_not_take_are_errors_not_writes() {
        // d 48 (not whole tiles of 32 values) and 17 query rows (more than one tile of
        // rows); other shapes are `super::tiles::pv_rows`' to check.
        let vals = bf16_values(4 * 64, 3, -2.0);
        let rows: Vec<&[bf16]> = vals.chunks_exact(64).collect();
        let mut buf = PvBuffers::default();
        for (m, d) in [(2usize, 48usize), (17, 64)] {
            let s = vec![0.5f32; m * 4];
            let mut acc = vec![1.0f32; m * d];
            assert!(gemm_pv(&s, (m, 4), &rows, d, &mut acc, &mut buf).is_err());
            assert!(acc.iter().all(|&x| x == 1.0), "m {m} d {d}");
        }
    }
}

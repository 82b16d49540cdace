//! The quad layout of a packed right-hand operand (x86-64, AVX512-BF16): for few rows of
//! `b` (an expert's tokens), groups of 4 rows x 4 column pairs per 512-bit vector,
//! `[ceil(k / 8)][ceil(n / 4)][4 rows][4 pairs]` u32: each 128-bit lane of a vector holds
//! one row of `b`. A 16-byte piece of a row of `a` (4 pairs) is broadcast to the four
//! 128-bit lanes and meets 4 rows of `b` per `VDPBF16PS`; each output is the sum of the 4
//! f32 elements of its 128-bit lane at the end. Rows of `b` fill vectors 4 at a time
//! instead of 16: 24 tokens use 24 f32 elements, not 32 (the pair layout's two vectors
//! of 16), while each instruction still does 32 products.
//!
//! Each output adds its products on 4 f32 elements, each one chain (two products per
//! step, k / 4 additions), then the 4 elements (2 additions).

use half::bf16;
use std::arch::x86_64::*;

/// Whether `n` rows of `b` are packed in quads: from 4 to 24 rows, but for 16 (one whole
/// vector of the pair layout). A 2-core Zen 5, one `a` of 512 MiB streamed through 512-row
/// tiles at k = 2048, both cores, GFLOP/s (quads against the pair layout, or against the
/// row dots below 16 rows): 4 rows 203/189, 8 rows 350/276, 14 rows 578/380, 16 rows
/// 655/674, 20 rows 740/606, 24 rows 783/717, 25 rows 538/768, 32 rows 623/974 (from 25
/// rows the quads would need two passes over `a`, each of its pieces read twice).
pub fn pays(n: usize) -> bool {
    (4..=24).contains(&n) && n != 16
}

/// Rows of `b` per group (one 128-bit lane each).
const ROWS: usize = 4;
/// Bf16 columns per step (4 pairs).
const STEP: usize = 8;
/// Most groups (24 rows of `b`).
const MAX_GROUPS: usize = 6;

/// u32 words of `n` rows of `k` packed in quads (`None` where that overflows).
pub fn packed_len(n: usize, k: usize) -> Option<usize> {
    n.div_ceil(ROWS)
        .checked_mul(ROWS * 4)?
        .checked_mul(k.div_ceil(STEP))
}

/// Packs `b` (`n` rows of `k` bf16) into `xq` (zero past `n` and past `k`).
///
/// # Safety
/// AVX-512F/BW/VL and AVX512-BF16 must be available; `b` holds `n * k` elements and `xq`
/// at least [`packed_len`]`(n, k)` words.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub unsafe fn pack(b: &[bf16], n: usize, k: usize, xq: &mut [u32]) {
    let (b, xq) = (b.as_ptr().cast::<u16>(), xq.as_mut_ptr());
    let groups = n.div_ceil(ROWS);
    for s in 0..k.div_ceil(STEP) {
        let c = s * STEP;
        let live = (k - c).min(STEP);
        let mask = ((1u16 << live) - 1) as u8;
        for row in 0..groups * ROWS {
            let piece = if row < n {
                // SAFETY: columns c..c + live of row `row` exist; masked-off ones are not
                // read.
                _mm_maskz_loadu_epi16(mask, b.add(row * k + c).cast())
            } else {
                _mm_setzero_si128()
            };
            // SAFETY: word (s, row / 4, row % 4, 0) + 4 <= packed_len.
            _mm_storeu_si128(xq.add((s * groups) * 16 + row * 4).cast(), piece);
        }
    }
}

/// `out[i * ldo + j] = row(i) . b_j` for `i < m` (each row `k` long) and the `n` rows of
/// `b` packed at `xq` by [`pack`], `n` at most 24 ([`pays`]): every group in registers at
/// once, so each piece of a row is read once.
///
/// # Safety
/// As [`pack`]'s features; `1 <= n <= 24`, `row(i)` for `i < m` points at `k` readable
/// elements, `xq` at [`packed_len`]`(n, k)` words, and `o + i * ldo + j` (`i < m`,
/// `j < n`) is writable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub unsafe fn multiply(
    row: impl Fn(usize) -> *const u16 + Copy,
    (m, k): (usize, usize),
    (xq, n): (*const u32, usize),
    (o, ldo): (*mut f32, usize),
) {
    let groups = n.div_ceil(ROWS);
    debug_assert!((1..=MAX_GROUPS).contains(&groups), "{n} rows of b");
    let at = Operand {
        k,
        xq,
        stride: groups * 16,
        out: o,
        ldo,
        cols: n,
    };
    match groups {
        1 => rows_by::<12, 1>(row, m, &at),
        2 => rows_by::<10, 2>(row, m, &at),
        3 => rows_by::<7, 3>(row, m, &at),
        4 => rows_by::<5, 4>(row, m, &at),
        5 => rows_by::<4, 5>(row, m, &at),
        _ => rows_by::<4, 6>(row, m, &at),
    }
}

/// What [`multiply`] multiplies into: the packed groups at `xq` (`stride` words from one
/// step to the next), `k` columns, the output at `out` (rows `ldo` apart), `cols` rows
/// of `b`.
struct Operand {
    k: usize,
    xq: *const u32,
    stride: usize,
    out: *mut f32,
    ldo: usize,
    cols: usize,
}

/// The `m` rows against the `G` groups, `MR` at a time (rows past the last repeat it;
/// their sums are not stored). The tile shapes keep `MR x G` sums, `min(MR, G)` operands
/// and one more within the 32 registers ([`steps`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn rows_by<const MR: usize, const G: usize>(
    row: impl Fn(usize) -> *const u16,
    m: usize,
    at: &Operand,
) {
    let mut first = 0;
    while first < m {
        let live = (m - first).min(MR);
        let w: [*const u16; MR] = std::array::from_fn(|i| row(first + i.min(live - 1)));
        // The MR rows after these, where they all exist, to prefetch.
        let next = (live == MR && first + 2 * MR <= m)
            .then(|| std::array::from_fn(|i| row(first + MR + i)));
        tile::<MR, G>(w, live, next, first, at);
        first += live;
    }
}

/// `out[first + i][j]` for the first `rows` of `w` and the `G` groups; `next`, the rows
/// to prefetch meanwhile.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn tile<const MR: usize, const G: usize>(
    w: [*const u16; MR],
    rows: usize,
    next: Option<[*const u16; MR]>,
    first: usize,
    at: &Operand,
) {
    let k = at.k;
    let mut acc = [[_mm512_setzero_ps(); G]; MR];
    let whole = k / STEP;
    let mut s = 0;
    while s < whole {
        // Four steps (one cache line of each row) at a time; where the next rows all
        // exist, the same line of each into L2, as the pair layout does.
        let end = (s + 4).min(whole);
        if let Some(next) = next {
            for r in next {
                // SAFETY: the next rows exist, k long, and column s * STEP < k.
                _mm_prefetch::<_MM_HINT_T1>(r.add(s * STEP).cast());
            }
        }
        steps::<MR, G, false>(&mut acc, &w, at, (s, end), 0);
        s = end;
    }
    if !k.is_multiple_of(STEP) {
        // The last columns alone: the masked-off ones read as zero (as packed).
        let mask = ((1u16 << (k % STEP)) - 1) as u8;
        steps::<MR, G, true>(&mut acc, &w, at, (whole, whole + 1), mask);
    }
    // Constant trip counts (no early exit), so that the sums stay in registers.
    for (i, sums) in acc.iter().enumerate() {
        for (g, &v) in sums.iter().enumerate() {
            let live = at.cols.saturating_sub(g * ROWS).min(ROWS);
            if i < rows && live > 0 {
                // The 4 f32 of each 128-bit lane (one row of b) summed into each of them,
                // the lanes' first elements gathered into elements 0..4 and stored
                // (a register permute and a masked store: compress-to-memory is
                // microcoded on Zen 4).
                let v = _mm512_add_ps(v, _mm512_permute_ps::<0xB1>(v));
                let v = _mm512_add_ps(v, _mm512_permute_ps::<0x4E>(v));
                let firsts = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
                let v = _mm512_permutexvar_ps(firsts, v);
                // SAFETY: row first + i < m of the output, and its columns g * ROWS ..
                // + live lie within cols.
                let o = at.out.add((first + i) * at.ldo + g * ROWS);
                _mm512_mask_storeu_ps(o, (1u16 << live) - 1, v);
            }
        }
    }
}

/// Steps `s0..s1` (4 pairs each) of every row of the tile against the `G` groups: a
/// 16-byte piece of each row broadcast to the four 128-bit lanes (with `TAIL`, the columns
/// `mask` leaves out read as zero). The smaller side is held in registers and the other
/// loaded one vector at a time, so that the `MR x G` sums, `min(MR, G)` operands and one
/// more fit in the 32 registers. Indexed loops: with iterators over the sums, LLVM kept
/// some tile shapes' sums in memory, one store per product.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn steps<const MR: usize, const G: usize, const TAIL: bool>(
    acc: &mut [[__m512; G]; MR],
    w: &[*const u16; MR],
    at: &Operand,
    (s0, s1): (usize, usize),
    mask: u8,
) {
    for s in s0..s1 {
        // SAFETY: step s < ceil(k / 8) of xq holds the G groups (16 words each)
        // from at.xq; columns c..c + 8 of each row exist (c + 8 <= k) unless TAIL masks
        // them off.
        let (c, x) = (s * STEP, at.xq.add(s * at.stride));
        if G <= MR {
            let mut xv = [as_bf16(_mm512_setzero_si512()); G];
            for (g, v) in xv.iter_mut().enumerate() {
                *v = as_bf16(_mm512_loadu_si512(x.add(g * 16).cast()));
            }
            for i in 0..MR {
                let wv = piece::<TAIL>(w[i].add(c), mask);
                for g in 0..G {
                    acc[i][g] = _mm512_dpbf16_ps(acc[i][g], wv, xv[g]);
                }
            }
        } else {
            let mut wv = [as_bf16(_mm512_setzero_si512()); MR];
            for (i, v) in wv.iter_mut().enumerate() {
                *v = piece::<TAIL>(w[i].add(c), mask);
            }
            for g in 0..G {
                let xg = as_bf16(_mm512_loadu_si512(x.add(g * 16).cast()));
                for i in 0..MR {
                    acc[i][g] = _mm512_dpbf16_ps(acc[i][g], wv[i], xg);
                }
            }
        }
    }
}

/// The 16 bytes at `p` (with `TAIL`, only the bf16 that `mask` keeps; the others zero)
/// in each 128-bit lane.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
unsafe fn piece<const TAIL: bool>(p: *const u16, mask: u8) -> __m512bh {
    let v = if TAIL {
        _mm_maskz_loadu_epi16(mask, p.cast())
    } else {
        _mm_loadu_si128(p.cast())
    };
    as_bf16(_mm512_broadcast_i32x4(v))
}

/// A vector of 32 bf16 as the type `VDPBF16PS` takes.
#[inline(always)]
fn as_bf16(v: __m512i) -> __m512bh {
    // SAFETY: both are plain 512-bit vectors (32 x 16 bits).
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

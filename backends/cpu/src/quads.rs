//! The quad layout of a packed right-hand operand (x86-64, AVX-512): for few rows of `b`
//! (an expert's tokens), groups of 4 rows x 16 bytes of columns per 512-bit vector,
//! `[ceil(k / STEP)][ceil(n / 4)][4 rows][16 bytes]`: each 128-bit lane of a vector holds
//! one row of `b`. A 16-byte piece of a row of `a` is broadcast to the four 128-bit lanes
//! and meets 4 rows of `b` per instruction; each output is the sum of the 4 f32 elements
//! of its 128-bit lane at the end. Rows of `b` fill vectors 4 at a time instead of 16:
//! 24 tokens use 24 f32 elements, not 32 (two vectors of 16 rows), while each
//! instruction still does all its products.
//!
//! Two kinds of element share the kernel ([`Kind`]): bf16 on `VDPBF16PS` ([`Bf16`], 8
//! columns per piece, two products per f32 element and step) and f32 on `VFMADD231PS`
//! ([`F32`], 4 columns, one product), each output adding its products on 4 f32 elements,
//! each one chain (k / 4 additions), then the 4 elements (2 additions). Either also runs
//! in octets ([`Octets`]): 8 rows of `b` per vector, each in a 64-bit lane (2 f32 or 4
//! bf16 columns), a piece of 8 bytes broadcast (a plain load, where 16 bytes take a
//! shuffle unit), each output the sum of its lane's 2 elements (for f32, k / 2 additions
//! each, then 1). [`Lanes`] packs rows in whichever of the two pays.
//!
//! The kernel is compiled for AVX-512F/BW/VL with AVX512-BF16 (AMD Zen 4 and later,
//! Intel Sapphire Rapids and later), also for f32: callers check [`available`].

use crate::aligned::Aligned;
use moemla_core::{Error, Result};
use std::arch::x86_64::*;
use std::marker::PhantomData;

/// Whether this CPU runs the quad kernels (AVX-512F/BW/VL and AVX512-BF16).
pub fn available() -> bool {
    crate::bf16dot::native()
}

/// An element type of the layout and the width of its pieces ([`Kind::ROWS`]): how a
/// piece is loaded and how two operands are multiplied into an f32 accumulator.
pub trait Kind {
    /// The stored element (bf16 as its bits).
    type Elem: Copy;
    /// The operand type of the multiply-add.
    type Operand: Copy;
    /// Elements per piece (columns per step).
    const STEP: usize;
    /// Rows of `b` per vector (a group), one per lane of a piece's bytes: 4 (quads,
    /// 16-byte pieces) or 8 (octets, 8-byte pieces).
    const ROWS: usize = 4;

    /// Whether `n` rows of `b` are packed in this layout rather than another.
    fn pays(n: usize) -> bool;

    /// The piece at `p` in the low bytes, the elements that `mask` leaves out read as
    /// zero.
    ///
    /// # Safety
    /// As the kernel's features; the elements `mask` keeps are readable.
    unsafe fn piece(p: *const Self::Elem, mask: u8) -> __m128i;

    /// A 512-bit vector as an operand.
    fn operand(v: __m512i) -> Self::Operand;

    /// `acc` plus the products of `w` and `x`, per f32 element.
    ///
    /// # Safety
    /// As the kernel's features.
    unsafe fn madd(acc: __m512, w: Self::Operand, x: Self::Operand) -> __m512;
}

/// bf16 elements on `VDPBF16PS`: 4 column pairs per piece.
#[derive(Debug)]
pub struct Bf16;

impl Kind for Bf16 {
    type Elem = u16;
    type Operand = __m512bh;
    const STEP: usize = 8;

    /// From 4 to 24 rows, but for 16 (one whole vector of the pair layout); from 13 rows
    /// octets take them first where they pay ([`Octets::pays_streamed`]). A 2-core
    /// Zen 5, one `a` of 512 MiB streamed through 512-row tiles at k = 2048, both cores,
    /// GFLOP/s (quads against the pair layout, or against the row dots below 16 rows):
    /// 4 rows 203/189, 8 rows 350/276, 14 rows 578/380, 16 rows 655/674, 20 rows 740/606,
    /// 24 rows 783/717, 25 rows 538/768, 32 rows 623/974 (from 25 rows the quads would
    /// need two passes over `a`, each of its pieces read twice).
    fn pays(n: usize) -> bool {
        (4..=MAX_ROWS).contains(&n) && n != 16
    }

    #[inline(always)]
    unsafe fn piece(p: *const u16, mask: u8) -> __m128i {
        _mm_maskz_loadu_epi16(mask, p.cast())
    }

    #[inline(always)]
    fn operand(v: __m512i) -> __m512bh {
        // SAFETY: both are plain 512-bit vectors (32 x 16 bits).
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }

    #[inline(always)]
    unsafe fn madd(acc: __m512, w: __m512bh, x: __m512bh) -> __m512 {
        _mm512_dpbf16_ps(acc, w, x)
    }
}

/// f32 elements on `VFMADD231PS`: 4 columns per piece.
#[derive(Debug)]
pub struct F32;

impl Kind for F32 {
    type Elem = f32;
    type Operand = __m512;
    const STEP: usize = 4;

    /// From 4 to 12 rows and from 17 to 24: where quads fill fewer f32 elements than
    /// vectors of 16 rows do. A 2-core Zen 5, `a` streamed through 512-row tiles at
    /// k = 2048, both cores, GFLOP/s (quads/vectors of 16): with 512 MiB of `a` (from
    /// memory, as the experts' weights come) 4 rows 91-95/94-95, 12 rows 328-339/297-307,
    /// 14 rows 309-317/351-357, 17 rows 351-365/263-264, 20 rows 416-420/311-315, 24 rows
    /// 443-456/368-373; with 8 MiB (from L3) 8 rows 341-349/177-187, 12 rows 376-423/283-285,
    /// 14 rows 375-380/308-333. From 13 to 16 rows both fill 16 elements and the vectors
    /// stream `a` faster.
    fn pays(n: usize) -> bool {
        (4..=12).contains(&n) || (17..=MAX_ROWS).contains(&n)
    }

    #[inline(always)]
    unsafe fn piece(p: *const f32, mask: u8) -> __m128i {
        _mm_castps_si128(_mm_maskz_loadu_ps(mask, p))
    }

    #[inline(always)]
    fn operand(v: __m512i) -> __m512 {
        // SAFETY: both are plain 512-bit vectors (16 x 32 bits).
        unsafe { std::mem::transmute::<__m512i, __m512>(v) }
    }

    #[inline(always)]
    unsafe fn madd(acc: __m512, w: __m512, x: __m512) -> __m512 {
        _mm512_fmadd_ps(w, x, acc)
    }
}

/// The elements of `K` in octets: pieces of half the width (8 bytes: 2 f32 or 4 bf16
/// columns), 8 rows of `b` per vector.
#[derive(Debug)]
pub struct Octets<K>(PhantomData<K>);

impl<K: Kind> Kind for Octets<K> {
    type Elem = K::Elem;
    type Operand = K::Operand;
    const STEP: usize = K::STEP / 2;
    const ROWS: usize = 8;

    /// With rows of `a` from cache, from 13 to 16 rows and from 21 to 24: where octets
    /// fill as many f32 elements as quads (2 or 3 groups; one group would meet a broadcast
    /// per multiply-add). One core of a 2-core Zen 5, 128 rows of `a` at a time from L2 at
    /// k = 576 (an attention's cache rows), GFLOP/s (octets / quads): f32 16 rows
    /// 233-242/205-220 (vectors of 16: 197-225), 24 rows 232-243/216-226; bf16 16 rows
    /// 472/468-469, 24 rows 483-487/482; with more lanes empty in octets, f32 12 rows
    /// 177-181/210-222, 20 rows 192-204/209-218, bf16 12 rows 350-354/426-429, 20 rows
    /// 405-407/483. From memory octets pay at more counts ([`Octets::pays_streamed`]).
    fn pays(n: usize) -> bool {
        (13..=16).contains(&n) || (21..=MAX_ROWS).contains(&n)
    }

    #[inline(always)]
    unsafe fn piece(p: *const K::Elem, mask: u8) -> __m128i {
        // The tail masks keep at most STEP elements: the low 8 bytes.
        debug_assert!(u32::from(mask) < 1 << Self::STEP);
        K::piece(p, mask)
    }

    #[inline(always)]
    fn operand(v: __m512i) -> K::Operand {
        K::operand(v)
    }

    #[inline(always)]
    unsafe fn madd(acc: __m512, w: K::Operand, x: K::Operand) -> __m512 {
        K::madd(acc, w, x)
    }
}

impl<K: Kind> Octets<K> {
    /// With rows of `a` streamed from memory (an expert's weights), from 13 to 24 rows:
    /// octets keep twice the rows of `a` in flight per tile, each read 8 bytes per step.
    /// One core of a 2-core Zen 5, rows of `a` streamed from memory at k = 2048, GFLOP/s
    /// (octets / quads / vectors of 16 where those run): f32 13 rows
    /// 151-176/115-133/97-149, 16 rows 216-222/165-169/181-189, 17 rows 173-174/159-165,
    /// 20 rows 201-204/190-202, 24 rows 236-248/198-202; bf16 13 rows 343-349/262, 16 rows
    /// 424-433/304-324 (pairs of columns, 16 rows per vector: 298-313), 20 rows
    /// 410-411/342-346, 24 rows 490-491/378-382; 12 rows f32 162-167/153-157, bf16
    /// 321-322/332-339.
    pub fn pays_streamed(n: usize) -> bool {
        (13..=MAX_ROWS).contains(&n)
    }
}

/// Most rows of `b` (24).
pub const MAX_ROWS: usize = 24;
/// Groups at most (of quads: [`MAX_ROWS`] / 4).
pub(crate) const MAX_GROUPS: usize = MAX_ROWS / 4;
/// u32 words per group: one vector.
const GROUP_WORDS: usize = 16;
/// Bytes per cache line.
const LINE: usize = 64;

/// u32 words of `n` rows of `k` elements packed as `K` lays them out (`None` where that
/// overflows).
pub fn packed_len<K: Kind>(n: usize, k: usize) -> Option<usize> {
    n.div_ceil(K::ROWS)
        .checked_mul(GROUP_WORDS)?
        .checked_mul(k.div_ceil(K::STEP))
}

/// `n` rows of `k` elements of `b` packed as `K` lays them out ([`pack`]) into a buffer
/// of [`packed_len`] words allocated fallibly ([`Error::OutOfMemory`], `what` naming it);
/// `overflow()` where that length does not fit a `usize`.
///
/// # Panics
/// Where the quad kernels do not run here ([`available`]) or `b` holds fewer than
/// `n * k` elements: callers decide on quads after [`available`], for whole rows.
pub fn packed<K: Kind>(
    b: &[K::Elem],
    (n, k): (usize, usize),
    what: &str,
    overflow: impl FnOnce() -> Error,
) -> Result<Aligned<u32>> {
    assert!(available() && n.checked_mul(k).is_some_and(|len| len <= b.len()));
    let len = packed_len::<K>(n, k).ok_or_else(overflow)?;
    let mut xq = Aligned::try_filled(len, 0, what)?;
    // SAFETY: the features were detected (asserted above); `b` holds n rows of k and
    // `xq` their packed size.
    unsafe { pack::<K>(b, n, k, &mut xq) };
    Ok(xq)
}

/// Rows of `b` of kind `K` packed for [`multiply`] in octets where those pay (for rows of
/// `a` from cache [`Octets::pays`], streamed from memory [`Octets::pays_streamed`]), else
/// in quads.
#[derive(Debug)]
pub struct Lanes<K> {
    words: Aligned<u32>,
    /// Rows of `b`.
    n: usize,
    /// Their width.
    k: usize,
    /// Whether they are in octets.
    octets: bool,
    kind: PhantomData<K>,
}

/// f32 rows in octets or quads.
pub type F32Lanes = Lanes<F32>;

impl<K: Kind> Lanes<K> {
    /// Whether `n` rows of `b` pay in octets or quads against rows of `a` streamed from
    /// memory ([`Octets::pays_streamed`], else `K`'s [`Kind::pays`]) rather than another
    /// layout.
    pub fn pay_streamed(n: usize) -> bool {
        Octets::<K>::pays_streamed(n) || K::pays(n)
    }

    /// `n` (1 to [`MAX_ROWS`]) rows of `k` of `b` packed as [`packed`] packs them, for
    /// rows of `a` streamed from memory (`streamed`) or from cache.
    ///
    /// # Panics
    /// As [`packed`], and where `n` is 0 or past [`MAX_ROWS`].
    pub fn new(
        b: &[K::Elem],
        (n, k): (usize, usize),
        streamed: bool,
        what: &str,
        overflow: impl FnOnce() -> Error,
    ) -> Result<Self> {
        assert!((1..=MAX_ROWS).contains(&n));
        let octets = match streamed {
            true => Octets::<K>::pays_streamed(n),
            false => Octets::<K>::pays(n),
        };
        let words = match octets {
            true => packed::<Octets<K>>(b, (n, k), what, overflow)?,
            false => packed::<K>(b, (n, k), what, overflow)?,
        };
        let kind = PhantomData;
        Ok(Lanes {
            words,
            n,
            k,
            octets,
            kind,
        })
    }

    /// Whether the rows are in octets.
    pub fn octets(&self) -> bool {
        self.octets
    }

    /// Rows of `a` per register tile of [`Lanes::multiply`] ([`tile_rows`]).
    pub fn tile_rows(&self) -> usize {
        match self.octets() {
            true => tile_rows::<Octets<K>>(self.n),
            false => tile_rows::<K>(self.n),
        }
    }

    /// [`multiply`] of the `m` rows `row(i)` (each as long as the packed rows) by these
    /// rows.
    ///
    /// # Safety
    /// `row(i)` for `i < m` points at `k` readable elements (the packed rows' `k`) and
    /// `o + i * ldo + j` (`i < m`, `j < n`) is writable.
    pub unsafe fn multiply(
        &self,
        row: impl Fn(usize) -> *const K::Elem + Copy,
        m: usize,
        (o, ldo): (*mut f32, usize),
        add: bool,
    ) {
        let (xq, k) = ((self.words.as_ptr(), self.n), self.k);
        match self.octets() {
            true => multiply::<Octets<K>>(row, (m, k), xq, (o, ldo), add),
            false => multiply::<K>(row, (m, k), xq, (o, ldo), add),
        }
    }
}

/// Packs `b` (`n` rows of `k` elements) into `xq` (zero past `n` and past `k`).
///
/// # Safety
/// [`available`]; `b` holds `n * k` elements and `xq` at least [`packed_len`]`(n, k)`
/// words.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn pack<K: Kind>(b: &[K::Elem], n: usize, k: usize, xq: &mut [u32]) {
    let (b, xq) = (b.as_ptr(), xq.as_mut_ptr());
    const { assert!(K::ROWS == 4 || K::ROWS == 8, "quads or octets") };
    let groups = n.div_ceil(K::ROWS);
    let lane_words = GROUP_WORDS / K::ROWS;
    for s in 0..k.div_ceil(K::STEP) {
        let c = s * K::STEP;
        let live = (k - c).min(K::STEP);
        let mask = ((1u16 << live) - 1) as u8;
        for row in 0..groups * K::ROWS {
            let piece = if row < n {
                // SAFETY: columns c..c + live of row `row` exist; masked-off ones are not
                // read.
                K::piece(b.add(row * k + c), mask)
            } else {
                _mm_setzero_si128()
            };
            // SAFETY: the lane of `row` in group row / ROWS of step s, lane_words words,
            // lies within packed_len.
            let to = xq.add(s * groups * GROUP_WORDS + row * lane_words);
            match K::ROWS {
                4 => _mm_storeu_si128(to.cast(), piece),
                _ => _mm_storel_epi64(to.cast(), piece),
            }
        }
    }
}

/// `out[i * ldo + j] = row(i) . b_j` (with `add`, `+=`) for `i < m` (each row `k` long)
/// and the `n` rows of `b` packed at `xq` by [`pack`], `n` from 1 to [`MAX_ROWS`]: every
/// group in registers at once, so each piece of a row is read once.
///
/// # Safety
/// [`available`]; `1 <= n <= MAX_ROWS`, `row(i)` for `i < m` points at `k` readable
/// elements, `xq` at [`packed_len`]`(n, k)` words, and `o + i * ldo + j` (`i < m`,
/// `j < n`) is writable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub unsafe fn multiply<K: Kind>(
    row: impl Fn(usize) -> *const K::Elem + Copy,
    (m, k): (usize, usize),
    (xq, n): (*const u32, usize),
    (o, ldo): (*mut f32, usize),
    add: bool,
) {
    const { assert!(K::ROWS == 4 || K::ROWS == 8, "quads or octets") };
    let groups = n.div_ceil(K::ROWS);
    // Once per call: a count outside 1..=24 would read groups that were never packed.
    assert!((1..=MAX_ROWS).contains(&n), "{n} rows of b");
    let at = Operand {
        k,
        xq,
        stride: groups * GROUP_WORDS,
        out: o,
        ldo,
        cols: n,
        add,
    };
    match groups {
        1 => rows_by::<K, { TILE_ROWS[0] }, 1>(row, m, &at),
        2 => rows_by::<K, { TILE_ROWS[1] }, 2>(row, m, &at),
        3 => rows_by::<K, { TILE_ROWS[2] }, 3>(row, m, &at),
        4 => rows_by::<K, { TILE_ROWS[3] }, 4>(row, m, &at),
        5 => rows_by::<K, { TILE_ROWS[4] }, 5>(row, m, &at),
        _ => rows_by::<K, { TILE_ROWS[5] }, 6>(row, m, &at),
    }
}

/// Rows of `a` per register tile for 1 to [`MAX_GROUPS`] groups: `MR x G` sums,
/// `min(MR, G)` operands and one more within the 32 registers ([`steps`]).
pub(crate) const TILE_ROWS: [usize; MAX_GROUPS] = [12, 10, 7, 5, 4, 4];

/// Rows of `a` per register tile of [`multiply`] for `n` rows of `b` (1 to [`MAX_ROWS`])
/// laid out as `K`: a caller that converts `a` before the product can convert this many
/// rows at a time.
pub fn tile_rows<K: Kind>(n: usize) -> usize {
    TILE_ROWS[n.div_ceil(K::ROWS).clamp(1, MAX_GROUPS) - 1]
}

/// What [`multiply`] multiplies into: the packed groups at `xq` (`stride` words from one
/// step to the next), `k` columns, the output at `out` (rows `ldo` apart, added to with
/// `add`), `cols` rows of `b`.
struct Operand {
    k: usize,
    xq: *const u32,
    stride: usize,
    out: *mut f32,
    ldo: usize,
    cols: usize,
    add: bool,
}

/// The `m` rows against the `G` groups, `MR` ([`TILE_ROWS`]) at a time (rows past the
/// last repeat it; their sums are not stored).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn rows_by<K: Kind, const MR: usize, const G: usize>(
    row: impl Fn(usize) -> *const K::Elem,
    m: usize,
    at: &Operand,
) {
    let mut first = 0;
    while first < m {
        let live = (m - first).min(MR);
        let w: [*const K::Elem; MR] = std::array::from_fn(|i| row(first + i.min(live - 1)));
        // The MR rows after these, where they all exist, to prefetch.
        let next = (live == MR && first + 2 * MR <= m)
            .then(|| std::array::from_fn(|i| row(first + MR + i)));
        tile::<K, MR, G>(w, live, next, first, at);
        first += live;
    }
}

/// `out[first + i][j]` for the first `rows` of `w` and the `G` groups; `next`, the rows
/// to prefetch meanwhile.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn tile<K: Kind, const MR: usize, const G: usize>(
    w: [*const K::Elem; MR],
    rows: usize,
    next: Option<[*const K::Elem; MR]>,
    first: usize,
    at: &Operand,
) {
    let k = at.k;
    let mut acc = [[_mm512_setzero_ps(); G]; MR];
    let whole = k / K::STEP;
    let mut s = 0;
    while s < whole {
        // A cache line of each row at a time; where the next rows all exist, the same line
        // of each into L2.
        let end = (s + LINE / (K::STEP * std::mem::size_of::<K::Elem>())).min(whole);
        if let Some(next) = next {
            for r in next {
                // SAFETY: the next rows exist, k long, and column s * STEP < k.
                _mm_prefetch::<_MM_HINT_T1>(r.add(s * K::STEP).cast());
            }
        }
        steps::<K, MR, G, false>(&mut acc, &w, (at.xq, at.stride), (s, end), 0);
        s = end;
    }
    if !k.is_multiple_of(K::STEP) {
        // The last columns alone: the masked-off ones read as zero (as packed).
        let mask = ((1u16 << (k % K::STEP)) - 1) as u8;
        steps::<K, MR, G, true>(&mut acc, &w, (at.xq, at.stride), (whole, whole + 1), mask);
    }
    // Constant trip counts (no early exit), so that the sums stay in registers.
    for (i, sums) in acc.iter().enumerate() {
        for (g, &v) in sums.iter().enumerate() {
            let live = at.cols.saturating_sub(g * K::ROWS).min(K::ROWS);
            if i < rows && live > 0 {
                // SAFETY: row first + i < m of the output, and its columns g * ROWS ..
                // + live lie within cols.
                let o = at.out.add((first + i) * at.ldo + g * K::ROWS);
                store_sums::<K>(v, o, live, at.add);
            }
        }
    }
}

/// Stores (with `add`, adds to) the `live` (1..=`K::ROWS`) outputs of one group's sums
/// `v`: the f32 of each lane (one row of `b`) summed, the lanes' sums at `o..o + live`.
///
/// # Safety
/// [`available`]; `o..o + live` is writable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
pub(crate) unsafe fn store_sums<K: Kind>(v: __m512, o: *mut f32, live: usize, add: bool) {
    debug_assert!((1..=K::ROWS).contains(&live));
    // The f32 of each lane summed into each of them, the lanes' first elements gathered
    // into elements 0..ROWS and stored (a register permute and a masked store:
    // compress-to-memory is microcoded on Zen 4).
    let v = _mm512_add_ps(v, _mm512_permute_ps::<0xB1>(v));
    let v = if K::ROWS == 4 {
        let v = _mm512_add_ps(v, _mm512_permute_ps::<0x4E>(v));
        let firsts = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
        _mm512_permutexvar_ps(firsts, v)
    } else {
        let firsts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 0, 0, 0, 0, 0, 0, 0);
        _mm512_permutexvar_ps(firsts, v)
    };
    let mask = (1u16 << live) - 1;
    let v = if add {
        _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, o))
    } else {
        v
    };
    _mm512_mask_storeu_ps(o, mask, v);
}

/// Steps `s0..s1` (a piece each) of every row of the tile against the `G` groups packed
/// at `xq` (step `s` at `s * stride` words): the piece of each row broadcast to every
/// lane (with `TAIL`, the columns `mask` leaves out read as zero). The smaller side is
/// held in registers and the other loaded one vector at a time, so that the `MR x G`
/// sums, `min(MR, G)` operands and one more fit in the 32 registers. Indexed loops: with
/// iterators over the sums, LLVM kept some tile shapes' sums in memory, one store per
/// product.
///
/// # Safety
/// [`available`]; for every step `s` in `s0..s1`, the `G` groups (16 words each) at
/// `xq + s * stride` and each row's elements `w[i] + s * STEP ..` (`STEP` of them, or
/// with `TAIL` those `mask` keeps) are readable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
#[allow(clippy::needless_range_loop)]
pub(crate) unsafe fn steps<K: Kind, const MR: usize, const G: usize, const TAIL: bool>(
    acc: &mut [[__m512; G]; MR],
    w: &[*const K::Elem; MR],
    (xq, stride): (*const u32, usize),
    (s0, s1): (usize, usize),
    mask: u8,
) {
    for s in s0..s1 {
        // SAFETY: as the function's contract: step s's G groups and each row's elements
        // c..c + STEP (those TAIL's mask keeps) are readable.
        let (c, x) = (s * K::STEP, xq.add(s * stride));
        let group = |g: usize| K::operand(_mm512_loadu_si512(x.add(g * GROUP_WORDS).cast()));
        if G <= MR {
            let mut xv = [K::operand(_mm512_setzero_si512()); G];
            for (g, v) in xv.iter_mut().enumerate() {
                *v = group(g);
            }
            for i in 0..MR {
                let wv = broadcast::<K, TAIL>(w[i].add(c), mask);
                for g in 0..G {
                    acc[i][g] = K::madd(acc[i][g], wv, xv[g]);
                }
            }
        } else {
            let mut wv = [K::operand(_mm512_setzero_si512()); MR];
            for (i, v) in wv.iter_mut().enumerate() {
                *v = broadcast::<K, TAIL>(w[i].add(c), mask);
            }
            for g in 0..G {
                let xg = group(g);
                for i in 0..MR {
                    acc[i][g] = K::madd(acc[i][g], wv[i], xg);
                }
            }
        }
    }
}

/// The piece at `p` (with `TAIL`, only the elements that `mask` keeps; the others zero)
/// in each lane: 16 bytes through a shuffle unit (`VBROADCASTI32X4`), 8 bytes straight
/// from memory (`VPBROADCASTQ`, a plain load).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
unsafe fn broadcast<K: Kind, const TAIL: bool>(p: *const K::Elem, mask: u8) -> K::Operand {
    K::operand(match (K::ROWS, TAIL) {
        (4, true) => _mm512_broadcast_i32x4(K::piece(p, mask)),
        (4, false) => _mm512_broadcast_i32x4(_mm_loadu_si128(p.cast())),
        (_, true) => _mm512_broadcastq_epi64(K::piece(p, mask)),
        (_, false) => _mm512_set1_epi64(p.cast::<i64>().read_unaligned()),
    })
}

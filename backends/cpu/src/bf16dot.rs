//! Products of bf16 matrices on the CPU's native bf16 dot instruction (AVX512-BF16
//! `VDPBF16PS`) where it has one, chosen at run time; elsewhere an f32 loop. Where this
//! process may also use AMX tiles and `k` is a multiple of 32, packed products whose
//! rows of `a` lie `k` apart run on tiles instead ([`crate::tiles`], [`on_tiles`]).
//!
//! The contract's semantics hold: a bf16 x bf16 product is exact in f32 (8 + 8 significant
//! bits), and `VDPBF16PS` adds each product to an f32 accumulator with one rounding, as
//! an f32 multiply-add of the upcast values would. Only the order of the f32 additions
//! differs from other paths (16 lanes, or 4 in the quad layout and 2 in octets; two
//! products per lane and step; then the lanes; on tiles, the tile unit's own order).
//! Like every `VDPBF16PS`, subnormal inputs and results count as zero (below 2^-126,
//! where the f32 path's contributions are far under any tolerance).

use crate::aligned::Aligned;
use crate::f32attn::device;
use half::bf16;
use moemla_core::alloc::try_filled_vec;
use moemla_core::{Error, Result};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use crate::quads::{self, Bf16};

/// Whether [`gemm_nt`] runs on the native bf16 dot instruction on this CPU.
pub fn native() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the native bf16 dot is the faster way to multiply bf16 values on this CPU for
/// work bound by compute: [`native`], and its FLOP rate on one core at least 3/4 of the
/// f32 FMA's ([`moemla_core::peak`]'s register-resident loops, best of 5 short runs each,
/// timed once per process, well under a millisecond). Memory-bound kernels take the
/// native dot wherever it exists (it halves what they convert and hold); compute-bound
/// ones ask this. AMD Zen 4/5 run `VDPBF16PS` at twice the FMA's FLOP rate; Intel's
/// AVX512-BF16 cores measured here (Xeon, avx512_fp16) at half of it, where the upcast
/// f32 kernels win (MLA decode at 128 heads: 6.5 vs 8.8 ms).
pub fn outpaces_fma() -> bool {
    static FASTER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FASTER.get_or_init(|| {
        let Some(dot) = moemla_core::peak::bf16_dot_loop().filter(|_| native()) else {
            return false;
        };
        let fma = moemla_core::peak::fma_loop();
        let rate = |l: moemla_core::peak::PeakLoop| {
            (0..5)
                .map(|_| {
                    let t0 = std::time::Instant::now();
                    std::hint::black_box((l.run)(std::hint::black_box(PROBE_ITERS)));
                    l.flops_per_iter * PROBE_ITERS as f64 / t0.elapsed().as_secs_f64().max(1e-9)
                })
                .fold(0.0, f64::max)
        };
        rate(dot) >= 0.75 * rate(fma)
    })
}

/// Whether [`gemm_nt`] (`b` packed by [`Packed::new`]) and [`gemm_rows`] (`b` packed by
/// [`Packed::for_tiles`]) multiply rows `k` wide on AMX tiles: this process may use
/// AMX-BF16 tiles and `k` is a positive multiple of 32
/// (`crate::tiles::fits`). Tiles run bf16 products at about 14 times the f32 FMA's FLOP
/// rate (Intel Xeon with AMX, 2 cores: 3.4 TFLOP/s a core, `moemla bench`'s bf16 dot peak).
pub fn on_tiles(k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        native() && crate::tiles::fits(k)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = k;
        false
    }
}

/// Whether this process multiplies bf16 on AMX tiles at all: the native dot (for the
/// packing around the tiles) and AMX-BF16 tiles enabled ([`moemla_core::amx::enabled`]);
/// [`on_tiles`] then holds for every positive `k` that is a multiple of 32.
pub fn tiles_enabled() -> bool {
    native() && moemla_core::amx::enabled()
}

/// Iterations of each probe run of [`outpaces_fma`] (24 accumulators: ~100k instructions).
const PROBE_ITERS: u64 = 4096;

/// `out[r * n + c] = a[r] . b[c]` for the `m` rows of `a` [m, k] and the `n` rows of `b`
/// [n, k] (bf16, row-major), each an f32 sum of exact products; `out` is [m, n] and is
/// overwritten. `packed` is `b` as [`Packed::new`] prepared it, where it did (`None`
/// otherwise): callers that multiply one `b` with many `a` pack it once. With `packed`,
/// `b` itself is not read (only its shape checked against `packed`'s), so a `packed` of
/// another `b` of that shape gives that other product. Single-threaded (callers
/// parallelise over independent tiles).
///
/// A `k` of 0, lengths that do not make whole rows of `k`, an `out` that is not `m * n`
/// long, or a `packed` of another shape are [`Error::Device`]; nothing is read or written
/// then.
pub fn gemm_nt(
    a: &[bf16],
    b: &[bf16],
    k: usize,
    packed: Option<&Packed>,
    out: &mut [f32],
) -> Result<()> {
    let rows = |len: usize| Some(len / k.max(1)).filter(|r| k > 0 && r * k == len);
    let shape = rows(a.len())
        .zip(rows(b.len()))
        .filter(|&(m, n)| m.checked_mul(n) == Some(out.len()))
        .filter(|&(_, n)| packed.is_none_or(|p| (p.n, p.k) == (n, k)));
    let Some((m, n)) = shape else {
        return Err(device(
            "bf16 gemm_nt",
            format!(
                "a ({} elements) and b ({}) must be whole rows of k = {k} >= 1, out ({}) \
                 rows(a) x rows(b), packed b ({:?} rows of {:?}) b's",
                a.len(),
                b.len(),
                out.len(),
                packed.map(|p| p.n),
                packed.map(|p| p.k),
            ),
        ));
    };
    #[cfg(target_arch = "x86_64")]
    if let Some(p) = packed {
        // SAFETY: a `Packed` exists only where `native` detected AVX-512F/BW/VL and
        // AVX512-BF16 at run time; `a` holds m rows of k, `p` n rows of k (checked
        // above), `out` m * n elements, which is all `x86::gemm_packed` reads and writes.
        unsafe { x86::gemm_packed(a, m, p, out) };
        return Ok(());
    }
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

/// The rows of a right-hand operand `b` [n, k] prepared once for many products
/// ([`gemm_nt`], [`gemm_rows`]), in one of two layouts (see [`Layout`]).
#[derive(Debug)]
pub struct Packed {
    /// How the rows are held.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    layout: Layout,
    /// Rows of `b`.
    n: usize,
    /// Their width.
    k: usize,
    /// Packed for tiles ([`Packed::for_tiles`]): [`gemm_rows`] takes runs of rows on
    /// tiles.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    tiles: bool,
}

/// How [`Packed`] holds `b`.
#[derive(Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Layout {
    /// Pairs of columns, `LANES` rows per vector (`[ceil(k / 2)][rows rounded up to
    /// LANES]` u32; also the layout of a tile of `b`); off tiles, the last `n % LANES`
    /// rows, when at most `REST_MAX`, kept as they are (`rest`, row-major) for the
    /// row-dot kernel rather than a mostly empty vector.
    Pairs { xp: Aligned<u32>, rest: Vec<bf16> },
    /// Groups of 4 rows x 4 pairs per vector (quads, `[ceil(k / 8)][ceil(n / 4)][4
    /// rows][4 pairs]` u32) or of 8 rows x 2 pairs (octets, `[ceil(k / 4)][ceil(n / 8)][8
    /// rows][2 pairs]`): rows fill vectors 4 or 8 at a time ([`quads::Lanes`]).
    Quads(quads::Lanes<Bf16>),
}

impl Packed {
    /// `b` [n, k] packed where the native dot runs [`gemm_nt`] and [`gemm_rows`] on it, for
    /// rows of `a` streamed from memory (an expert's weights). Where AMX tiles take `k`
    /// ([`crate::tiles::fits`]): every row in pairs, from 4 rows (`REST_MAX + 1`), which
    /// [`gemm_nt`] multiplies on tiles. Else in octets from 13 to 24 rows
    /// ([`quads::Octets::pays_streamed`]), in quads where they pay below that (4 to 12
    /// rows: [`Kind::pays`](quads::Kind::pays) of `Bf16`), and in pairs from 25 rows on,
    /// the last `n % LANES` rows kept as they are when at most `REST_MAX`. `None` for
    /// fewer rows (the row dots take them) or without the native dot. A `b` that is not
    /// whole rows of `k >= 1` is [`Error::Device`]; the buffers are allocated fallibly
    /// ([`Error::OutOfMemory`]).
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    pub fn new(b: &[bf16], k: usize) -> Result<Option<Packed>> {
        let n = rows_of(b, k)?;
        #[cfg(target_arch = "x86_64")]
        let (tiles, lanes) = match crate::tiles::fits(k) {
            true => (n > x86::REST_MAX, false),
            false => (false, quads::Lanes::<Bf16>::pay_streamed(n)),
        };
        if native() && (tiles || n >= x86::PACKED_MIN_N || lanes) {
            if lanes {
                return Packed::quads(b, n, k, true).map(Some);
            }
            let rest = if tiles { 0 } else { x86::rest_rows(n) };
            return Packed::pairs(b, (n, k), rest, false).map(Some);
        }
        Ok(None)
    }

    /// The `n` rows of `k` in `b` in pairs, the last `rest` kept as they are; for
    /// [`gemm_rows`] on tiles where `tiles`. The caller checked [`native`].
    #[cfg(target_arch = "x86_64")]
    fn pairs(b: &[bf16], (n, k): (usize, usize), rest: usize, tiles: bool) -> Result<Packed> {
        let overflow = || device("bf16 pack", format!("{n} rows of {k} overflow"));
        let len = x86::packed_len(n - rest, k).ok_or_else(overflow)?;
        let mut xp = Aligned::try_filled(len, 0u32, "cpu bf16 packed operand")?;
        let (body, tail) = b.split_at((n - rest) * k);
        // SAFETY: the caller checked `native` (the four features, at run time); `body`
        // holds n - rest rows of k and `xp` their packed size.
        unsafe { x86::pack_into(body, n - rest, k, &mut xp) };
        let mut kept: Vec<bf16> = try_filled_vec(tail.len(), "cpu bf16 packed rest")?;
        kept.copy_from_slice(tail);
        let layout = Layout::Pairs { xp, rest: kept };
        Ok(Packed {
            layout,
            n,
            k,
            tiles,
        })
    }

    /// `b` [n, k] packed in pairs, every row (none kept aside), wherever [`on_tiles`]`(k)`,
    /// else `None`: for products on tiles whose other operand's rows lie side by side in
    /// runs ([`gemm_rows`] takes each run on tiles), however few rows `b` has. Errors as
    /// [`Packed::new`].
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    pub fn for_tiles(b: &[bf16], k: usize) -> Result<Option<Packed>> {
        let n = rows_of(b, k)?;
        #[cfg(target_arch = "x86_64")]
        if on_tiles(k) {
            // `on_tiles` checked `native`.
            return Packed::pairs(b, (n, k), 0, true).map(Some);
        }
        Ok(None)
    }

    /// `b` [n, k] packed in quads (octets where those pay: [`Kind::pays`](quads::Kind::pays)
    /// of `quads::Octets`) wherever the native dot runs and `n` is 1 to 24
    /// (`quads::MAX_ROWS`), else `None`: for products whose other operand comes from cache
    /// rather than memory, where quads pay at more row counts than `Kind::pays` of `Bf16`
    /// (which was measured on weights streamed from memory). Errors as [`Packed::new`].
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    pub fn in_quads(b: &[bf16], k: usize) -> Result<Option<Packed>> {
        let n = rows_of(b, k)?;
        #[cfg(target_arch = "x86_64")]
        if native() && (1..=quads::MAX_ROWS).contains(&n) {
            return Packed::quads(b, n, k, false).map(Some);
        }
        Ok(None)
    }

    /// The `n` rows of `k` in `b` in quads or octets ([`quads::Lanes`], for rows of `a`
    /// `streamed` from memory or not).
    #[cfg(target_arch = "x86_64")]
    fn quads(b: &[bf16], n: usize, k: usize, streamed: bool) -> Result<Packed> {
        let xq = quads::Lanes::<Bf16>::new(
            half::slice::HalfFloatSliceExt::reinterpret_cast(b),
            (n, k),
            streamed,
            "cpu bf16 packed operand",
            || device("bf16 pack", format!("{n} rows of {k} overflow")),
        )?;
        let layout = Layout::Quads(xq);
        Ok(Packed {
            layout,
            n,
            k,
            tiles: false,
        })
    }
}

/// The number of rows of `k` in `b`; a `k` of 0 or a `b` that is not whole rows is
/// [`Error::Device`].
fn rows_of(b: &[bf16], k: usize) -> Result<usize> {
    let n = b.len() / k.max(1);
    if k == 0 || n * k != b.len() {
        return Err(device(
            "bf16 pack",
            format!("{} elements are not whole rows of k = {k} >= 1", b.len()),
        ));
    }
    Ok(n)
}

/// `out[i * n + j] = rows[i] . b_j` (`b` packed, [n, k]; each row's first `k` elements
/// used), each an f32 chain of exact products as [`gemm_nt`]'s packed path adds them
/// (where `b` was packed for tiles, [`Packed::for_tiles`]: each run of rows that lie `k`
/// apart on tiles); `out` is [rows.len(), n] and is overwritten.
/// Single-threaded. A row shorter than `k`
/// or an `out` of another length is [`Error::Device`]; nothing is written then.
pub fn gemm_rows(rows: &[&[bf16]], b: &Packed, out: &mut [f32]) -> Result<()> {
    let (n, k) = (b.n, b.k);
    if rows.iter().any(|r| r.len() < k) || rows.len().checked_mul(n) != Some(out.len()) {
        return Err(device(
            "bf16 gemm_rows",
            format!(
                "{} rows (each at least k = {k}) by {n} packed give {} outputs, not {}",
                rows.len(),
                rows.len().saturating_mul(n),
                out.len()
            ),
        ));
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: a `Packed` exists only where `native` detected the features; every row
        // holds at least k elements, `b` n rows of k, `out` rows * n.
        unsafe { x86::gemm_rows(rows, b, out) };
        Ok(())
    }
    #[cfg(not(target_arch = "x86_64"))]
    Err(device(
        "bf16 gemm_rows",
        "no packed operand exists off x86-64".into(),
    ))
}

/// `values` as bf16 when every one is a bf16 value (f32 values upcast from bf16; NaN
/// counts as one, stored as the quiet NaN), else `None`: rounding would change the result,
/// so the caller keeps its f32 path. Converted in parallel chunks ([`exact_into_slice`]);
/// allocated fallibly ([`Error::OutOfMemory`]).
pub fn exact(values: &[f32]) -> Result<Option<Vec<bf16>>> {
    let mut out: Vec<bf16> = try_filled_vec(values.len(), "cpu bf16 dot operand")?;
    let all = values
        .par_chunks(EXACT_CHUNK)
        .zip(out.par_chunks_mut(EXACT_CHUNK))
        .all(|(v, o)| exact_into_slice(v, o));
    Ok(all.then_some(out))
}

/// Values per task of [`exact`].
const EXACT_CHUNK: usize = 1 << 16;

/// Whether every one of `values` is a bf16 value (NaN counts as one), converting them
/// into `out` (NaN as the quiet NaN) while testing, so the loop vectorises for the vector
/// unit found at run time; where the answer is false `out` is unspecified. False, with
/// nothing written, when `out` is not as long as `values`. A test on the bits: the low 16
/// of a bf16 value's f32 are zero.
pub fn exact_into_slice(values: &[f32], out: &mut [bf16]) -> bool {
    values.len() == out.len() && pulp::Arch::new().dispatch(Exact { values, out })
}

/// [`exact_into_slice`] as a pulp kernel.
struct Exact<'a> {
    values: &'a [f32],
    out: &'a mut [bf16],
}

impl pulp::WithSimd for Exact<'_> {
    type Output = bool;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> bool {
        let mut low = 0u32;
        for (o, &v) in self.out.iter_mut().zip(self.values) {
            let bits = v.to_bits();
            let nan = bits & 0x7FFF_FFFF > 0x7F80_0000;
            low |= if nan { 0 } else { bits & 0xFFFF };
            *o = bf16::from_bits(if nan { 0x7FC0 } else { (bits >> 16) as u16 });
        }
        low == 0
    }
}

/// Rows `first..first + rows` of the row-major `matrix` of `k` columns;
/// [`Error::Device`] when they are not all there.
pub fn rows(matrix: &[bf16], first: usize, rows: usize, k: usize) -> Result<&[bf16]> {
    crate::storage::row_range(first, rows, k)
        .and_then(|range| matrix.get(range))
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

    /// Rows of `b` from which [`super::Packed`] packs them off tiles (in pairs where
    /// neither octets nor quads take them: from 25 rows).
    pub const PACKED_MIN_N: usize = 16;
    /// Rows of `b` per vector of the packed path (512-bit: 16 f32 accumulator lanes). A
    /// 2-core Zen 5 (full-width AVX-512) runs 512-bit `VDPBF16PS` at twice the FLOP rate
    /// of 256-bit: the experts' compute-bound bf16 rows measured 31-35% of the bf16 dot
    /// peak on 256-bit vectors.
    pub const LANES: usize = 16;
    /// Rows of `b` the packing transposes at a time (8 x 8 pairs in 256-bit registers).
    const PACK_ROWS: usize = 8;
    /// At most this many last rows of `b` (`n % LANES`) take the row-dot kernel in
    /// [`gemm_packed`].
    pub const REST_MAX: usize = 3;
    /// The last rows of `n` that the pair layout keeps for the row dots: `n % LANES` when
    /// at most [`REST_MAX`], else none.
    pub fn rest_rows(n: usize) -> usize {
        Some(n % LANES).filter(|&r| r <= REST_MAX).unwrap_or(0)
    }
    /// u32 pairs of `n` rows of `k` packed: `[ceil(k / 2)][n rounded up to LANES]`
    /// (`None` where that overflows).
    pub fn packed_len(n: usize, k: usize) -> Option<usize> {
        n.div_ceil(LANES)
            .checked_mul(LANES)?
            .checked_mul(k.div_ceil(2))
    }

    /// Rows of `a` per panel of the packed path: every column block passes over them while
    /// they stay in L2.
    const PANEL: usize = 24;

    /// [`super::gemm_nt`] with `b` packed ([`super::Packed`]): `a`'s rows in memory
    /// order, `k` apart ([`product`]).
    ///
    /// # Safety
    /// AVX-512F/BW/VL and AVX512-BF16 must be available; `a` holds `m * b.k` elements and
    /// `out` `m * b.n`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn gemm_packed(a: &[bf16], m: usize, b: &super::Packed, out: &mut [f32]) {
        let a = a.as_ptr().cast::<u16>();
        // SAFETY: row i < m of a is at a + i k.
        product(|i| a.add(i * b.k), m, b, out, true);
    }

    /// `out[i * b.n + j] = row(i) . b_j` for `i < m` (each row at least `b.k` long) and the
    /// rows of `b`. Quads: [`crate::quads::multiply`]. Pairs of rows `k` apart
    /// (`contiguous`) without rest rows, where tiles take `k`: [`crate::tiles::gemm_pairs`].
    /// Other pairs: each output one accumulator
    /// lane, a pair of a row broadcast against `LANES` packed rows of `b` per
    /// `VDPBF16PS`, up to 24 accumulators in registers (12 rows x 1 or 2 vectors of `b`,
    /// 8 x 3, 6 x 4), stored without reductions, each output adding its k products to one
    /// f32 accumulator in order; `b`'s rest rows take the row-dot kernel per panel, while
    /// the panel's rows are in L2: all the panel's rows at once where they lie `k` apart
    /// (`contiguous`), else one at a time.
    ///
    /// # Safety
    /// As [`gemm_packed`]: `row(i)` for `i < m` points at `b.k` readable elements (and at
    /// `row(0) + i * b.k` with `contiguous`), `out` holds `m * b.n`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn product(
        row: impl Fn(usize) -> *const u16 + Copy,
        m: usize,
        b: &super::Packed,
        out: &mut [f32],
        contiguous: bool,
    ) {
        let (k, n_all, o) = (b.k, b.n, out.as_mut_ptr());
        let (xp, rest) = match &b.layout {
            super::Layout::Pairs { xp, rest } => (xp, rest),
            super::Layout::Quads(lanes) => return lanes.multiply(row, m, (o, n_all), false),
        };
        let rest_n = rest.len() / k;
        let n = n_all - rest_n;
        let n_pad = n.div_ceil(LANES) * LANES;
        let rest_rows = rest.as_ptr().cast::<u16>();
        let dims = (xp.as_ptr(), n, n_pad);
        if contiguous && rest_n == 0 && crate::tiles::fits(k) {
            // SAFETY: `fits(k)`; the m rows of a lie k apart from row(0), xp holds k / 2
            // pairs of n_pad columns (n_pad = n rounded up to LANES = 16), and out
            // columns 0..n of the m rows are writable.
            let sums = crate::tiles::Sums::Set;
            crate::tiles::gemm_pairs(row(0), (m, k), dims, (o, n_all), sums);
            return;
        }
        multiply(row, (m, k), dims, (o, n_all), |r0, pr| {
            if rest_n == 0 {
                return;
            }
            // SAFETY (both): rows r0..r0 + pr exist (k apart where contiguous), the rest
            // rows of b exist, and out columns n..n_all of those rows are writable.
            if contiguous {
                let op = o.add(r0 * n_all + n);
                rows_nt(row(r0), rest_rows, (pr, rest_n, k), op, n_all);
            } else {
                for i in r0..r0 + pr {
                    let op = o.add(i * n_all + n);
                    rows_nt(row(i), rest_rows, (1, rest_n, k), op, n_all);
                }
            }
        });
    }

    /// `out[i * ldo + j] = row(i) . b_j` for `i < m` (each row `k` long) and the `n`
    /// columns packed at `xp` (`n_pad` wide, as [`pack`] leaves them), in panels of
    /// [`PANEL`] rows; `after(r0, rows)` runs once each panel is done (its rows still in
    /// L2).
    ///
    /// # Safety
    /// As [`gemm_packed`]: `row(i)` for `i < m` points at `k` readable elements, `xp` at
    /// `ceil(k / 2) * n_pad` packed pairs, and `o + i * ldo + j` (`i < m`, `j < n`) is
    /// writable.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn multiply(
        row: impl Fn(usize) -> *const u16 + Copy,
        (m, k): (usize, usize),
        (xp, n, n_pad): (*const u32, usize, usize),
        (o, ldo): (*mut f32, usize),
        mut after: impl FnMut(usize, usize),
    ) {
        // Column blocks of up to 4 vectors, as even as possible (5 -> 3 + 2): every block
        // but the first reads the panel's rows again (from L2).
        let vecs = n_pad / LANES;
        let blocks = vecs.div_ceil(4);
        let mut r0 = 0;
        while r0 < m {
            let pr = (m - r0).min(PANEL);
            let mut v0 = 0;
            for bi in 0..blocks {
                let nv = (vecs - v0).div_ceil(blocks - bi);
                let c0 = v0 * LANES;
                let cols = (n - c0).min(nv * LANES);
                // SAFETY: rows r0..r0 + pr exist, column c0 < n_pad of xp, and
                // out[(r0 + i) * ldo + c0 + j] for i < pr, j < cols is writable.
                let (xq, op) = (xp.add(c0), o.add(r0 * ldo + c0));
                let args = (r0, pr, m, k, xq, n_pad, op, ldo, cols);
                match nv {
                    1 => panel::<12, 1>(row, args),
                    2 => panel::<12, 2>(row, args),
                    3 => panel::<8, 3>(row, args),
                    _ => panel::<6, 4>(row, args),
                }
                v0 += nv;
            }
            after(r0, pr);
            r0 += pr;
        }
    }

    /// `out[i * b.n + j] = rows[i] . b_j` for rows of at least `b.k` elements anywhere in
    /// memory ([`product`]; all pairs on tiles: a run of rows `k` apart at a time).
    ///
    /// # Safety
    /// AVX-512F/BW/VL and AVX512-BF16 must be available; every row holds at least `b.k`
    /// elements and `out` `rows.len() * b.n`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn gemm_rows(rows: &[&[bf16]], b: &super::Packed, out: &mut [f32]) {
        let k = b.k;
        if b.tiles && crate::tiles::fits(k) {
            // Each run of rows that lie k apart is a block of `a` for the tiles.
            let mut i0 = 0;
            while i0 < rows.len() {
                let first = rows[i0].as_ptr();
                let run = 1
                    + (rows[i0 + 1..].iter().zip(1..))
                        .take_while(|&(r, i)| std::ptr::eq(r.as_ptr(), first.wrapping_add(i * k)))
                        .count();
                // SAFETY: rows i0..i0 + run lie k apart from `first` and each holds at
                // least k elements; out holds rows.len() * b.n (row-major).
                product(
                    |i| first.add(i * k).cast::<u16>(),
                    run,
                    b,
                    &mut out[i0 * b.n..(i0 + run) * b.n],
                    true,
                );
                i0 += run;
            }
            return;
        }
        product(
            |i| rows[i].as_ptr().cast::<u16>(),
            rows.len(),
            b,
            out,
            false,
        );
    }

    /// Packs `b` ([n, k]) into `xp` as [`gemm_packed`] reads it: pairs of columns as
    /// `[ceil(k / 2)][n rounded up to LANES]` u32 (zero where `b` has no element).
    ///
    /// # Safety
    /// AVX-512F/BW/VL and AVX512-BF16 must be available; `b` holds `n * k` elements and
    /// `xp` at least `ceil(k / 2) * n.div_ceil(LANES) * LANES`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn pack_into(b: &[bf16], n: usize, k: usize, xp: &mut [u32]) {
        pack(b.as_ptr().cast(), n, k, xp.as_mut_ptr());
    }

    /// Packs `b` (`n` rows of `k` bf16) into `xp` as [`gemm_packed`] describes: 8 rows x
    /// 8 pairs at a time, transposed in registers.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pack(b: *const u16, n: usize, k: usize, xp: *mut u32) {
        let (n_pad, kp) = (n.div_ceil(LANES) * LANES, k.div_ceil(2));
        for g in (0..n_pad).step_by(PACK_ROWS) {
            let mut p = 0;
            while p < kp {
                // bf16 elements of each row from column 2p: a masked load past k reads
                // nothing and yields zeros (the odd column's partner included).
                let mask = crate::lanes::first16(k - 2 * p);
                let mut v = [_mm256_setzero_si256(); 8];
                for (t, row) in v.iter_mut().enumerate() {
                    if g + t < n {
                        *row = _mm256_maskz_loadu_epi16(mask, b.add((g + t) * k + 2 * p).cast());
                    }
                }
                let v = transpose8(v);
                for (j, col) in v.iter().enumerate().take(kp - p) {
                    _mm256_storeu_si256(xp.add((p + j) * n_pad + g).cast(), *col);
                }
                p += 8;
            }
        }
    }

    /// The 8 x 8 transpose of 32-bit elements: `out[j][i] = v[i][j]`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn transpose8(v: [__m256i; 8]) -> [__m256i; 8] {
        let t = |x, y| (_mm256_unpacklo_epi32(x, y), _mm256_unpackhi_epi32(x, y));
        let ((t0, t1), (t2, t3)) = (t(v[0], v[1]), t(v[2], v[3]));
        let ((t4, t5), (t6, t7)) = (t(v[4], v[5]), t(v[6], v[7]));
        let u = |x, y| (_mm256_unpacklo_epi64(x, y), _mm256_unpackhi_epi64(x, y));
        let ((u0, u1), (u2, u3)) = (u(t0, t2), u(t1, t3));
        let ((u4, u5), (u6, u7)) = (u(t4, t6), u(t5, t7));
        [
            _mm256_permute2x128_si256::<0x20>(u0, u4),
            _mm256_permute2x128_si256::<0x20>(u1, u5),
            _mm256_permute2x128_si256::<0x20>(u2, u6),
            _mm256_permute2x128_si256::<0x20>(u3, u7),
            _mm256_permute2x128_si256::<0x31>(u0, u4),
            _mm256_permute2x128_si256::<0x31>(u1, u5),
            _mm256_permute2x128_si256::<0x31>(u2, u6),
            _mm256_permute2x128_si256::<0x31>(u3, u7),
        ]
    }

    /// `(r0, rows, m, k, xp, n_pad, out, ldo, cols)` of [`panel`]: rows `r0..r0 + rows`
    /// of the `m`, `k` wide, against `cols` packed columns at `xp`, into `out` (row
    /// `r0`'s first column).
    type Panel = (
        usize,
        usize,
        usize,
        usize,
        *const u32,
        usize,
        *mut f32,
        usize,
        usize,
    );

    /// `rows` (>= 1) rows from `r0` against `cols` (<= NV * LANES) packed columns, MR
    /// rows at a time.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn panel<const MR: usize, const NV: usize>(
        row: impl Fn(usize) -> *const u16,
        args: Panel,
    ) {
        let (r0, rows, m, k, xp, n_pad, out, ldo, cols) = args;
        let mut r = 0;
        while r < rows {
            let (first, live) = (r0 + r, (rows - r).min(MR));
            // Rows past `live` repeat the last one (their sums are not stored).
            let w: [*const u16; MR] = std::array::from_fn(|i| row(first + i.min(live - 1)));
            // The MR rows after these, where they all exist, to prefetch.
            let next = (live == MR && first + 2 * MR <= m)
                .then(|| std::array::from_fn(|i| row(first + MR + i)));
            // SAFETY: row r of this panel's out.
            block::<MR, NV>(
                (w, live, next),
                k,
                (xp, n_pad),
                (out.add(r * ldo), ldo, cols),
            );
            r += live;
        }
    }

    /// Adds pairs `p0..p1` of the rows `w` and the packed columns at `xp` to `acc`; with
    /// `TAIL`, each row's pair is its last (odd) column alone.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    #[inline]
    unsafe fn pairs<const MR: usize, const NV: usize, const TAIL: bool>(
        acc: &mut [[__m512; NV]; MR],
        w: &[*const u16; MR],
        xp: *const u32,
        n_pad: usize,
        p0: usize,
        p1: usize,
    ) {
        for p in p0..p1 {
            let x = xp.add(p * n_pad);
            let xv: [__m512bh; NV] = std::array::from_fn(|v| {
                // SAFETY: NV vectors of LANES columns lie within the n_pad of this pair;
                // both are plain 512-bit vectors.
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    x.add(v * LANES).cast(),
                ))
            });
            for (row, &wr) in acc.iter_mut().zip(w) {
                let pair = if TAIL {
                    i32::from(*wr.add(2 * p))
                } else {
                    wr.add(2 * p).cast::<i32>().read_unaligned()
                };
                let wv = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair));
                for (s, &xj) in row.iter_mut().zip(&xv) {
                    *s = _mm512_dpbf16_ps(*s, wv, xj);
                }
            }
        }
    }

    /// `out[i * ldo + j] = w_i . b_j` for the first `rows` (1..=MR) of the rows `w`
    /// (`k` long) and `cols` packed columns (`NV` vectors, the last one partly live);
    /// `next`, the rows to prefetch meanwhile.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn block<const MR: usize, const NV: usize>(
        (w, rows, next): ([*const u16; MR], usize, Option<[*const u16; MR]>),
        k: usize,
        (xp, n_pad): (*const u32, usize),
        (out, ldo, cols): (*mut f32, usize, usize),
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        let kp = k / 2;
        // Where the MR rows after these all exist, one cache line of each is prefetched
        // into L2 per 16 pairs (64 bytes of a row): rows streamed from memory arrive
        // while this block computes (the hardware prefetcher stops at page edges, and a
        // row of 2048 bf16 is one page).
        let mut p = 0;
        while p < kp {
            let end = (p + 16).min(kp);
            if let Some(next) = next {
                for r in next {
                    // SAFETY: the row exists, k long, and column 2p < k.
                    _mm_prefetch::<_MM_HINT_T1>(r.add(2 * p).cast());
                }
            }
            pairs::<MR, NV, false>(&mut acc, &w, xp, n_pad, p, end);
            p = end;
        }
        if k % 2 == 1 {
            // The last column alone (its partner in xp is zero).
            pairs::<MR, NV, true>(&mut acc, &w, xp, n_pad, kp, kp + 1);
        }
        for (i, row) in acc.iter().enumerate().take(rows) {
            for (v, &s) in row.iter().enumerate() {
                let (dst, live) = (out.add(i * ldo + v * LANES), cols.saturating_sub(v * LANES));
                if live >= LANES {
                    _mm512_storeu_ps(dst, s);
                } else if live > 0 {
                    _mm512_mask_storeu_ps(dst, (1u16 << live) - 1, s);
                }
            }
        }
    }

    /// Rows of `a` per register tile.
    const MR: usize = 4;
    /// Rows of `b` per register tile.
    const NR: usize = 4;

    /// See [`super::gemm_nt`]: 4 x 4 register tiles (4 x 3, 4 x 2, 4 x 1 and 1 x 4 ... at
    /// the edges) of 32-wide `VDPBF16PS` steps, the last step of every row masked (any
    /// `k`, odd included); a row of `a` stays in L1 across a whole pass over `b`. With
    /// at most [`SEQUENTIAL_MAX_N`] rows of `b` (decode: the work is reading `a`), the
    /// rows of `a` are taken one at a time instead, in memory order, the next one
    /// prefetched meanwhile.
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
        if n > SEQUENTIAL_MAX_N {
            return rows_nt(a, b, (m, n, k), o, n);
        }
        for r in 0..m {
            // SAFETY: row r of a and of out exist (r < m); the next row, prefetched, too
            // where r + 1 < m (the last row takes the tile that prefetches nothing).
            let (ap, op) = (a.add(r * k), o.add(r * n));
            let next = r + 1 < m;
            match (n, next) {
                (1, true) => tile::<1, 1, true>(ap, b, k, op, n, ap.add(k)),
                (2, true) => tile::<1, 2, true>(ap, b, k, op, n, ap.add(k)),
                (_, true) => tile::<1, 3, true>(ap, b, k, op, n, ap.add(k)),
                (1, false) => tile::<1, 1, false>(ap, b, k, op, n, ap),
                (2, false) => tile::<1, 2, false>(ap, b, k, op, n, ap),
                (_, false) => tile::<1, 3, false>(ap, b, k, op, n, ap),
            }
        }
    }

    /// Rows of `b` up to which [`gemm_nt`] streams the rows of `a` one at a time. Several
    /// rows of `a` at once (the 4 x n tiles) read 4 pages side by side: a 2-core Zen 5,
    /// 512 MiB of `a` through 512-row tiles at k = 2048, both cores, in the same minutes:
    /// 1 row of `b` 49-68 vs 40-52 GB/s, 2 rows 46-75 vs 39-51, 3 rows 47-69 vs 38-51.
    pub const SEQUENTIAL_MAX_N: usize = 3;

    /// [`gemm_nt`] on raw pointers, row `i` of the output at `o + i * ldo` (`ldo >= n`).
    ///
    /// # Safety
    /// As [`gemm_nt`]; `o + i * ldo + j` for `i < m`, `j < n` must be writable.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn rows_nt(
        a: *const u16,
        b: *const u16,
        (m, n, k): (usize, usize, usize),
        o: *mut f32,
        ldo: usize,
    ) {
        let mut r = 0;
        while r < m {
            let mr = (m - r).min(MR);
            let mut c = 0;
            while c < n {
                let nr = (n - c).min(NR);
                // SAFETY (all four): rows r..r + mr of a and c..c + nr of b exist (mr, nr
                // clipped to m, n), and o + (r + i) * ldo + c + j for i < mr, j < nr is
                // writable (this function's contract).
                let (ap, bp, op) = (a.add(r * k), b.add(c * k), o.add(r * ldo + c));
                // Edge tiles keep every row of `b` they load in registers across the
                // rows of `a` (4 x 3, 4 x 2, ...), rather than one column at a time.
                if mr == MR && c == 0 && r + 2 * MR <= m {
                    // The first pass over these rows of `a` also prefetches the next MR
                    // rows (which exist: r + 2 MR <= m): rows streamed from memory (one
                    // page each, where the hardware prefetcher stops) arrive while this
                    // block computes.
                    let next = ap.add(MR * k);
                    match nr {
                        NR => tile::<MR, NR, true>(ap, bp, k, op, ldo, next),
                        3 => tile::<MR, 3, true>(ap, bp, k, op, ldo, next),
                        2 => tile::<MR, 2, true>(ap, bp, k, op, ldo, next),
                        _ => tile::<MR, 1, true>(ap, bp, k, op, ldo, next),
                    }
                } else if mr == MR {
                    match nr {
                        NR => tile::<MR, NR, false>(ap, bp, k, op, ldo, ap),
                        3 => tile::<MR, 3, false>(ap, bp, k, op, ldo, ap),
                        2 => tile::<MR, 2, false>(ap, bp, k, op, ldo, ap),
                        _ => tile::<MR, 1, false>(ap, bp, k, op, ldo, ap),
                    }
                } else {
                    for i in 0..mr {
                        let (ai, oi) = (ap.add(i * k), op.add(i * ldo));
                        match nr {
                            NR => tile::<1, NR, false>(ai, bp, k, oi, ldo, ai),
                            3 => tile::<1, 3, false>(ai, bp, k, oi, ldo, ai),
                            2 => tile::<1, 2, false>(ai, bp, k, oi, ldo, ai),
                            _ => tile::<1, 1, false>(ai, bp, k, oi, ldo, ai),
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
    #[cfg(target_arch = "x86_64")]
    use crate::quads::Kind;

    /// [`gemm_nt`] as the experts call it: `b` packed first where [`Packed::new`] does.
    fn product(a: &[bf16], b: &[bf16], k: usize, out: &mut [f32]) -> Result<()> {
        let packed = Packed::new(b, k)?;
        gemm_nt(a, b, k, packed.as_ref(), out)
    }

    /// Uniform-ish bf16 values in [-2, 2) from a fixed-seed generator.
    fn values(len: usize, seed: u64) -> Vec<bf16> {
        crate::test_util::bf16_values(len, seed, -2.0)
    }

    #[test]
    fn the_dot_outpaces_the_fma_only_where_it_exists_and_the_choice_holds_for_the_process() {
        let first = outpaces_fma();
        assert!(!first || native());
        // Timed once: every later call gives the same answer, so one process never mixes
        // kernel choices.
        assert!((0..3).all(|_| outpaces_fma() == first));
        // The loops it compares exist exactly where the native dot does (x86-64 with
        // AVX512-BF16, which the compute loop's AVX-512F comes with).
        let dot = moemla_core::peak::bf16_dot_loop();
        assert_eq!(dot.is_some() && native(), native(), "{dot:?}");
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

    /// The rounding bound of an f32 sum of exact products `p` (`a` and `b` k long) made
    /// with `adds` additions on the way from any product to the sum: `adds * eps * sum
    /// |p|` ([`adds`] says how many each path makes).
    fn bound(a: &[bf16], b: &[bf16], adds: usize) -> f64 {
        let abs: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x.to_f64() * y.to_f64()).abs())
            .sum();
        adds as f64 * f32::EPSILON as f64 * abs
    }

    /// The additions behind output column `col` of an `n`-column product of width `k` on
    /// this CPU: on AMX tiles, one chain of k; octets sum on 2 elements (two products a step, k / 4 steps) and then
    /// the elements (1); the quad layout on 4 (k / 8 steps) and then 2; the pair layout
    /// is one chain of k; the row dots sum on 16 lanes (k / 16 each) and then the lanes
    /// (at most 32 counted).
    fn adds(n: usize, col: usize, k: usize) -> usize {
        #[cfg(target_arch = "x86_64")]
        {
            if on_tiles(k) && n > x86::REST_MAX {
                return k + 1;
            }
            if native() && quads::Octets::<Bf16>::pays_streamed(n) {
                return 2 * k.div_ceil(4) + 1;
            }
            if native() && Bf16::pays(n) {
                return 2 * k.div_ceil(8) + 2;
            }
            if native() && n >= x86::PACKED_MIN_N && col < n - x86::rest_rows(n) {
                return k + 1;
            }
        }
        let _ = (n, col);
        k / 16 + 32
    }

    #[test]
    fn matches_an_f64_reference_at_odd_and_tail_shapes() {
        // k: below one step, one step, odd, one past, several steps with a tail. n picks
        // the packed layout where the native dot runs: quads from 4 to 12 rows (1 to 3
        // groups, the last partly live), octets from 13 to 24 (2 and 3 groups, the last
        // partly live but at 16 and 24), each tile shape with a remainder of rows; pairs
        // from 25: one to eight vectors of 16 (the last partly
        // live; five split 3 + 2, seven 4 + 3, eight 4 + 4), rows in blocks of 12, 8 and
        // 6 with a remainder, panels of 24 and a partial one. The row dots run every n
        // unpacked as well (full 4 x 4 tiles and every remainder; 1 to 3 rows of b one
        // row of a at a time), and the f32 path. Where AMX tiles run, the shapes whose k is
        // a multiple of 32 take them instead of quads, octets or pairs (4 x 4 x 32,
        // 6 x 11 x 96, 8 x 8 x 2048, 25 x 40 x 64, 40 x 20 x 64 with two row tiles).
        for (m, n, k) in [
            (6, 1, 2049),
            (5, 2, 33),
            (9, 3, 577),
            (11, 14, 45),
            (29, 13, 2049),
            (3, 21, 9),
            (1, 1, 1),
            (3, 5, 7),
            (4, 4, 32),
            (5, 9, 33),
            (9, 6, 577),
            (4, 7, 65),
            (6, 11, 96),
            (8, 8, 2048),
            (2, 16, 1),
            (7, 17, 31),
            (30, 24, 2049),
            (13, 33, 577),
            (25, 40, 64),
            (40, 20, 64),
            (50, 19, 130),
            (9, 80, 67),
            (30, 70, 31),
            (30, 64, 67),
            (13, 100, 33),
            (25, 128, 31),
        ] {
            let (a, b) = (values(m * k, 1 + k as u64), values(n * k, 99 + m as u64));
            let mut out = vec![f32::NAN; m * n];
            product(&a, &b, k, &mut out).unwrap();
            let want = reference(&a, &b, k);
            // The f32 path agrees to the same bound (only the summation order differs).
            let mut port = vec![f32::NAN; m * n];
            portable(&a, &b, (m, n, k), &mut port);
            for (idx, ((&g, &p), &w)) in out.iter().zip(&port).zip(&want).enumerate() {
                let (ar, br) = (&a[idx / n * k..][..k], &b[idx % n * k..][..k]);
                let tol = bound(ar, br, adds(n, idx % n, k));
                assert!(
                    (g as f64 - w).abs() <= tol,
                    "m {m} n {n} k {k} [{idx}]: {g} vs {w}"
                );
                let tol = bound(ar, br, k / 16 + 32);
                assert!((p as f64 - w).abs() <= tol, "f32 path [{idx}]: {p} vs {w}");
            }
            // The row dots (and the f32 path elsewhere) on b unpacked.
            let mut dots = vec![f32::NAN; m * n];
            gemm_nt(&a, &b, k, None, &mut dots).unwrap();
            for (idx, (&d, &w)) in dots.iter().zip(&want).enumerate() {
                let (ar, br) = (&a[idx / n * k..][..k], &b[idx % n * k..][..k]);
                let tol = bound(ar, br, k / 16 + 32);
                assert!((d as f64 - w).abs() <= tol, "row dots [{idx}]: {d} vs {w}");
            }
        }
    }

    #[test]
    fn packed_rows_meet_rows_anywhere_in_memory() {
        // gemm_rows: rows strided past k (their tails must not be read), against b packed
        // in quads (9 rows), octets (13), pairs (32) and pairs with rest rows (34), and
        // asked for in quads (1 and 3 rows: one partial group; 17 and 20: five groups) or
        // octets (16: two groups).
        let k = 37;
        for (n, asked) in [
            (9, false),
            (13, false),
            (32, false),
            (34, false),
            (1, true),
            (3, true),
            (17, true),
            (20, true),
            (16, true),
        ] {
            let b = values(n * k, 8);
            let packed = if asked {
                Packed::in_quads(&b, k)
            } else {
                Packed::new(&b, k)
            };
            let Some(packed) = packed.unwrap() else {
                return;
            };
            let stride = k + 5;
            let mut mat = values(9 * stride, 9);
            for row in mat.chunks_exact_mut(stride) {
                row[k..].fill(bf16::NAN);
            }
            let rows: Vec<&[bf16]> = mat.chunks_exact(stride).collect();
            let mut out = vec![f32::NAN; rows.len() * n];
            gemm_rows(&rows, &packed, &mut out).unwrap();
            let a: Vec<bf16> = rows.iter().flat_map(|r| r[..k].iter().copied()).collect();
            let want = reference(&a, &b, k);
            for (idx, (&g, &w)) in out.iter().zip(&want).enumerate() {
                let (ar, br) = (&a[idx / n * k..][..k], &b[idx % n * k..][..k]);
                // Asked-for quads or octets: at most 2 ceil(k / 4) + 1 additions, within
                // k + 1.
                let tol = bound(ar, br, if asked { k + 1 } else { adds(n, idx % n, k) });
                assert!((g as f64 - w).abs() <= tol, "n {n} [{idx}] {g} vs {w}");
            }
        }
    }

    #[test]
    fn the_packed_path_ignores_what_lies_past_its_rows() {
        // Inf and NaN right after a's last row (and b's) must not reach the output: the
        // odd column's partner in a pair is the next row's first element, a quad step's
        // piece reaches 7 columns on and an octet step's 3. Nothing may be written past
        // the output either. Quads (9 rows of b: a partly live group), octets (21: a
        // partly live group), pairs (40), pairs with rest rows (35).
        if !native() {
            return;
        }
        for n in [9, 21, 40, 35] {
            let (m, k) = (7, 33);
            let mut a = values(m * k + 8, 5);
            let mut b = values(n * k + 8, 6);
            a[m * k..].fill(bf16::INFINITY);
            b[n * k..].fill(bf16::NAN);
            let mut buf = vec![f32::NAN; m * n + 16];
            buf[m * n..].fill(-7.0);
            product(&a[..m * k], &b[..n * k], k, &mut buf[..m * n]).unwrap();
            assert!(
                buf[m * n..].iter().all(|&v| v == -7.0),
                "n {n}: written past out"
            );
            let out = &buf[..m * n];
            let want = reference(&a[..m * k], &b[..n * k], k);
            for (idx, (&g, &w)) in out.iter().zip(&want).enumerate() {
                let (ar, br) = (&a[idx / n * k..][..k], &b[idx % n * k..][..k]);
                let tol = bound(ar, br, adds(n, idx % n, k));
                assert!((g as f64 - w).abs() <= tol, "n {n} [{idx}] {g} vs {w}");
            }
        }
    }

    #[test]
    fn products_are_exact_when_the_sum_is() {
        // Integers: every partial sum is exact in f32, so every path must be exact: the
        // row dots (3 rows of b), quads (5), octets (14, 19, 24, 16), pairs (35: 32
        // packed + 3 on the row dots; 40: 3 vectors), with an odd k.
        let k = 101;
        for n in [3, 5, 14, 19, 24, 16, 35, 40] {
            let a: Vec<bf16> = (0..2 * k)
                .map(|i| bf16::from_f32((i % 13) as f32 - 6.0))
                .collect();
            let b: Vec<bf16> = (0..n * k)
                .map(|i| bf16::from_f32((i % 7) as f32 - 3.0))
                .collect();
            let mut out = vec![0.0; 2 * n];
            product(&a, &b, k, &mut out).unwrap();
            let want: Vec<f32> = reference(&a, &b, k).iter().map(|&w| w as f32).collect();
            assert_eq!(out, want, "n {n}");
        }
    }

    #[test]
    fn each_layout_is_chosen_where_it_pays() {
        // For rows of `a` from memory: quads from 4 to 12 rows, octets from 13 to 24, pairs
        // from 25, none below 4. Asked for quads (rows of `a` from cache): from 1 to 24
        // rows, in octets at 13 to 16 and 21 to 24; none past 24.
        if !native() {
            return;
        }
        let octets = |p: Packed| match p.layout {
            Layout::Quads(lanes) => Some(lanes.octets()),
            Layout::Pairs { .. } => None,
        };
        let layout = |n: usize| Packed::new(&values(n * 9, 4), 9).unwrap().map(octets);
        assert_eq!(layout(3), None);
        assert_eq!(layout(4), Some(Some(false)));
        assert_eq!(layout(12), Some(Some(false)));
        for n in [13, 16, 20, 24] {
            assert_eq!(layout(n), Some(Some(true)), "{n} rows");
        }
        assert_eq!(layout(25), Some(None));
        let quads = |n: usize| Packed::in_quads(&values(n * 9, 4), 9).unwrap().map(octets);
        for n in [1, 3, 12, 17, 20] {
            assert_eq!(quads(n), Some(Some(false)), "{n} rows");
        }
        for n in [13, 16, 21, 24] {
            assert_eq!(quads(n), Some(Some(true)), "{n} rows");
        }
        assert_eq!(quads(25), None);
        assert!(Packed::in_quads(&values(10, 4), 3).is_err());
        assert!(Packed::in_quads(&values(9, 4), 0).is_err());
    }

    #[test]
    fn exact_converts_only_bf16_values_and_rows_are_bounds_checked() {
        let v = [1.5f32, -0.0, f32::NAN, f32::INFINITY, bf16::MAX.to_f32()];
        let got = exact(&v).unwrap().unwrap();
        assert_eq!(got[0].to_f32(), 1.5);
        assert!(got[1].to_f32() == 0.0 && got[1].is_sign_negative());
        assert!(got[2].is_nan());
        assert_eq!(got[3], bf16::INFINITY);
        assert_eq!(got[4], bf16::MAX);
        // A NaN whose payload is only in the low bits stays NaN (not infinity).
        let low_nan = f32::from_bits(0x7F80_0001);
        assert!(exact(&[low_nan]).unwrap().unwrap()[0].is_nan());
        // Mismatched lengths: false, nothing written.
        let mut short = [bf16::ZERO; 1];
        assert!(!exact_into_slice(&[1.0, 2.0], &mut short));
        assert_eq!(short[0], bf16::ZERO);
        // 1 + 2^-10 needs 11 significant bits: not a bf16 value.
        assert_eq!(exact(&[1.0, 1.0 + 1.0 / 1024.0]).unwrap(), None);
        // Across the parallel chunks: every value converted, and one inexact value in the
        // last chunk alone refuses the whole.
        let mut many: Vec<f32> = values(3 * EXACT_CHUNK + 5, 9)
            .iter()
            .map(|v| v.to_f32())
            .collect();
        let got = exact(&many).unwrap().unwrap();
        assert!(got.iter().zip(&many).all(|(g, &v)| g.to_f32() == v));
        *many.last_mut().unwrap() += 1.0 / 1024.0;
        assert_eq!(exact(&many).unwrap(), None);
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
        assert!(product(&a, &a[..4], 4, &mut out).is_err());
        // 2 x 2 products need 4 outputs, not 3.
        assert!(product(&a[..4], &a[..4], 2, &mut out[..3]).is_err());
        assert!(product(&a, &a, 0, &mut out).is_err());
        assert!(product(&[], &[], 0, &mut []).is_err());
        // A packed b of another shape than b (17 rows of 2 for 16 rows of 2).
        let b = values(17 * 2, 2);
        if let Some(p) = Packed::new(&b, 2).unwrap() {
            assert!(gemm_nt(&a[..2], &b[..32], 2, Some(&p), &mut out[..0]).is_err());
            assert!(gemm_nt(&a[..2], &b[..32], 2, Some(&p), &mut [0.0; 16]).is_err());
        }
        // The failed calls wrote nothing.
        assert_eq!(out, vec![0.0; 4]);
    }
}

//! The two products of f32 attention on AVX-512F where the CPU has it, else on AVX2 + FMA
//! ([`avx2`], 8-lane tiles of the same scheme), else plain loops, chosen at run time
//! ([`isa`]; callers without a vector unit keep their general GEMM): the scores
//! `S = Q K^T` ([`gemm_qk`]) and
//! `acc += P V` ([`gemm_pv`]), both reading the K/V rows in place (no copy, no packing:
//! V rows are already 16 or 8 columns per vector), one fused multiply-add per product into
//! f32 sums; from 16 query rows the scores on query rows prepared once ([`Query`],
//! [`gemm_qk_prepared`]): in octets or quads up to 24 rows where the CPU runs the quad
//! kernels, from 25 rows packed for the register-tiled kernel of [`crate::gemm_util`].
//! Single-threaded; callers parallelise over independent tiles.

use crate::aligned::Aligned;
use crate::gemm_util::{matmul_nt_packed, PackedRows};
#[cfg(target_arch = "x86_64")]
use crate::quads;
use crate::storage::FloatSlice;
use crate::vendor::intel;
use moemla_core::{Error, Result};

#[cfg(target_arch = "x86_64")]
mod avx2;

/// The instructions [`gemm_qk`] and [`gemm_pv`] run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub enum Isa {
    /// AVX-512F (the kernels of `x86`, with [`Query`]'s prepared rows).
    Avx512,
    /// AVX2 + FMA, for CPUs without AVX-512 (the kernels of `avx2`).
    Avx2,
    /// Plain loops (no x86 vector unit the kernels know).
    Plain,
}

/// What [`gemm_qk`] and [`gemm_pv`] run on this CPU: AVX-512F where it has it, else AVX2 +
/// FMA, else plain loops.
pub fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    if native() {
        return Isa::Avx512;
    } else if crate::avx2::available() {
        return Isa::Avx2;
    }
    Isa::Plain
}

/// Query rows up to which the AVX2 kernels beat the general GEMM (which packs both
/// operands of every chunk, then runs its register-tiled kernel on the packed panels). On
/// a 2-core AMD EPYC (Zen 3), `moemla bench --backend cpu --op mla_decode --dtype f32`
/// (b 4), two alternated runs each, general GEMM vs AVX2: 16 rows 1.43-1.45 vs 1.02-1.04
/// ms (1024 positions), 6.05-6.22 vs 5.70-5.71 ms (4096); 32 rows 2.40-2.43 vs 2.03-2.05
/// ms, 9.77-9.89 vs 9.51 ms; 128 rows 7.49-7.61 vs 7.81-7.93 ms, 29.3-29.4 vs 33.3 ms;
/// 256 rows 14.3 vs 15.8 ms, 55.1 vs 64.3-64.7 ms; the sparse decode (bf16, FP8 cache,
/// rows dequantized to f32) at 64 rows 303-305 vs 302-303 ms, 128 rows 514-518 vs
/// 539-541 ms.
pub const AVX2_MAX_ROWS: usize = 32;

/// Whether the kernels of [`gemm_qk`] and [`gemm_pv`] beat the general GEMM for `m` query
/// rows on this CPU: AVX-512F at any count, AVX2 up to [`AVX2_MAX_ROWS`], plain loops
/// never.
pub fn pays(m: usize) -> bool {
    match isa() {
        Isa::Avx512 => true,
        Isa::Avx2 => m <= AVX2_MAX_ROWS,
        Isa::Plain => false,
    }
}

/// Whether [`gemm_qk`] and [`gemm_pv`] run on AVX-512F on this CPU (and [`Query`]
/// prepares rows).
pub fn native() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Query rows from which [`Query`] packs them whole, for the register-tiled kernel of
/// [`crate::gemm_util`] (12 cache rows broadcast against 32 query rows per tile, the
/// queries packed once per attention instead of once per chunk as the general GEMM packs
/// its operands; the values as [`PackedRows`] takes them): one more than the octet and
/// quad kernels take at once. Below that, octets or quads. One core of a 2-core Zen 5,
/// the scores of 128 cache rows at k = 576 from L2, GFLOP/s (packed whole / in octets or
/// quads, in parts of at most 24 rows): 26 rows 202/190-193, 28 rows 214-217/198-204, 32
/// rows 249-253/234-238, 40 rows 194-197/205-214, 48 rows 236-238/233-234, 56 rows
/// 214-216/198-200; `mla_decode` f32 at h_q 16, s_q 2 (b 4, 32 rows), alternated runs of
/// two builds: 1024 positions 646-663 vs 727-728 µs (quads then), 4096 positions
/// 2.61-2.69 vs 2.78-2.81 ms. On a 2-core Zen 5 (one thread per core), `mla_decode` f32
/// at h_q 128 (b 4), in one process,
/// alternated rounds against the general GEMM: 1024 positions best 2.60 vs 2.70 ms, 4096
/// positions 10.28-10.40 vs 10.88-11.01 ms, the cache rows copied either way; read in
/// place (one run per block of the table) a copy fewer. On an Intel Xeon (one core,
/// DeepSeek's width, 1024 positions) the earlier [`gemm_qk`]'s 4 x 4 tiles, which re-read
/// the query rows from L2 once per four cache rows, held both products to 45-48% of the
/// core's FMA peak at any row count, while the general GEMM reached 60% at 64 rows and
/// 73% at 256.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub const PACKED_MIN_ROWS: usize = 25;

/// Bytes of query rows one pass of [`gemm_qk`] holds in L1 on Intel cores ([`qk_pass`]).
const QUERY_PASS_BYTES: usize = 24 << 10;

/// Query rows up to which [`qk_pass`] splits the key columns on Intel cores.
const PASS_MAX_ROWS: usize = 32;

/// Key columns per pass of [`gemm_qk`] over `m` query rows of `k`: all of them, except on
/// Intel cores with up to 32 rows, whose query block is split into passes of whole
/// 16-column steps that about fit [`QUERY_PASS_BYTES`] (the rounding up to whole steps
/// adds at most 64 bytes per row), so that it stays in L1 beside the tile
/// of cache rows it meets (each pass adds one reduction per 4 x 4 tile). On an Intel Xeon
/// (one core, `mla_decode` at DeepSeek's width, 4096 positions) the op went from 45% to
/// 52% of the core's FMA peak at 16 rows (two passes) and from 47% to 52% at 32 (three).
/// On a 2-core AMD EPYC (Zen 5) the passes made 16 heads 0-9% slower: other CPUs keep
/// one pass.
fn qk_pass(m: usize, k: usize) -> usize {
    if m > PASS_MAX_ROWS || !intel() {
        return k;
    }
    let passes = m
        .saturating_mul(k)
        .saturating_mul(4)
        .div_ceil(QUERY_PASS_BYTES);
    k.div_ceil(passes.max(1))
        .div_ceil(16)
        .saturating_mul(16)
        .min(k)
}

/// `out[r * n + j] = q_r . row_j` for the `m` rows of `q` [m, k] (row-major) and the `n`
/// rows `rows` (each at least `k` long; its first `k` columns are used); `out` is [m, n]
/// and is overwritten.
///
/// A `k` of 0, a `q` that is not whole rows of `k`, a short row or an `out` that is not
/// `m * n` long are [`Error::Device`]; nothing is written then. The order of the f32
/// additions (and so the last bits) depends on the CPU: AVX-512F, AVX2 or plain loops,
/// and on AVX-512 Intel cores with few rows, passes over the columns ([`qk_pass`]).
pub fn gemm_qk(q: &[f32], k: usize, rows: &[&[f32]], out: &mut [f32]) -> Result<()> {
    let m = q.len() / k.max(1);
    gemm_qk_with(isa(), qk_pass(m, k), q, k, rows, out)
}

/// Query rows [m, k] (f32) prepared once per attention for [`gemm_qk_prepared`], the
/// scores coming out transposed and turned back. From [`QUAD_MIN_ROWS`] to below
/// [`PACKED_MIN_ROWS`] rows where the quad kernels run ([`quads::available`]): packed in
/// octets (16 and 21 to 24 rows: 8 query rows per vector, a piece of 2 columns of a cache
/// row broadcast against them) or quads (4 query rows per 128-bit lane, pieces of 4
/// columns), each score the sum of its lane's chains at the end ([`quads::F32Lanes`]).
/// On a 2-core Zen 5, `mla_decode` f32 at h_q 16 (b 4), in one process, three
/// interleaved rounds of quads against [`gemm_qk`]'s 4 x 4 tiles of row dots: s_q 1,
/// 1024 positions 0.42-0.44 vs 0.50-0.51 ms, 4096 positions 1.60-1.62 vs 2.00-2.08 ms;
/// octets against quads at s_q 1, alternated runs of two builds: 349-359 vs 362-372 µs
/// and 1.36-1.45 vs 1.40-1.52 ms. From [`PACKED_MIN_ROWS`] rows on AVX-512F: all of them
/// packed as [`PackedRows`] packs them (groups of 16 rows, column by column, each value of a cache
/// row broadcast against 16 of them, one chain of k additions per score; where the quad
/// kernels run, the last 1 to 4 rows past whole groups in quads).
#[derive(Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub struct Query<'q> {
    /// Rows.
    m: usize,
    /// Their width.
    k: usize,
    /// How they are prepared.
    form: Form<'q>,
}

/// The two ways [`Query`] prepares its rows.
#[derive(Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Form<'q> {
    /// All of them in octets or quads.
    #[cfg(target_arch = "x86_64")]
    Lanes(quads::F32Lanes),
    /// All of them, for [`matmul_nt_packed`].
    Packed(PackedRows<'q>),
}

/// Query rows from which [`Query`] prepares them in octets or quads (below that,
/// [`gemm_qk`]).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub const QUAD_MIN_ROWS: usize = 16;

impl<'q> Query<'q> {
    /// `q` [m, k] prepared, or `None` below [`QUAD_MIN_ROWS`] rows or where the kernels do
    /// not run here (the quad kernels below [`PACKED_MIN_ROWS`] rows, AVX-512F from there). A `k`
    /// of 0 or a `q` that is not whole rows of `k` are [`Error::Device`]; the packed rows
    /// are allocated fallibly.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    pub fn new(q: &'q [f32], k: usize) -> Result<Option<Query<'q>>> {
        let m = qk_shape("f32 query rows", q.len(), k, &[] as &[&[f32]], 0)?;
        #[cfg(target_arch = "x86_64")]
        if native() && m >= PACKED_MIN_ROWS {
            let form = Form::Packed(PackedRows::new(q, k)?);
            return Ok(Some(Query { m, k, form }));
        }
        #[cfg(target_arch = "x86_64")]
        if quads::available() && (QUAD_MIN_ROWS..PACKED_MIN_ROWS).contains(&m) {
            const _: () = assert!(PACKED_MIN_ROWS == quads::MAX_ROWS + 1);
            // Octets where they pay on rows of `a` from cache: the cache rows come from L2
            // at short contexts (where quads pay at 17 to 20 query rows), from memory at
            // long ones.
            let form = Form::Lanes(quads::F32Lanes::new(
                q,
                (m, k),
                false,
                "cpu f32 query lanes",
                || device("f32 query rows", format!("{m} rows of {k} overflow")),
            )?);
            return Ok(Some(Query { m, k, form }));
        }
        Ok(None)
    }

    /// Whether the rows are packed whole ([`PACKED_MIN_ROWS`] and more), for the kernel
    /// that meets the cache rows a run at a time.
    pub fn packed(&self) -> bool {
        matches!(self.form, Form::Packed(_))
    }
}

/// `out[r * n + j] = q_r . row_j` as [`gemm_qk`], for prepared query rows and the `n`
/// cache rows given as runs of consecutive rows (`runs`, each whole rows of the query
/// width, `k` values per row, no gaps): the scores come out transposed into `scores_t`
/// (working memory, grown fallibly) and are turned back. A run that is not whole rows or
/// an `out` that is not `m * n` long are [`Error::Device`]; nothing is written to `out`
/// then.
pub fn gemm_qk_prepared(
    q: &Query<'_>,
    runs: &[&[f32]],
    out: &mut [f32],
    scores_t: &mut Aligned<f32>,
) -> Result<()> {
    let (m, k) = (q.m, q.k);
    if let Some(run) = runs
        .iter()
        .find(|r| r.is_empty() || !r.len().is_multiple_of(k))
    {
        let message = format!("a run of {} values is not whole rows of {k}", run.len());
        return Err(device("f32 gemm_qk", message));
    }
    let n: usize = runs.iter().map(|r| r.len() / k).sum();
    if m.checked_mul(n) != Some(out.len()) {
        let message = format!("out ({}) must be {m} x {n}", out.len());
        return Err(device("f32 gemm_qk", message));
    }
    if n == 0 {
        // No cache rows: no scores (and no pointer into an empty buffer).
        return Ok(());
    }
    sized(scores_t, m * n, "f32 transposed scores")?;
    match &q.form {
        Form::Packed(packed) => {
            // A run at a time: the kernel reads rows of `a` at one stride.
            let mut j0 = 0;
            for run in runs {
                let rows = run.len() / k;
                let scores = &mut scores_t[j0 * m..(j0 + rows) * m];
                matmul_nt_packed(FloatSlice::F32(run), packed, scores)?;
                j0 += rows;
            }
        }
        #[cfg(target_arch = "x86_64")]
        Form::Lanes(lanes) => {
            // All rows in one pass (row by row through their addresses).
            let rows: Vec<*const f32> = (runs.iter())
                .flat_map(|r| r.chunks_exact(k).map(<[f32]>::as_ptr))
                .collect();
            // SAFETY: `Query::new` packed the rows only where the quad kernels' features
            // were detected, 16..=24 rows of k; each of the n row addresses starts k
            // values of a run; scores_t holds n rows of m.
            unsafe { lanes.multiply(|j| rows[j], n, (scores_t.as_mut_ptr(), m), false) };
        }
    }
    crate::transpose::matrix(scores_t, (n, m), out);
    Ok(())
}

/// The query rows `m` of a `gemm_qk` (`call`): [`Error::Device`] unless `q` elements are
/// whole rows of `k >= 1`, `out` elements are `m * rows.len()` and every row holds at
/// least `k`. Shared by [`crate::bf16attn`].
pub(crate) fn qk_shape<T>(
    call: &str,
    q: usize,
    k: usize,
    rows: &[&[T]],
    out: usize,
) -> Result<usize> {
    let (m, n) = (q / k.max(1), rows.len());
    if k == 0 || m * k != q || m.checked_mul(n) != Some(out) {
        return Err(device(
            call,
            format!(
                "q ({q} elements) must be whole rows of k = {k} >= 1 and out ({out}) rows(q) x {n}"
            ),
        ));
    }
    if let Some(j) = rows.iter().position(|r| r.len() < k) {
        return Err(device(
            call,
            format!("row {j} has {} elements, fewer than k = {k}", rows[j].len()),
        ));
    }
    Ok(m)
}

/// [`gemm_qk`] on `isa`: AVX-512F in passes of `pass` key columns (clamped to 1..=k),
/// AVX2 in one pass, or plain loops (also where the CPU lacks the instructions asked for).
fn gemm_qk_with(
    isa: Isa,
    pass: usize,
    q: &[f32],
    k: usize,
    rows: &[&[f32]],
    out: &mut [f32],
) -> Result<()> {
    let (m, n) = (
        qk_shape("f32 gemm_qk", q.len(), k, rows, out.len())?,
        rows.len(),
    );
    // SAFETY (both kernels): each arm checks that the CPU has its instructions, and the
    // lengths were checked above: `q` holds m rows of k, every row at least k elements,
    // `out` m * n, which is all they read and write.
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512 if native() => {
            // SAFETY: as above.
            unsafe { x86::gemm_qk(q, (m, k, pass), rows, out) };
            return Ok(());
        }
        Isa::Avx2 if crate::avx2::available() => {
            // SAFETY: as above.
            unsafe { avx2::gemm_qk(q, (m, k), rows, out) };
            return Ok(());
        }
        _ => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (isa, pass);
    for (qr, o) in q.chunks_exact(k).zip(out.chunks_exact_mut(n.max(1))) {
        for (row, x) in rows.iter().zip(o.iter_mut()) {
            let mut acc = [0.0f32; 16];
            for (i, (a, b)) in qr.iter().zip(&row[..k]).enumerate() {
                acc[i % 16] = a.mul_add(*b, acc[i % 16]);
            }
            *x = acc.iter().sum();
        }
    }
    Ok(())
}

/// `acc[r * d + c] += sum_j p[r * n + j] * rows[j][c]` for the `m` rows of `p` [m, n]
/// and the `n` value rows `rows` (each at least `d` long; its first `d` columns are
/// used); `acc` is [m, d].
///
/// Lengths that do not fit these shapes are [`Error::Device`]; nothing is written then.
pub fn gemm_pv(p: &[f32], rows: &[&[f32]], d: usize, acc: &mut [f32]) -> Result<()> {
    gemm_pv_with(isa(), p, rows, d, acc)
}

/// [`gemm_pv`] on `isa`: the vector kernels take the columns of whole vectors, plain loops
/// the rest (all of them where the CPU lacks the instructions asked for).
fn gemm_pv_with(isa: Isa, p: &[f32], rows: &[&[f32]], d: usize, acc: &mut [f32]) -> Result<()> {
    let n = rows.len();
    let m = acc.len() / d.max(1);
    if d == 0 || n == 0 || m * d != acc.len() || m.checked_mul(n) != Some(p.len()) {
        return Err(device(
            "f32 gemm_pv",
            format!(
                "p ({} elements), {n} rows and acc ({}) do not make [m, {n}] x [{n}, {d}] \
                 into [m, {d}]",
                p.len(),
                acc.len()
            ),
        ));
    }
    if let Some(j) = rows.iter().position(|r| r.len() < d) {
        return Err(device(
            "f32 gemm_pv",
            format!("row {j} has {} elements, fewer than d = {d}", rows[j].len()),
        ));
    }
    let mut done = 0;
    // SAFETY (both kernels): each arm checks that the CPU has its instructions, and the
    // shapes were checked above: `p` holds m rows of n, every row at least d elements,
    // `acc` m rows of d; the kernels touch columns below `done` (whole vectors, <= d).
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512 if d >= 16 && native() => {
            done = d / 16 * 16;
            // SAFETY: as above.
            unsafe { x86::gemm_pv(p, rows, (m, d, done), acc) };
        }
        Isa::Avx2 if d >= 8 && crate::avx2::available() => {
            done = d / 8 * 8;
            // SAFETY: as above.
            unsafe { avx2::gemm_pv(p, rows, (m, d, done), acc) };
        }
        _ => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    if done < d {
        for (pr, ar) in p.chunks_exact(n).zip(acc.chunks_exact_mut(d)) {
            for (&w, row) in pr.iter().zip(rows) {
                for (a, &v) in ar[done..].iter_mut().zip(&row[done..d]) {
                    *a = w.mul_add(v, *a);
                }
            }
        }
    }
    Ok(())
}

/// A backend error of the attention kernels (this module's and [`crate::bf16attn`]'s).
pub(crate) fn device(call: &str, message: String) -> Error {
    Error::Device {
        backend: crate::NAME.to_string(),
        call: call.to_string(),
        message,
    }
}

/// Makes `out` `len` long (grown fallibly: [`Error::OutOfMemory`]), its elements
/// unspecified: every caller overwrites them all.
pub(crate) fn sized<T: Copy + Default>(out: &mut Aligned<T>, len: usize, call: &str) -> Result<()> {
    // The error's name is only made where the growth fails (this runs per chunk).
    out.try_resize(len, T::default(), call)
        .map_err(|e| match e {
            Error::OutOfMemory { bytes, .. } => Error::OutOfMemory {
                what: format!("cpu {call}"),
                bytes,
            },
            e => e,
        })
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    //! The AVX-512 kernels of both products, generic over the element type ([`Lanes`]:
    //! f32 here, bf16 pairs in [`crate::bf16attn`]). The generic bodies are inlined into
    //! each element type's entry point, which enables that type's instructions.

    use std::arch::x86_64::*;

    /// Query rows and cache rows per register tile of `Q K^T` (4 x 4 sums: one vector).
    const QT: usize = 4;
    /// Rows of `p` per register tile of `P V` (then tiles of 4 rows, then single rows).
    /// 8 x 3 tiles (24 sums, 3 value vectors and a broadcast in registers; 11 loads per
    /// 24 products) against 4 x 4 (8 per 16), on a 2-core Zen 5, `mla_decode` b 4, in one
    /// process, three interleaved rounds: bf16 at h_q 128 s_q 1 4096 positions 6.38-6.43
    /// vs 6.88-6.98 ms, s_q 2 12.4-12.5 vs 13.5-13.9 ms, h_q 16 s_q 1 1.24-1.28 vs
    /// 1.34-1.41 ms; f32 at h_q 16 s_q 1 1.41 vs 1.51-1.52 ms (s_q 2 at 1024 positions
    /// the same).
    const MR: usize = 8;
    /// 16-column vectors per register tile of `P V`.
    const NV: usize = 3;
    /// How many tiles of `QT` cache rows ahead `Q K^T` prefetches.
    const AHEAD: usize = 1;

    /// An element type of the kernels: how one 512-bit step of it is loaded and
    /// multiplied into 16 f32 sums.
    pub(crate) trait Lanes: Copy {
        /// Elements per step of `Q K^T` (one 512-bit vector).
        const STEP: usize;
        /// A vector of `STEP` elements.
        type V: Copy;
        /// What one step of `P V` broadcasts from `p`: one probability, or a pair.
        type Unit: Copy;
        /// `STEP` elements from `p`, the first `live` (<= `STEP`) loaded, the rest zero
        /// (neither read nor faulted on).
        ///
        /// # Safety
        /// The caller enables the type's instructions; `live` elements at `p` exist.
        unsafe fn load(p: *const Self, live: usize) -> Self::V;
        /// `acc` plus the products of `a` and `b` (summed in adjacent pairs for bf16).
        ///
        /// # Safety
        /// The caller enables the type's instructions.
        unsafe fn madd(acc: __m512, a: Self::V, b: Self::V) -> __m512;
        /// The unit at `p` in every position.
        ///
        /// # Safety
        /// The caller enables the type's instructions; the unit at `p` exists.
        unsafe fn splat(p: *const Self::Unit) -> Self::V;
    }

    impl Lanes for f32 {
        const STEP: usize = 16;
        type V = __m512;
        type Unit = f32;
        #[inline(always)]
        unsafe fn load(p: *const f32, live: usize) -> __m512 {
            if live >= 16 {
                _mm512_loadu_ps(p)
            } else {
                _mm512_maskz_loadu_ps((1u16 << live) - 1, p)
            }
        }
        #[inline(always)]
        unsafe fn madd(acc: __m512, a: __m512, b: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, acc)
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> __m512 {
            _mm512_set1_ps(p.read())
        }
    }

    /// See [`super::gemm_qk`]: passes of `pass` key columns.
    ///
    /// # Safety
    /// AVX-512F must be available; as [`qk`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn gemm_qk(
        q: &[f32],
        (m, k, pass): (usize, usize, usize),
        rows: &[&[f32]],
        out: &mut [f32],
    ) {
        qk(q, (m, k, pass), rows, out);
    }

    /// See [`super::gemm_pv`], columns `0..wide` (`wide` a multiple of 16, <= d).
    ///
    /// # Safety
    /// AVX-512F must be available; `p` holds `m * rows.len()` elements, every row at
    /// least `d`, `acc` `m * d`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn gemm_pv(
        p: &[f32],
        rows: &[&[f32]],
        (m, d, wide): (usize, usize, usize),
        acc: &mut [f32],
    ) {
        let n = rows.len();
        // SAFETY: row t of the values is rows[t], at least d (>= wide) long; p holds m
        // rows of n.
        let step = |t: usize, c: usize| _mm512_loadu_ps(rows[t].as_ptr().add(c));
        pv::<f32>(p.as_ptr(), (m, n), step, (d, wide), acc);
    }

    /// `out[r * n + j] = q_r . rows_j` ([m, k] by `n` rows, `n = rows.len()`): 4 x 4
    /// register tiles of `E::STEP`-wide steps (the last step of a row masked), the 16 sums
    /// of a tile reduced together; cache-row tiles outermost so a tile's rows stay in L1
    /// across all query rows, the rows `AHEAD` tiles on prefetched meanwhile (spread over
    /// the query-row tiles, one line per step). The key columns are taken in passes of
    /// `pass` (clamped to 1..=k; see [`super::qk_pass`]), each after the first adding
    /// its sums to `out`.
    ///
    /// # Safety
    /// The caller enables `E`'s instructions; `q` holds `m * k` elements, every row at
    /// least `k`, `out` `m * rows.len()`.
    #[inline(always)]
    pub(crate) unsafe fn qk<E: Lanes>(
        q: &[E],
        (m, k, pass): (usize, usize, usize),
        rows: &[&[E]],
        out: &mut [f32],
    ) {
        let (q, o) = (q.as_ptr(), out.as_mut_ptr());
        let pass = pass.clamp(1, k.max(1));
        let mut k0 = 0;
        while k0 < k {
            let kp = (k - k0).min(pass);
            // SAFETY: as this function's contract: `q` holds m rows of k, every row at
            // least k (so columns k0..k0 + kp lie inside each), `out` m * n.
            qk_columns::<E>((q, (m, k)), (k0, kp), rows, o);
            k0 += kp;
        }
    }

    /// One pass of [`qk`]: key columns `k0..k0 + kp` of `q` ([m, k] at `q`) and every row
    /// into `out` ([m, rows.len()] at `o`), written where `k0` is 0, else added.
    ///
    /// # Safety
    /// As [`qk`], and `k0 + kp <= k`.
    #[inline(always)]
    unsafe fn qk_columns<E: Lanes>(
        (q, (m, k)): (*const E, (usize, usize)),
        (k0, kp): (usize, usize),
        rows: &[&[E]],
        o: *mut f32,
    ) {
        let n = rows.len();
        let add = k0 > 0;
        let mut c = 0;
        while c < n {
            let nc = (n - c).min(QT);
            // SAFETY (the offsets): k0 < k, and every row holds at least k elements.
            let mut bp = [rows[c].as_ptr().add(k0); QT];
            for (j, p) in bp.iter_mut().enumerate().take(nc) {
                *p = rows[c + j].as_ptr().add(k0);
            }
            // The rows to prefetch, `per` of them in each whole tile of query rows.
            let ahead = (c + QT * AHEAD).min(n);
            let np = (n - ahead).min(QT);
            let mut pf = [rows[c].as_ptr().add(k0); QT];
            for (j, p) in pf.iter_mut().enumerate().take(np) {
                *p = rows[ahead + j].as_ptr().add(k0);
            }
            let per = np.div_ceil((m / QT).max(1));
            let mut r = 0;
            while r < m {
                let mr = (m - r).min(QT);
                // SAFETY (all): rows r..r + mr of q exist (mr clipped to m); the first nc
                // row pointers are rows c..c + nc from column k0, kp columns on inside
                // their k, as are the first np of pf; out[(r + i) * n + c + j] for
                // i < mr, j < nc lies inside the m * n elements.
                let (ap, op) = (q.add(r * k + k0), o.add(r * n + c));
                if (mr, nc) == (QT, QT) {
                    let t = r / QT;
                    let pfs = &pf[(t * per).min(np)..((t + 1) * per).min(np)];
                    qk_tile4::<E>((ap, k), bp, pfs, kp, (op, n, add));
                } else {
                    for i in 0..mr {
                        for (j, &b) in bp.iter().enumerate().take(nc) {
                            let sum = dot::<E>(ap.add(i * k), b, kp);
                            let at = op.add(i * n + j);
                            *at = if add { *at + sum } else { sum };
                        }
                    }
                }
                r += mr;
            }
            c += nc;
        }
    }

    /// `a . b` over `k` elements.
    #[inline(always)]
    unsafe fn dot<E: Lanes>(a: *const E, b: *const E, k: usize) -> f32 {
        let mut acc = _mm512_setzero_ps();
        let mut off = 0;
        while off < k {
            let live = (k - off).min(E::STEP);
            acc = E::madd(acc, E::load(a.add(off), live), E::load(b.add(off), live));
            off += live;
        }
        _mm512_reduce_add_ps(acc)
    }

    /// `out[i * ldo + j] = a_i . b_j` (`add`: `+=`) over `k` columns for 4 rows of `a`
    /// (stride `lda`) and the 4 rows `b`, one line of each row in `pf` (`k` long)
    /// prefetched per step.
    #[inline(always)]
    unsafe fn qk_tile4<E: Lanes>(
        (a, lda): (*const E, usize),
        b: [*const E; QT],
        pf: &[*const E],
        k: usize,
        (out, ldo, add): (*mut f32, usize, bool),
    ) {
        let mut acc = [_mm512_setzero_ps(); QT * QT];
        let mut off = 0;
        while off < k {
            let live = (k - off).min(E::STEP);
            for &p in pf {
                _mm_prefetch::<_MM_HINT_T0>(p.add(off).cast());
            }
            let bv = b.map(|p| E::load(p.add(off), live));
            for i in 0..QT {
                let av = E::load(a.add(i * lda + off), live);
                for (j, &bj) in bv.iter().enumerate() {
                    acc[i * QT + j] = E::madd(acc[i * QT + j], av, bj);
                }
            }
            off += live;
        }
        let mut sums = hsum16(&acc);
        if add {
            let rows = [0, 1, 2, 3].map(|i| _mm_loadu_ps(out.add(i * ldo)));
            let before = _mm512_insertf32x4::<1>(_mm512_castps128_ps512(rows[0]), rows[1]);
            let before = _mm512_insertf32x4::<2>(before, rows[2]);
            sums = _mm512_add_ps(sums, _mm512_insertf32x4::<3>(before, rows[3]));
        }
        _mm_storeu_ps(out, _mm512_extractf32x4_ps::<0>(sums));
        _mm_storeu_ps(out.add(ldo), _mm512_extractf32x4_ps::<1>(sums));
        _mm_storeu_ps(out.add(2 * ldo), _mm512_extractf32x4_ps::<2>(sums));
        _mm_storeu_ps(out.add(3 * ldo), _mm512_extractf32x4_ps::<3>(sums));
    }

    /// Lane `l` of the result is the sum of the 16 lanes of `v[l]` (a transposing
    /// reduction: 45 operations for all 16 instead of 16 separate reductions).
    #[inline(always)]
    unsafe fn hsum16(v: &[__m512; 16]) -> __m512 {
        // Per 128-bit lane, [x0 + x2, y0 + y2, x1 + x3, y1 + y3] for each pair (x, y).
        let mut w = [_mm512_setzero_ps(); 8];
        for (i, w) in w.iter_mut().enumerate() {
            let (x, y) = (v[2 * i], v[2 * i + 1]);
            *w = _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
        }
        // Per 128-bit lane, the partial sums of four inputs in order.
        let mut u = [_mm512_setzero_ps(); 4];
        for (i, u) in u.iter_mut().enumerate() {
            let (x, y) = (w[2 * i], w[2 * i + 1]);
            *u = _mm512_add_ps(
                _mm512_shuffle_ps::<0b01_00_01_00>(x, y),
                _mm512_shuffle_ps::<0b11_10_11_10>(x, y),
            );
        }
        // Combine 128-bit lanes: [x0 + x1, x2 + x3, y0 + y1, y2 + y3].
        let mut t = [_mm512_setzero_ps(); 2];
        for (i, t) in t.iter_mut().enumerate() {
            let (x, y) = (u[2 * i], u[2 * i + 1]);
            *t = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
            );
        }
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(t[0], t[1]),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(t[0], t[1]),
        )
    }

    /// `acc[r * d + c] += sum_t p(r, t) * v(t)[c]` over `steps` steps, columns `0..wide`
    /// (`wide` a multiple of 16, <= d): `p` rows of `steps` units, `v(t, c)` the 16
    /// units of value step `t` from column `c` (a multiple of 16, below `wide`) as one
    /// vector. Register tiles of `MR` rows (then 4, then single rows) x
    /// `NV` vectors (fewer at the last columns), column tiles outermost so a tile's value
    /// columns stay in L1 across all rows.
    ///
    /// # Safety
    /// The caller enables `E`'s instructions; `p` holds `m * steps` units, `v(t, c)` is
    /// sound for `t < steps` and those columns, `acc` `m * d` elements.
    #[inline(always)]
    pub(crate) unsafe fn pv<E: Lanes>(
        p: *const E::Unit,
        (m, steps): (usize, usize),
        v: impl Fn(usize, usize) -> E::V + Copy,
        (d, wide): (usize, usize),
        acc: &mut [f32],
    ) {
        let o = acc.as_mut_ptr();
        let mut c = 0;
        while c < wide {
            let nv = ((wide - c) / 16).min(NV);
            let mut r = 0;
            while r < m {
                // Whole tiles of MR rows, then of 4, then single rows.
                let mr = match m - r {
                    left if left >= MR => MR,
                    left if left >= 4 => 4,
                    _ => 1,
                };
                // SAFETY (all): rows r..r + mr of p and acc exist (mr <= m - r), and
                // columns c..c + 16 nv lie below wide <= d in acc and in every value step.
                let (pp, op) = (p.add(r * steps), o.add(r * d + c));
                let g = (pp, steps, c, op, d);
                match (mr, nv) {
                    (MR, NV) => tile::<E, MR, NV>(g, v),
                    (MR, 2) => tile::<E, MR, 2>(g, v),
                    (MR, _) => tile::<E, MR, 1>(g, v),
                    (4, NV) => tile::<E, 4, NV>(g, v),
                    (4, 2) => tile::<E, 4, 2>(g, v),
                    (4, _) => tile::<E, 4, 1>(g, v),
                    (_, NV) => tile::<E, 1, NV>(g, v),
                    (_, 2) => tile::<E, 1, 2>(g, v),
                    (_, _) => tile::<E, 1, 1>(g, v),
                }
                r += mr;
            }
            c += 16 * nv;
        }
    }

    /// `R` rows x `C` vectors of `acc` (row stride `d`) += `p` (rows of `steps` units)
    /// times columns `c..c + 16 C` of the value steps.
    #[inline(always)]
    unsafe fn tile<E: Lanes, const R: usize, const C: usize>(
        (p, steps, c, o, d): (*const E::Unit, usize, usize, *mut f32, usize),
        v: impl Fn(usize, usize) -> E::V,
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for (i, row) in acc.iter_mut().enumerate() {
            for (j, a) in row.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(o.add(i * d + 16 * j));
            }
        }
        for t in 0..steps {
            let bv: [E::V; C] = std::array::from_fn(|j| v(t, c + 16 * j));
            for (i, row) in acc.iter_mut().enumerate() {
                let a = E::splat(p.add(i * steps + t));
                for (s, &b) in row.iter_mut().zip(&bv) {
                    *s = E::madd(*s, a, b);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, &a) in row.iter().enumerate() {
                _mm512_storeu_ps(o.add(i * d + 16 * j), a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Lcg;

    /// The kernels this CPU runs: plain loops always, AVX2 and AVX-512F where it has them.
    fn paths() -> Vec<Isa> {
        let mut p = vec![Isa::Plain];
        #[cfg(target_arch = "x86_64")]
        if crate::avx2::available() {
            p.push(Isa::Avx2);
        }
        if native() {
            p.push(Isa::Avx512);
        }
        p
    }

    #[test]
    fn passes_are_whole_steps_that_fit_the_query_block_on_intel_cores() {
        for (m, k) in [
            (1, 1),
            (4, 576),
            (16, 576),
            (32, 576),
            (33, 576),
            (8, 100_000),
        ] {
            let pass = qk_pass(m, k);
            if intel() && m <= PASS_MAX_ROWS {
                assert!(pass == k || pass.is_multiple_of(16), "m {m} k {k}: {pass}");
                assert!(
                    m * pass * 4 <= QUERY_PASS_BYTES + m * 15 * 4,
                    "m {m} k {k}: {pass}"
                );
                assert!((1..=k).contains(&pass), "m {m} k {k}: {pass}");
            } else {
                assert_eq!(pass, k, "m {m} k {k}");
            }
        }
    }

    /// Asserts that `out` [m, n] holds `q` [m, k] times `rows` against an f64 reference,
    /// within the rounding of `adds` f32 additions of the products' magnitudes.
    fn assert_scores(
        (q, k): (&[f32], usize),
        rows: &[&[f32]],
        out: &[f32],
        adds: usize,
        what: &str,
    ) {
        let n = rows.len();
        for (r, qr) in q.chunks_exact(k).enumerate() {
            for (j, row) in rows.iter().enumerate() {
                let prods = qr.iter().zip(&row[..k]).map(|(&a, &b)| a as f64 * b as f64);
                let (want, abs) = prods.fold((0.0, 0.0), |(s, a), x| (s + x, a + x.abs()));
                let tol = adds as f64 * f32::EPSILON as f64 * abs;
                let got = out[r * n + j] as f64;
                assert!(
                    (got - want).abs() <= tol,
                    "{what} [{r},{j}]: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn scores_match_an_f64_reference_at_odd_and_tail_shapes() {
        let mut rng = Lcg::new(3);
        for isa in paths() {
            for (m, n, k) in [
                (1, 1, 1),
                (1, 5, 9),
                (2, 5, 9),
                (3, 5, 7),
                (4, 4, 16),
                (5, 9, 17),
                (7, 8, 33),
                (16, 130, 576),
                (33, 67, 576),
                (128, 130, 576),
            ] {
                let stride = k + 3;
                let q = rng.vec(m * k, -2.0, 2.0);
                let mat = rng.vec(n * stride, -2.0, 2.0);
                let rows: Vec<&[f32]> = mat.chunks_exact(stride).collect();
                // One pass; passes of whole steps (the split Intel cores take, with a
                // shorter last one); of a step and a bit (a masked step in every pass).
                for pass in [k, 192, 17] {
                    let mut out = vec![f32::NAN; m * n];
                    gemm_qk_with(isa, pass, &q, k, &rows, &mut out).unwrap();
                    let what = format!("{isa:?} pass {pass} m {m} n {n} k {k}");
                    // Sums of k / lanes products per lane, then the lanes and the tail.
                    let lanes = if isa == Isa::Avx2 { 8 } else { 16 };
                    assert_scores((&q, k), &rows, &out, k / lanes + 32, &what);
                }
            }
        }
    }

    #[test]
    fn prepared_queries_score_as_an_f64_reference_in_quads_or_packed_where_they_run() {
        // 16 to 24 rows in octets or quads where the kernels run: octets (16: two groups;
        // 24: three), quads (17: a fifth group, partly live; 20: five whole); cache rows
        // past a tile and twice one (the next tile prefetched), a partial last tile; k
        // odd, below a piece (1 in octets, 3 in quads), at DeepSeek's width. From 25 rows
        // packed on AVX-512F: whole and partial groups of 16 and pairs of them (25, 32,
        // 40, 48, 63, 64, 72, 128, 130 rows; 49 and 130: 1 and 2 past whole groups, in
        // quads), cache rows past a block of 12. The cache rows come in runs of 1, 5 and
        // the rest. Below 16 rows none.
        let mut rng = Lcg::new(17);
        for (m, n, k) in [
            (15, 9, 576),
            (16, 9, 576),
            (16, 37, 577),
            (24, 13, 3),
            (16, 9, 1),
            (17, 5, 3),
            (17, 23, 576),
            (20, 40, 7),
            (25, 30, 576),
            (32, 30, 576),
            (40, 8, 33),
            (48, 5, 576),
            (49, 5, 576),
            (63, 21, 576),
            (64, 9, 576),
            (72, 30, 577),
            (128, 128, 576),
            (130, 7, 5),
        ] {
            let q = rng.vec(m * k, -2.0, 2.0);
            let mat = rng.vec(n * k, -2.0, 2.0);
            let rows: Vec<&[f32]> = mat.chunks_exact(k).collect();
            let (one, rest) = mat.split_at(k);
            let (five, rest) = rest.split_at((5 * k).min(rest.len()));
            let runs: Vec<&[f32]> = [one, five, rest]
                .into_iter()
                .filter(|r| !r.is_empty())
                .collect();
            let prepared = Query::new(&q, k).unwrap();
            #[cfg(target_arch = "x86_64")]
            let (quads, packed) = (quads::available(), native());
            #[cfg(not(target_arch = "x86_64"))]
            let (quads, packed) = (false, false);
            let form = match &prepared {
                None => "none",
                Some(Query {
                    form: Form::Packed(_),
                    ..
                }) => "packed",
                #[cfg(target_arch = "x86_64")]
                Some(Query {
                    form: Form::Lanes(lanes),
                    ..
                }) => match lanes.octets() {
                    true => "octets",
                    false => "quads",
                },
            };
            let want = if m >= PACKED_MIN_ROWS && packed {
                "packed"
            } else if (QUAD_MIN_ROWS..PACKED_MIN_ROWS).contains(&m) && quads {
                match m {
                    16 | 21..=24 => "octets",
                    _ => "quads",
                }
            } else {
                "none"
            };
            assert_eq!(form, want, "m {m}");
            let Some(prepared) = prepared else {
                continue;
            };
            let (mut out, mut scratch) = (vec![f32::NAN; m * n], Aligned::default());
            gemm_qk_prepared(&prepared, &runs, &mut out, &mut scratch).unwrap();
            // Quads: four chains of k / 4 additions, then two; octets: two chains of k / 2,
            // then one; packed: one chain of k (its rows past whole groups of 16 in quads).
            let adds = match form {
                "quads" => k / 4 + 4,
                "octets" => k / 2 + 3,
                _ => k + 4,
            };
            assert_scores(
                (&q, k),
                &rows,
                &out,
                adds,
                &format!("{form} m {m} n {n} k {k}"),
            );
        }
        // Bad shapes: a k of 0, q not whole rows; a run that is not whole rows, or empty,
        // an out of another length (nothing written).
        assert!(Query::new(&[1.0; 10], 0).is_err());
        assert!(Query::new(&[1.0; 10], 3).is_err());
        for m in [16, 64] {
            let q = rng.vec(m * 8, -1.0, 1.0);
            if let Some(prepared) = Query::new(&q, 8).unwrap() {
                let (long, short) = ([1.0f32; 16], [1.0f32; 7]);
                let mut out = vec![7.0f32; 2 * m];
                let mut scratch = Aligned::default();
                for runs in [
                    &[&long[..], &short[..]][..],
                    &[&long[..], &[]],
                    &[&long[..8]],
                ] {
                    let got = gemm_qk_prepared(&prepared, runs, &mut out, &mut scratch);
                    assert!(
                        got.is_err(),
                        "m {m} runs {:?}",
                        runs.iter().map(|r| r.len()).collect::<Vec<_>>()
                    );
                }
                assert!(out.iter().all(|&v| v == 7.0));
                // No cache rows: no scores, not an error.
                gemm_qk_prepared(&prepared, &[], &mut [], &mut scratch).unwrap();
            }
        }
    }

    #[test]
    fn values_match_an_f64_reference_at_odd_and_tail_shapes() {
        let mut rng = Lcg::new(4);
        for isa in paths() {
            for (m, n, d) in [
                (1, 1, 1),
                (1, 5, 40),
                (2, 5, 40),
                (3, 7, 5),
                (4, 2, 16),
                (5, 33, 17),
                (7, 4, 48),
                (16, 9, 64),
                (9, 128, 512),
                (6, 3, 100),
                (128, 130, 512),
                // AVX-512: tiles of 8 rows, then 4, then single rows; 3, 2 and 1 vectors
                // per tile. AVX2: 3 x 5, 3 x 4 and 3 x 3 + 2 + 2 rows; 4, 4, 1, 1 and
                // 4, 4 vectors and 4 with a scalar column.
                (15, 9, 80),
                (12, 3, 64),
                (13, 6, 33),
            ] {
                let stride = d + 5;
                let mat = rng.vec(n * stride, -2.0, 2.0);
                let rows: Vec<&[f32]> = mat.chunks_exact(stride).collect();
                let p = rng.vec(m * n, 0.0, 1.0);
                let init = rng.vec(m * d, -2.0, 2.0);
                let mut acc = init.clone();
                gemm_pv_with(isa, &p, &rows, d, &mut acc).unwrap();
                for r in 0..m {
                    for c in 0..d {
                        let (mut want, mut abs) = (init[r * d + c] as f64, 2.0f64);
                        for (j, row) in rows.iter().enumerate() {
                            let x = p[r * n + j] as f64 * row[c] as f64;
                            want += x;
                            abs += x.abs();
                        }
                        let tol = (n + 2) as f64 * f32::EPSILON as f64 * abs;
                        let got = acc[r * d + c] as f64;
                        assert!(
                            (got - want).abs() <= tol,
                            "{isa:?} m {m} n {n} d {d} [{r},{c}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn mismatched_shapes_are_errors_and_write_nothing() {
        for isa in paths() {
            let v = [0.5f32; 8];
            let mut acc = vec![0.25; 8];
            let rows = [&v[..4], &v[4..8]];
            assert!(gemm_pv_with(isa, &v[..4], &rows, 4, &mut acc).is_ok());
            let before = acc.clone();
            assert!(gemm_pv_with(isa, &v[..4], &rows, 0, &mut acc).is_err());
            assert!(gemm_pv_with(isa, &v[..3], &rows, 4, &mut acc).is_err());
            assert!(gemm_pv_with(isa, &v[..4], &rows, 5, &mut acc[..5]).is_err());
            assert!(gemm_pv_with(isa, &v[..0], &[], 4, &mut acc).is_err());
            assert!(gemm_qk_with(isa, 4, &v, 0, &rows, &mut acc[..4]).is_err());
            assert!(gemm_qk_with(isa, 4, &v, 4, &[&v[..3]], &mut acc[..2]).is_err());
            assert!(gemm_qk_with(isa, 4, &v, 4, &rows, &mut acc[..3]).is_err());
            assert_eq!(acc, before);
        }
    }
}

//! The core of `mla_decode`: all query rows that share one cache head attend to a range of
//! cache positions with online softmax, chunk by chunk, as two GEMMs per chunk:
//! `S = Q K^T` ([M, Dqk] x [Dqk, C]) and `acc += P V` ([M, C] x [C, Dv]).
//!
//! Each chunk of K/V rows is gathered from the cache (through a block table, or an index
//! list for sparse attention). Bf16 query values where this process may use AMX tiles
//! (and the key width is whole tile steps), or on a CPU whose native bf16 dot outpaces
//! its f32 FMA ([`bf16dot::outpaces_fma`]), take both products there
//! ([`crate::bf16attn`]): K and V rows of a BF16 cache read in place (on tiles, runs
//! shorter than a tile gathered into one block), FP8 rows dequantized once per chunk,
//! straight to bf16 where their scales are powers of two, else to f32 and kept when those
//! values are bf16 values; V paired by position (as the dot kernel reads it, or into a
//! buffer for the tiles; read in place on tiles for up to 16 query rows, `P` spread over
//! the pairs instead), `P` rounded to bf16 as FlashMLA does. Otherwise the rows are f32
//! (an F32 cache read in place where a head's consecutive positions are consecutive
//! rows, others upcast or FP8-dequantized once into one block, shared by all M rows), on
//! AVX-512F or AVX2 kernels that read them directly ([`crate::f32attn`]; on AVX-512F from
//! 16 query rows on query rows prepared once: in octets or quads up to 24 where the CPU
//! runs the quad kernels, AVX-512 with BF16, packed from 25) or else (no x86 vector unit)
//! the general GEMM. Only positions below a row's attended length are ever read or weighted.

use crate::aligned::Aligned;
use crate::bf16attn;
use crate::bf16dot;
use crate::f32attn;
use crate::gemm_util::{matmul, MatRef};
#[cfg(target_arch = "x86_64")]
use crate::ops::kv_rows::fp8_bf16;
use crate::ops::kv_rows::KvRows;
use crate::storage::FloatSlice;
use crate::vmath;
use moemla_core::{Error, Result};
use std::borrow::Cow;
use std::ops::Range;

/// Cache positions per chunk (rows of K/V upcast together), except where both products
/// run on AMX tiles ([`TILE_CHUNK`]).
pub const CHUNK: usize = 128;

/// Cache positions per chunk where both products run on AMX tiles for at least
/// [`TILE_CHUNK_MIN_ROWS`] query rows: `P V` reduces over a chunk's positions, and each
/// 32 x 32 block of `acc` is loaded into the accumulator tiles and stored back once per
/// chunk, so at 128 positions (4 tile steps) `perf` put about a third of the tile
/// products' samples on those loads and stores and the drain before them. Intel Xeon with
/// AMX, 2 cores, `moemla bench --backend cpu --op mla_decode --op mla_sparse_decode
/// --dtype bf16`, b 4, three alternated runs each: h_q 128 s_q 2 4096 positions 9.1-9.2
/// -> 7.0-7.7 ms, s_q 1 4.3-4.7 -> 3.6-4.0 ms, the FP8 cache s_q 2 8.6-9.3 -> 7.7-7.8 ms;
/// the sparse decode at h_q 64 and 128 within the noise. At h_q 16 no gain (16 and 32
/// rows: the FP8 cache at s_q 2, 1024 positions, 7-10% slower), and 512 positions were
/// 10-20% slower there. The f32 kernels stay at [`CHUNK`] (256 was 2-5% slower there).
pub const TILE_CHUNK: usize = 256;

/// Fewest query rows that attend in chunks of [`TILE_CHUNK`] on tiles.
pub const TILE_CHUNK_MIN_ROWS: usize = 64;

/// One sequence's cache as the kernel reads it.
#[derive(Clone, Copy, Debug)]
pub struct Cache<'a> {
    /// The cache rows in storage type.
    pub data: KvRows<'a>,
    /// Which cache slot each attended position is.
    pub slots: Slots<'a>,
    /// Cache heads.
    pub h_kv: usize,
    /// Key width.
    pub d_qk: usize,
    /// Value width (the first `d_v` columns of a row).
    pub d_v: usize,
}

/// How attended positions map to cache slots.
#[derive(Clone, Copy, Debug)]
pub enum Slots<'a> {
    /// A sequence's positions through its block-table row (the entries covering positions
    /// below its length are checked).
    Paged {
        /// The block-table row.
        table: &'a [i32],
        /// Tokens per block.
        block_size: usize,
    },
    /// Sparse attention: position `p` is slot `list[p]` (checked to exist).
    Listed(&'a [u32]),
}

impl Slots<'_> {
    /// The cache slots of positions `p0..p0 + n` into `out` (its contents replaced): one
    /// block-table lookup per block, not a division per position.
    fn chunk(&self, p0: usize, n: usize, out: &mut Vec<usize>) {
        out.clear();
        match *self {
            Slots::Paged { table, block_size } => {
                let (mut p, end) = (p0, p0 + n);
                while p < end {
                    let offset = p % block_size;
                    let take = (block_size - offset).min(end - p);
                    let first = table[p / block_size] as usize * block_size + offset;
                    out.extend(first..first + take);
                    p += take;
                }
            }
            Slots::Listed(list) => out.extend(list[p0..p0 + n].iter().map(|&s| s as usize)),
        }
    }
}

/// Running softmax state of M query rows over some positions: max logit `m`, denominator
/// `l` (relative to `m`), and unnormalised output `acc` [M, Dv].
#[derive(Clone, Debug, PartialEq)]
pub struct Partial {
    /// Per row: the largest scaled logit seen (-inf before any).
    pub m: Vec<f32>,
    /// Per row: `sum exp(logit - m)`.
    pub l: Vec<f32>,
    /// Per row, Dv wide: `sum exp(logit - m) * v`.
    pub acc: Vec<f32>,
}

/// Fewest cache rows per run, on average, that packed f32 query rows meet in place (a
/// run at a time, in blocks of 12 rows: shorter runs leave most of a block empty).
const MIN_PACKED_RUN: usize = 12;

/// Fewest BF16 cache rows per run, on average, that the tiles read in place (16 rows of
/// a run per tile of `a`); shorter runs are gathered into one block first.
const MIN_TILE_RUN: usize = 16;

/// Per-thread buffers: the upcast K/V chunk and its bf16 rows (an FP8 chunk's, or a
/// scattered BF16 chunk's gathered for the tiles); for the bf16 products the bf16
/// probabilities (and on tiles the value rows paired) and the logits transposed; the
/// logits and probabilities; the chunk's cache slots.
#[derive(Default)]
pub struct Scratch {
    kv: Vec<f32>,
    k16: Aligned<half::bf16>,
    pv: bf16attn::PvBuffers,
    s: Vec<f32>,
    scores_t: Aligned<f32>,
    slots: Vec<usize>,
}

/// Attends `q` ([M, Dqk] f32, unscaled) over cache head `g`, positions `span`.
/// Row `r` may only see positions `< limits[r]`; `span.end` must not exceed the largest
/// limit (and so the sequence length).
pub fn attend(
    (q, limits): (&[f32], &[usize]),
    cache: &Cache<'_>,
    g: usize,
    span: Range<usize>,
    scale: f32,
    scratch: &mut Scratch,
) -> Result<Partial> {
    let kernels = Kernels::detected();
    let mut attention = Attention::new(kernels, (q, limits), cache.d_v, scale);
    attention.over(cache, g, span, scratch)?;
    Ok(attention.finish())
}

/// Which kernels [`Attention`] may use: AMX tiles, the native bf16 dot, the f32 vector
/// kernels (else the general GEMM). [`Kernels::detected`] is what suits the CPU; tests also
/// narrow it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Kernels {
    /// AMX tiles for both bf16 products ([`crate::bf16attn`], query rows prepared for
    /// them) wherever they take the key width; only true where this process may use them.
    pub tiles: bool,
    /// The native bf16 dot ([`crate::bf16attn`]); only true where the CPU has it.
    pub bf16: bool,
    /// The f32 vector kernels ([`crate::f32attn`], AVX-512F or AVX2); only true where the
    /// CPU has one of them.
    pub f32: bool,
}

impl Kernels {
    /// The kernels this CPU runs best, however many the query rows: AMX tiles wherever
    /// this process may use them (Intel Xeon with AMX, 2 cores, `moemla bench --backend
    /// cpu --op mla_decode --dtype bf16`, b 4, 4096 positions: h_q 128 21.4 -> 6.2-7.4
    /// ms, h_q 16 3.6 -> 1.5-1.7 ms against the f32 kernels); the native bf16 dot
    /// where it outpaces the FMA (on an Intel Xeon, the dot at half the FMA's rate, the
    /// f32 kernels won at h_q 16 too, by 2-6% on a BF16 cache and 18-21% on an FP8 one,
    /// whose rows are dequantized either way: `moemla bench --backend cpu --op mla_decode
    /// --dtype bf16 --filter "h_q=16"`); the f32 kernels wherever AVX-512F is there (from
    /// [`f32attn::PACKED_MIN_ROWS`] rows on query rows packed as the general GEMM would,
    /// but once) or AVX2 (CPUs without AVX-512; up to [`f32attn::AVX2_MAX_ROWS`] query
    /// rows, checked per call: [`f32attn::pays`]).
    pub(crate) fn detected() -> Kernels {
        Kernels {
            tiles: bf16dot::tiles_enabled(),
            bf16: bf16dot::outpaces_fma(),
            f32: f32attn::isa() != f32attn::Isa::Plain,
        }
    }
}

/// The online softmax of M query rows carried over any number of position ranges, of one
/// cache or of several of the same widths (the sparse decode's pieces): the query rows are
/// prepared once per kernel (for the bf16 dot on the first range whose cache could take
/// it, for the f32 kernels on the first chunk that takes them), and the state is kept, so
/// nothing is merged in between.
pub(crate) struct Attention<'q> {
    kernels: Kernels,
    q: &'q [f32],
    limits: &'q [usize],
    scale: f32,
    /// The rows for the bf16 products (AMX tiles or the native dot): unset until a
    /// range's cache could take them; `None` when they are not bf16 values.
    q16: Option<Option<bf16attn::Query>>,
    /// The rows prepared for the f32 kernels (unset until a chunk takes them).
    q32: Option<Option<f32attn::Query<'q>>>,
    st: Partial,
}

impl<'q> Attention<'q> {
    /// No positions seen yet by the rows `q` ([M, Dqk] f32, unscaled; row `r` sees
    /// positions `< limits[r]` of each range) over caches `d_v` wide, with logits scaled
    /// by `scale`.
    pub(crate) fn new(
        kernels: Kernels,
        (q, limits): (&'q [f32], &'q [usize]),
        d_v: usize,
        scale: f32,
    ) -> Attention<'q> {
        let rows = limits.len();
        Attention {
            kernels,
            q,
            limits,
            scale,
            q16: None,
            q32: None,
            st: Partial {
                m: vec![f32::NEG_INFINITY; rows],
                l: vec![0.0; rows],
                acc: vec![0.0; rows * d_v],
            },
        }
    }

    /// The state over every range seen.
    pub(crate) fn finish(self) -> Partial {
        self.st
    }

    /// Also attends over cache head `g`, positions `span` (`span.end` not past the largest
    /// limit).
    pub(crate) fn over(
        &mut self,
        cache: &Cache<'_>,
        g: usize,
        span: Range<usize>,
        scratch: &mut Scratch,
    ) -> Result<()> {
        let Attention {
            kernels,
            q,
            limits,
            scale,
            q16,
            q32,
            st,
        } = self;
        let (kernels, limits, scale) = (*kernels, *limits, *scale);
        let (rows, d_qk, d_v) = (limits.len(), cache.d_qk, cache.d_v);
        // The query rows (and so what is prepared from them) and the state fix the widths.
        if q.len() != rows * d_qk || st.acc.len() != rows * d_v {
            return Err(Error::Device {
                backend: crate::NAME.to_string(),
                call: "mla attention".to_string(),
                message: format!(
                    "a cache of keys {d_qk} and values {d_v} wide for {rows} query rows of {} \
                     elements and a state of {} per row",
                    q.len(),
                    st.acc.len() / rows.max(1)
                ),
            });
        }
        // Query rows that are bf16 values against a BF16 cache, or FP8 rows whose
        // dequantized values are bf16 values (power-of-two scales): both products on AMX
        // tiles or the native bf16 dot; prepared on the first range that could take them.
        let bf16_cache = matches!(
            cache.data,
            KvRows::Dense(FloatSlice::BF16(_)) | KvRows::Fp8(_)
        );
        let tiles = kernels.tiles && bf16dot::on_tiles(d_qk);
        if (kernels.bf16 || tiles) && bf16_cache && q16.is_none() {
            *q16 = Some(
                bf16dot::exact(q)?
                    .map(|rows| bf16attn::Query::new(rows, d_qk, tiles))
                    .transpose()?,
            );
        }
        let q16 = match bf16_cache {
            true => q16.as_ref().and_then(Option::as_ref),
            false => None,
        };
        let q = MatRef::row_major(q, rows, d_qk);
        let chunk = match q16 {
            Some(q16) if q16.on_tiles() && rows >= TILE_CHUNK_MIN_ROWS => TILE_CHUNK,
            _ => CHUNK,
        };
        let (mut p0, end) = (span.start, span.end);
        while p0 < end {
            let n = chunk.min(end - p0);
            scratch.s.resize(rows * n, 0.0);
            cache.slots.chunk(p0, n, &mut scratch.slots);
            let slots = &scratch.slots;
            let mut krows: Vec<&[half::bf16]> =
                Vec::with_capacity(if q16.is_some() { n } else { 0 });
            let mut loaded = false;
            match (q16, cache.data) {
                (Some(q16), KvRows::Dense(FloatSlice::BF16(data))) => {
                    // The K rows straight from the cache (no copy), a run at a time; for
                    // the tiles, short runs (a sparse list, several heads per slot)
                    // gathered into one block instead.
                    let runs: Vec<_> = row_runs(slots, cache.h_kv, g).collect();
                    let gather = q16.on_tiles() && runs.len() * MIN_TILE_RUN > n;
                    if gather {
                        f32attn::sized(&mut scratch.k16, n * d_qk, "bf16 gathered rows")?;
                    }
                    let mut at = 0;
                    for (first, count) in runs {
                        let run = bf16dot::rows(data, first, count, d_qk)?;
                        if gather {
                            scratch.k16[at..at + run.len()].copy_from_slice(run);
                            at += run.len();
                        } else {
                            krows.extend(run.chunks_exact(d_qk));
                        }
                    }
                    if gather {
                        krows.extend(scratch.k16[..n * d_qk].chunks_exact(d_qk));
                    }
                }
                (Some(_), KvRows::Fp8(bytes)) => {
                    // Straight to bf16 where every row's scales are powers of two (one pass, a
                    // table lookup per code); else dequantized to f32 and kept on the bf16 dot
                    // only if those values are bf16 values.
                    #[cfg(target_arch = "x86_64")]
                    let direct = {
                        let slot = |j: usize| slots.get(j).copied();
                        bf16dot::native() && fp8_bf16::rows(bytes, slot, n, &mut scratch.k16)
                    };
                    #[cfg(not(target_arch = "x86_64"))]
                    let direct = {
                        let _ = bytes;
                        false
                    };
                    if !direct {
                        load(cache, g, slots, &mut scratch.kv);
                        loaded = true;
                    }
                    if direct || bf16attn::exact_into(&scratch.kv[..n * d_qk], &mut scratch.k16)? {
                        krows.extend(scratch.k16.chunks_exact(d_qk));
                    }
                }
                _ => {}
            }
            if let (Some(q16), false) = (q16, krows.is_empty()) {
                #[cfg(test)]
                record(
                    cache,
                    slots[0],
                    n,
                    if q16.on_tiles() {
                        Taken::Tiles
                    } else {
                        Taken::Bf16Dot
                    },
                );
                bf16attn::gemm_qk(q16, &krows, &mut scratch.s, &mut scratch.scores_t)?;
                softmax(&mut scratch.s, n, (limits, p0), scale, st, d_v);
                // P rounded to bf16 (as FlashMLA does; l keeps the f32 sum) against the V
                // rows (the first d_v columns), paired by position.
                let (s, acc) = (&scratch.s, &mut st.acc);
                bf16attn::gemm_pv(q16, s, n, &krows, d_v, acc, &mut scratch.pv)?;
            } else if kernels.f32 && f32attn::pays(rows) {
                // The f32 rows in place (an F32 cache) or as loaded, as runs of
                // consecutive rows; both products on the f32 vector kernels that read them
                // directly. Query rows packed for the register-tiled kernel meet one run at
                // a time: short runs (a scattered block table, several heads per slot) are
                // copied into one block for them instead.
                #[cfg(test)]
                record(cache, slots[0], n, Taken::F32Kernels);
                if q32.is_none() {
                    *q32 = Some(f32attn::Query::new(q.data, d_qk)?);
                }
                let prepared = q32.as_ref().and_then(Option::as_ref);
                let packed = prepared.is_some_and(f32attn::Query::packed);
                let in_place = match (cache.data, loaded) {
                    (KvRows::Dense(FloatSlice::F32(data)), false) => {
                        let runs = (row_runs(slots, cache.h_kv, g))
                            .map(|(first, count)| rows_of(data, first, count, d_qk))
                            .collect::<Result<Vec<_>>>()?;
                        let long = runs.len().saturating_mul(MIN_PACKED_RUN) <= n;
                        (!packed || long).then_some(runs)
                    }
                    _ => None,
                };
                let runs = match in_place {
                    Some(runs) => runs,
                    None => {
                        if !loaded {
                            load(cache, g, slots, &mut scratch.kv);
                        }
                        vec![&scratch.kv[..n * d_qk]]
                    }
                };
                let rows32: Vec<&[f32]> = runs.iter().flat_map(|r| r.chunks_exact(d_qk)).collect();
                match prepared {
                    Some(q32) => f32attn::gemm_qk_prepared(
                        q32,
                        &runs,
                        &mut scratch.s,
                        &mut scratch.scores_t,
                    )?,
                    None => f32attn::gemm_qk(q.data, d_qk, &rows32, &mut scratch.s)?,
                }
                softmax(&mut scratch.s, n, (limits, p0), scale, st, d_v);
                f32attn::gemm_pv(&scratch.s, &rows32, d_v, &mut st.acc)?;
            } else {
                #[cfg(test)]
                record(cache, slots[0], n, Taken::Gemm);
                if !loaded {
                    load(cache, g, slots, &mut scratch.kv);
                }
                let kv = MatRef::row_major(&scratch.kv[..n * d_qk], n, d_qk);
                matmul(&mut scratch.s, q, kv.t(), false)?;
                softmax(&mut scratch.s, n, (limits, p0), scale, st, d_v);
                let v = MatRef {
                    data: &scratch.kv[..n * d_qk],
                    rows: n,
                    cols: d_v,
                    row_stride: d_qk,
                    col_stride: 1,
                };
                matmul(&mut st.acc, MatRef::row_major(&scratch.s, rows, n), v, true)?;
            }
            p0 += n;
        }
        Ok(())
    }
}

/// The products a chunk of an FP8 cache took (test builds: tests check that the path
/// they mean ran).
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Taken {
    /// Both on AMX tiles ([`crate::bf16attn`]).
    Tiles,
    /// Both on the native bf16 dot ([`crate::bf16attn`]).
    Bf16Dot,
    /// Both on the f32 vector kernels (AVX-512F or AVX2) ([`crate::f32attn`]).
    F32Kernels,
    /// Both on the general GEMM.
    Gemm,
}

/// Every chunk of an FP8 cache attended in this (test) process: the cache bytes'
/// address, the chunk's first cache slot, its positions and the products it took.
#[cfg(test)]
pub(crate) static TAKEN: std::sync::Mutex<Vec<(usize, usize, usize, Taken)>> =
    std::sync::Mutex::new(Vec::new());

/// Appends a chunk of `cache` (FP8 caches only) to [`TAKEN`]: its first slot, `n`
/// positions.
#[cfg(test)]
fn record(cache: &Cache<'_>, first: usize, n: usize, taken: Taken) {
    if let KvRows::Fp8(bytes) = cache.data {
        let entry = (bytes.as_ptr() as usize, first, n, taken);
        TAKEN.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
    }
}

/// The cache rows of head `g` at `slots` (`h_kv` heads per slot) as runs of consecutive
/// rows, `(first row, count)`: a run per block of the block table of a one-head cache, or
/// longer where blocks follow each other.
pub(super) fn row_runs(
    slots: &[usize],
    h_kv: usize,
    g: usize,
) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let first = slots.get(at)? * h_kv + g;
        let count = 1
            + (slots[at + 1..].iter().zip(1..))
                .take_while(|&(&slot, i)| slot * h_kv + g == first + i)
                .count();
        at += count;
        Some((first, count))
    })
}

/// Rows `first..first + count` (of `k` columns) of the f32 cache `data`;
/// [`Error::Device`] when they are not all there (callers checked their indices, so never
/// in practice).
fn rows_of(data: &[f32], first: usize, count: usize, k: usize) -> Result<&[f32]> {
    crate::storage::row_range(first, count, k)
        .and_then(|range| data.get(range))
        .ok_or_else(|| Error::Device {
            backend: crate::NAME.to_string(),
            call: "mla attention rows".to_string(),
            message: format!(
                "rows {first}..{first}+{count} of {k} columns outside {} elements",
                data.len()
            ),
        })
}

/// Reads head `g` of the cache slots `slots` as f32 rows into `kv` (upcast or
/// dequantized).
fn load(cache: &Cache<'_>, g: usize, slots: &[usize], kv: &mut Vec<f32>) {
    kv.resize(slots.len() * cache.d_qk, 0.0);
    for (row, &slot) in kv.chunks_mut(cache.d_qk).zip(slots) {
        cache.data.read(slot, g, cache.h_kv, row);
    }
}

/// [`softmax_step`] on every row of the chunk's logits `s` ([rows, n], positions from
/// `p0`), each row seeing positions below its limit.
fn softmax(
    s: &mut [f32],
    n: usize,
    (limits, p0): (&[usize], usize),
    scale: f32,
    st: &mut Partial,
    d_v: usize,
) {
    for (r, s) in s.chunks_mut(n).enumerate() {
        let valid = limits[r].saturating_sub(p0).min(n);
        softmax_step(s, valid, scale, st, r, d_v);
    }
}

/// Turns row `r`'s raw logits `s` into probabilities relative to its updated max (columns
/// from `valid` on become exactly 0, whatever they held), rescaling its `l` and `acc`.
fn softmax_step(s: &mut [f32], valid: usize, scale: f32, st: &mut Partial, r: usize, d_v: usize) {
    let (seen, rest) = s.split_at_mut(valid);
    rest.fill(0.0);
    if seen.is_empty() {
        return;
    }
    // scale > 0 (validated), so the scaled maximum is the maximum scaled.
    let m_new = st.m[r].max(vmath::max(seen) * scale);
    let alpha = (st.m[r] - m_new).exp();
    let sum = vmath::exp_scaled_sum(seen, scale, m_new);
    st.l[r] = st.l[r] * alpha + sum;
    st.m[r] = m_new;
    if alpha != 1.0 {
        vmath::scale(&mut st.acc[r * d_v..(r + 1) * d_v], alpha);
    }
}

/// Merges partial states of the same rows over disjoint position ranges; one state is
/// returned as it is (a row whose `l` is not positive, NaN included, attends nothing
/// either way: the merge leaves such a row's `l` at 0).
pub fn merge(parts: &[Partial], d_v: usize) -> Cow<'_, Partial> {
    if let [one] = parts {
        return Cow::Borrowed(one);
    }
    let rows = parts.first().map_or(0, |p| p.m.len());
    let mut out = Partial {
        m: vec![f32::NEG_INFINITY; rows],
        l: vec![0.0; rows],
        acc: vec![0.0; rows * d_v],
    };
    for r in 0..rows {
        let m = parts
            .iter()
            .map(|p| p.m[r])
            .fold(f32::NEG_INFINITY, f32::max);
        if m == f32::NEG_INFINITY {
            continue;
        }
        out.m[r] = m;
        let acc = &mut out.acc[r * d_v..(r + 1) * d_v];
        for p in parts.iter().filter(|p| p.l[r] > 0.0) {
            let w = (p.m[r] - m).exp();
            out.l[r] += p.l[r] * w;
            for (a, &x) in acc.iter_mut().zip(&p.acc[r * d_v..(r + 1) * d_v]) {
                *a += x * w;
            }
        }
    }
    Cow::Owned(out)
}

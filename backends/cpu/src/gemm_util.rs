//! Bounds-checked f32 matrix products: a general one over the `gemm` crate, and
//! [`matmul_nt_packed`] (rows times packed rows) on AVX-512 where the CPU has it, in the
//! quad or octet layout ([`crate::quads`]) for few rows, else on AVX2 ([`avx2`]).

#[cfg(target_arch = "x86_64")]
use crate::aligned::Aligned;
#[cfg(target_arch = "x86_64")]
use crate::quads;
use crate::storage::FloatSlice;
use moemla_core::{Error, Result};

#[cfg(target_arch = "x86_64")]
mod avx2;

/// A read-only strided f32 matrix view: element (r, c) is `data[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    /// The backing elements.
    pub data: &'a [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance between consecutive rows.
    pub row_stride: usize,
    /// Distance between consecutive columns.
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A contiguous row-major `rows x cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose (a view; nothing is copied).
    pub fn t(self) -> Self {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Whether every element lies inside `data`.
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1)
            .checked_mul(self.row_stride)
            .zip((self.cols - 1).checked_mul(self.col_stride))
            .and_then(|(r, c)| r.checked_add(c));
        last.is_some_and(|l| l < self.data.len())
    }
}

/// `dst = a @ b` (or `dst += a @ b` with `accumulate`), `dst` contiguous row-major
/// `a.rows x b.cols`, single-threaded (callers parallelise over independent products).
pub fn matmul(dst: &mut [f32], a: MatRef<'_>, b: MatRef<'_>, accumulate: bool) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || dst.len() != m * n || !a.in_bounds() || !b.in_bounds() {
        return Err(Error::Device {
            backend: crate::NAME.to_string(),
            call: "gemm".to_string(),
            message: format!(
                "inconsistent product: a {}x{} ({} elements), b {}x{} ({}), dst {}",
                a.rows,
                a.cols,
                a.data.len(),
                b.rows,
                b.cols,
                b.data.len(),
                dst.len()
            ),
        });
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return Ok(());
    }
    // SAFETY: `a` and `b` were checked above to keep every element (r, c) at an index below
    // their slice lengths, and `dst` holds exactly m * n elements addressed row-major with
    // strides (n, 1); the shared borrows of `a` and `b` cannot alias the exclusive `dst`.
    // The strides fit in isize because they index live slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

/// Most rows of `b` past its whole groups of 16 that [`PackedRows`] packs in quads (one
/// group of 4: the 12-row blocks of `a` are one quad tile). On a 2-core Zen 5, f32
/// experts at H=7168 T=64 (26 to 37 tokens per expert), in one process, three interleaved
/// rounds: 125.0-127.7 vs 135.7-144.6 ms; V2-Lite T=256 75.4-77.0 vs 77.5-80.4 ms. Up to
/// 8 rows (two groups, 10-row quad tiles in the 12-row blocks) came out the same.
const REST_QUADS_MAX: usize = 4;

/// Columns of `k` per pass of [`matmul_nt_packed`]'s kernel: a register tile's rows of `a` for
/// one pass (12 x 2048 f32, 96 KiB) and the pass's packed rows of `b` stay in L2 while
/// the tile runs over them.
const KC: usize = 2048;

/// The rows of `b` for [`matmul_nt_packed`], laid out once and reused by every product
/// with them (an expert's tokens meet every tile of its weight rows). Where the quad
/// kernels run ([`quads::available`]), in octets (8 rows per vector, [`quads::Octets`])
/// where they pay with rows of `a` from memory (13 to 24 rows), else in quads (4 rows per
/// vector, [`crate::quads`]) where those pay ([`quads::F32`]'s `pays`, below octets: 4 to
/// 12 rows); else on CPUs with AVX-512F in groups of 16 rows, column by column
/// (`[group][k][16]`, rows past `n` zero), so that one vector holds one column of 16
/// rows, the last 1 to [`REST_QUADS_MAX`] rows past whole groups in quads where those
/// kernels run; else on CPUs with AVX2 and FMA transposed ([`avx2::pack`]), the last 1
/// to [`avx2::REST_DOTS_MAX`] rows past whole groups of 8 as they are; elsewhere the rows
/// as they are.
#[derive(Debug)]
pub struct PackedRows<'a> {
    layout: Layout<'a>,
    /// Rows of `b`.
    n: usize,
    /// Columns (the product's inner dimension).
    k: usize,
}

/// How [`PackedRows`] holds `b`.
#[derive(Debug)]
enum Layout<'a> {
    /// `[ceil(n / 16)][k][16]` for the AVX-512 kernel; where the quad kernels run and the
    /// last `n % 16` rows past a whole group are 1 to [`REST_QUADS_MAX`], those rows in
    /// quads instead (`rest`: their packed words and count), multiplied block by block
    /// beside the groups rather than in a mostly empty vector of 16.
    #[cfg(target_arch = "x86_64")]
    Columns {
        packed: Aligned<f32>,
        rest: Option<(Aligned<u32>, usize)>,
    },
    /// Octets or quads of rows ([`quads::F32Lanes`]: 8 rows of 2 columns or 4 rows of 4
    /// per vector, as f32 bits) for [`quads::multiply`].
    #[cfg(target_arch = "x86_64")]
    Lanes(quads::F32Lanes),
    /// `b` transposed for the AVX2 kernel ([`avx2::gemm_nt`]) on x86 CPUs without
    /// AVX-512F: `[k][ceil(main / 8) * 8]` for its first `main` rows; `rest`, the last 1
    /// to [`avx2::REST_DOTS_MAX`] rows past whole groups of 8 (at least one), as they are
    /// (multiplied by dot products rather than in a mostly empty register), else empty.
    #[cfg(target_arch = "x86_64")]
    Transposed {
        packed: Aligned<f32>,
        rest: &'a [f32],
    },
    /// `b` row-major, for [`portable_nt`].
    Rows(&'a [f32]),
}

impl<'a> PackedRows<'a> {
    /// Packs the `n` rows of `k` in `b` (row-major). A `k` of 0 or a length that is not
    /// whole rows is [`Error::Device`]; the packed copy (`ceil(n / 16) * 16 * k` values,
    /// in quads `ceil(n / 4) * 16 * ceil(k / 4)` words, in octets `ceil(n / 8) * 16 *
    /// ceil(k / 2)`, on AVX2 `ceil(main / 8) * 8 * k` values for the rows before the
    /// last [`avx2::rest_rows`]) is allocated fallibly ([`Error::OutOfMemory`]).
    pub fn new(b: &'a [f32], k: usize) -> Result<Self> {
        // No rows of `a` and no output: only `b`'s shape is checked.
        let (_, n) = nt_shape(0, b.len(), k, 0)?;
        #[cfg(target_arch = "x86_64")]
        const WHAT: &str = "cpu gemm nt packed rows";
        #[cfg(target_arch = "x86_64")]
        let too_large = || Error::OutOfMemory {
            what: WHAT.to_string(),
            bytes: usize::MAX,
        };
        #[cfg(target_arch = "x86_64")]
        if quads::available() && quads::F32Lanes::pay_streamed(n) {
            // The rows of `a` (an expert's weights) stream from memory.
            let lanes = quads::F32Lanes::new(b, (n, k), true, WHAT, too_large)?;
            return Ok(PackedRows {
                layout: Layout::Lanes(lanes),
                n,
                k,
            });
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            let rest_n = n % x86::LANES;
            let rest_n = if quads::available() && n > x86::LANES && rest_n <= REST_QUADS_MAX {
                rest_n
            } else {
                0
            };
            let main = n - rest_n;
            let len = x86::LANES
                .checked_mul(k)
                .and_then(|group| main.div_ceil(x86::LANES).checked_mul(group))
                .ok_or_else(too_large)?;
            let mut packed = Aligned::try_filled(len, 0.0, WHAT)?;
            x86::pack(&b[..main * k], k, &mut packed);
            let rest = if rest_n > 0 {
                let xq = quads::packed::<quads::F32>(&b[main * k..], (rest_n, k), WHAT, too_large)?;
                Some((xq, rest_n))
            } else {
                None
            };
            return Ok(PackedRows {
                layout: Layout::Columns { packed, rest },
                n,
                k,
            });
        }
        #[cfg(target_arch = "x86_64")]
        if crate::avx2::available() {
            let main = n - avx2::rest_rows(n);
            let len = (avx2::padded(main))
                .and_then(|width| width.checked_mul(k))
                .ok_or_else(too_large)?;
            let mut packed = Aligned::try_filled(len, 0.0, WHAT)?;
            let (main_rows, rest) = b.split_at(main * k);
            avx2::pack(main_rows, k, &mut packed);
            return Ok(PackedRows {
                layout: Layout::Transposed { packed, rest },
                n,
                k,
            });
        }
        Ok(PackedRows {
            layout: Layout::Rows(b),
            n,
            k,
        })
    }
}

/// `out[r * n + c] = a[r] . b[c]` for the `m` rows of `a` [m, k] (f32, f16 or bf16: every
/// value exact in f32) and the `n` rows of `b` packed beforehand ([`PackedRows`]), each an
/// f32 sum; `out` [m, n] is overwritten. Single-threaded (callers parallelise over
/// independent tiles). On CPUs with AVX-512F a register-tiled kernel: 12 rows of `a` times
/// two vectors of 16 packed rows of `b`, one value of `a` broadcast per row and column,
/// 24 accumulators that are the output itself (no horizontal sums); f32 rows are read in
/// place, others converted 12 rows at a time just before their tile (so weights streamed
/// from memory are converted from cache, their next rows prefetched meanwhile), the last
/// rows of `b` packed in quads (past whole groups) on the same block of rows right after.
/// With `b` in octets or quads, [`quads::multiply`]: a piece of 2 or 4 values of a row of
/// `a` broadcast against 8 or 4 rows of `b` per vector, every output the sum of its 2 or
/// 4 elements at the end; rows of `a` other than f32 converted one register tile at a
/// time. With `b` transposed, [`avx2::gemm_nt`]: the same scheme as AVX-512's on 8 rows
/// of `b` per vector (f32 rows of `a` in place where the transposed rows fill more than
/// one register, else each block of rows of `a` copied or converted first), the rows of
/// `b` left apart by dot products on the same block. Elsewhere the `gemm` crate on `a`
/// converted to f32.
///
/// An `a` that is not whole rows of `b`'s k, or an `out` that is not `m * n` long, is
/// [`Error::Device`]; nothing is written then. Buffers (converted rows of `a`) are
/// allocated fallibly ([`Error::OutOfMemory`]).
pub fn matmul_nt_packed(a: FloatSlice<'_>, b: &PackedRows<'_>, out: &mut [f32]) -> Result<()> {
    let (n, k) = (b.n, b.k);
    let (m, _) = nt_shape(float_len(a), n * k, k, out.len())?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    match &b.layout {
        #[cfg(target_arch = "x86_64")]
        Layout::Columns { packed, rest } => {
            let block_len = match a {
                FloatSlice::F32(_) => 0,
                _ => x86::MR * KC.min(k),
            };
            let mut block = moemla_core::alloc::try_filled_vec(block_len, "cpu gemm nt rows")?;
            let rest = rest.as_ref().map(|(xq, rn)| (&xq[..], *rn));
            // SAFETY: `PackedRows::new` built `Columns` only where AVX-512F was detected,
            // as `ceil(main / 16) * 16 * k` values for the first main = n - rest rows and,
            // only where the quad kernels' features were detected, the rest rows in quads;
            // `nt_shape` checked that `a` holds m rows of k and `out` m * n values; `block`
            // holds MR rows of a pass's columns unless `a` is f32.
            unsafe { x86::gemm_nt(a, (packed, rest), (m, n, k), out, &mut block) };
            Ok(())
        }
        #[cfg(target_arch = "x86_64")]
        Layout::Lanes(lanes) => {
            match a {
                // SAFETY: `PackedRows::new` built `Lanes` only where the kernel's features
                // were detected, for 1..=24 rows of k; `nt_shape` checked that `a` holds m
                // rows of k and `out` m * n values.
                FloatSlice::F32(a) => unsafe {
                    let a = a.as_ptr();
                    lanes.multiply(|i| a.add(i * k), m, (out.as_mut_ptr(), n), false);
                },
                // Other types converted to f32 one register tile of rows at a time.
                _ => {
                    let chunk = lanes.tile_rows();
                    let mut block =
                        moemla_core::alloc::try_filled_vec(chunk * k, "cpu gemm nt rows")?;
                    for r0 in (0..m).step_by(chunk) {
                        let rows = chunk.min(m - r0);
                        a.read_f32(r0 * k, &mut block[..rows * k]);
                        let (b0, o) = (block.as_ptr(), out[r0 * n..].as_mut_ptr());
                        // SAFETY: as above; `block` holds `rows` converted rows of k and
                        // `out` the m * n outputs from row r0 on.
                        unsafe { lanes.multiply(|i| b0.add(i * k), rows, (o, n), false) };
                    }
                }
            }
            Ok(())
        }
        #[cfg(target_arch = "x86_64")]
        Layout::Transposed { packed, rest } => {
            let main = n - rest.len() / k;
            let len = avx2::block_len(a, main, k);
            let mut block = moemla_core::alloc::try_filled_vec(len, "cpu gemm nt rows")?;
            // SAFETY: `PackedRows::new` built `Transposed` only where AVX2, FMA and F16C
            // were detected ([`crate::avx2::available`]), as `k * padded(main)` values for
            // the first main rows of `b` and the last n - main = rest_rows(n) (0 to 4) of
            // k as they are; `nt_shape` checked that k >= 1, `a` holds m rows of k and
            // `out` m * n values; `block` holds `block_len(a, main, k)` values.
            unsafe { avx2::gemm_nt(a, (packed, rest), (m, n, k), out, &mut block) };
            Ok(())
        }
        Layout::Rows(rows) => match a {
            FloatSlice::F32(a) => portable_nt(a, rows, (m, n, k), out),
            _ => {
                let mut a32 = moemla_core::alloc::try_filled_vec(m * k, "cpu gemm nt rows")?;
                a.read_f32(0, &mut a32);
                portable_nt(&a32, rows, (m, n, k), out)
            }
        },
    }
}

/// The number of values in `a`.
fn float_len(a: FloatSlice<'_>) -> usize {
    match a {
        FloatSlice::F32(v) => v.len(),
        FloatSlice::F16(v) => v.len(),
        FloatSlice::BF16(v) => v.len(),
    }
}

/// `(m, n)` when `a` and `b` are whole rows of `k >= 1` and `out` is m x n, else
/// [`Error::Device`].
fn nt_shape(a: usize, b: usize, k: usize, out: usize) -> Result<(usize, usize)> {
    let rows = |len: usize| Some(len / k.max(1)).filter(|r| k > 0 && r * k == len);
    match rows(a).zip(rows(b)) {
        Some((m, n)) if m.checked_mul(n) == Some(out) => Ok((m, n)),
        _ => Err(Error::Device {
            backend: crate::NAME.to_string(),
            call: "gemm nt".to_string(),
            message: format!(
                "a ({a} elements) and b ({b}) must be whole rows of k = {k} >= 1, out ({out}) \
                 rows(a) x rows(b)"
            ),
        }),
    }
}

/// Where a register tile of the x86 kernels prefetches (into L2): the same columns of
/// rows of `a` that the next block will read, as `a` stores them (`size` bytes per
/// value, rows `row_bytes` apart).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Prefetch {
    at: *const u8,
    row_bytes: usize,
    size: usize,
}

#[cfg(target_arch = "x86_64")]
impl Prefetch {
    /// Rows `row..` of `a` (rows of `k` values) from column `col` on, as stored.
    ///
    /// # Safety
    /// Value `row * k + col` must lie inside `a`.
    unsafe fn rows_of(a: FloatSlice<'_>, k: usize, row: usize, col: usize) -> Prefetch {
        let (stored, size) = match a {
            FloatSlice::F32(v) => (v.as_ptr().cast::<u8>(), 4),
            FloatSlice::F16(v) => (v.as_ptr().cast::<u8>(), 2),
            FloatSlice::BF16(v) => (v.as_ptr().cast::<u8>(), 2),
        };
        Prefetch {
            at: stored.add((row * k + col) * size),
            row_bytes: k * size,
            size,
        }
    }
}

/// The [`Prefetch`] of a tile that prefetches nothing (never read: its `PF` is false).
#[cfg(target_arch = "x86_64")]
const NO_PREFETCH: Prefetch = Prefetch {
    at: std::ptr::null(),
    row_bytes: 0,
    size: 0,
};

/// [`matmul_nt_packed`]'s product through the `gemm` crate (`a @ b^T`).
fn portable_nt(
    a: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
    out: &mut [f32],
) -> Result<()> {
    let b_t = MatRef::row_major(b, n, k).t();
    matmul(out, MatRef::row_major(a, m, k), b_t, false)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Prefetch, NO_PREFETCH};
    use crate::storage::FloatSlice;
    use std::arch::x86_64::*;

    /// f32 lanes of one AVX-512 register: rows of `b` per packed group.
    pub const LANES: usize = 16;
    /// Rows of `a` per register tile (12 x 2 = 24 accumulators, two vectors of `b` and a
    /// broadcast value of `a` in the 32 registers).
    pub const MR: usize = 12;
    // `Tile::dispatch` lists the row counts 12 down to 1.
    const _: () = assert!(MR == 12);

    /// Lays the `n` rows of `k` in `b` out as `[ceil(n / 16)][k][16]`: group by group,
    /// column by column, the group's 16 rows side by side (each group's rows transposed,
    /// [`crate::transpose::strided`]; the lanes past `n` keep their zeros, so a padded lane
    /// accumulates zero). `packed` must hold `ceil(n / 16) * 16 * k` values, zeroed.
    pub fn pack(b: &[f32], k: usize, packed: &mut [f32]) {
        for (group, rows) in packed.chunks_exact_mut(LANES * k).zip(b.chunks(LANES * k)) {
            crate::transpose::strided(rows, k, (rows.len() / k, k), group, LANES);
        }
    }

    /// [`super::matmul_nt_packed`] on packed rows: passes of [`super::KC`] columns; in
    /// each, blocks of [`MR`] rows of `a` (1..MR at the end; f32 in place, other types
    /// converted into `block`) times pairs of packed groups (a single group at the end),
    /// the output's lanes masked past the packed rows; the `rest` rows of `b` in quads
    /// (the last ones) then the same block's columns ([`crate::quads::multiply`]). The
    /// first pass stores, later ones add. Where the next block is full too, the first tile
    /// of a block prefetches the next block's columns of `a` (as stored) into L2.
    ///
    /// # Safety
    /// AVX-512F must be available; `a` holds `m * k` values, `packed`
    /// `ceil((n - rest) / 16) * 16 * k` (as [`pack`] lays them out), the rest (1 to 4 rows,
    /// where the quad kernels run) `packed_len(rest, k)` words, `out` `m * n`, and `block`
    /// `MR * min(KC, k)` unless `a` is f32.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn gemm_nt(
        a: FloatSlice<'_>,
        (packed, rest): (&[f32], Option<(&[u32], usize)>),
        (m, n_all, k): (usize, usize, usize),
        out: &mut [f32],
        block: &mut [f32],
    ) {
        // Rows of b in the groups; the output keeps all n_all columns.
        let n = n_all - rest.map_or(0, |(_, rn)| rn);
        let groups = n.div_ceil(LANES);
        for k0 in (0..k).step_by(super::KC) {
            let kc = super::KC.min(k - k0);
            let mut r = 0;
            while r < m {
                let rows = MR.min(m - r);
                // This block's columns as f32: in place, or converted into `block`.
                let (ap, lda) = match a {
                    FloatSlice::F32(v) => (v.as_ptr().add(r * k + k0), k),
                    _ => {
                        for (i, dst) in block[..rows * kc].chunks_exact_mut(kc).enumerate() {
                            a.read_f32_inline((r + i) * k + k0, dst);
                        }
                        (block.as_ptr(), kc)
                    }
                };
                // The next block exists when r + 2 MR <= m.
                let next = (r + 2 * MR <= m).then(|| Prefetch::rows_of(a, k, r + MR, k0));
                let mut g = 0;
                while g < groups {
                    let vecs = if groups - g >= 2 { 2 } else { 1 };
                    let tile = Tile {
                        lda,
                        kc,
                        group_stride: k * LANES,
                        ldo: n_all,
                        add: k0 > 0,
                        masks: [lane_mask(n, g), lane_mask(n, g + 1)],
                    };
                    // SAFETY (all): rows r..r + rows of `ap` exist with columns 0..kc
                    // (in place: columns k0..k0 + kc of rows of k; converted: rows of kc);
                    // packed groups g..g + vecs exist (each k * 16 values) and so do their
                    // columns k0..k0 + kc; the outputs (r + i) * n + (g + v) * 16 + l for
                    // i < rows, v < vecs and lanes l the masks keep lie inside m * n_all
                    // (rows n_all apart); `next` points at rows r + MR..r + 2 MR of `a`,
                    // columns k0..k0 + kc, which exist.
                    let bp = packed.as_ptr().add((g * k + k0) * LANES);
                    let op = out.as_mut_ptr().add(r * n_all + g * LANES);
                    tile.dispatch(rows, vecs, ap, bp, op, next.filter(|_| g == 0));
                    g += vecs;
                }
                if let Some((xq, rn)) = rest {
                    // SAFETY: the caller packed the rest only where the quad kernels'
                    // features were detected; rows r..r + rows of `ap` hold columns 0..kc
                    // (lda apart); the rest's packed words from step k0 / 4 on hold those
                    // columns (k0 is a multiple of KC, so of 4); outputs (r + i) * n_all
                    // + n + j for i < rows, j < rn lie inside m * n_all.
                    const _: () = assert!(super::KC.is_multiple_of(4));
                    let xq = xq.as_ptr().add(k0 / 4 * rn.div_ceil(4) * 16);
                    let o = out.as_mut_ptr().add(r * n_all + n);
                    crate::quads::multiply::<crate::quads::F32>(
                        |i| ap.add(i * lda),
                        (rows, kc),
                        (xq, rn),
                        (o, n_all),
                        k0 > 0,
                    );
                }
                r += rows;
            }
        }
    }

    /// The lanes of packed group `g` that are rows of `b` (below `n`).
    fn lane_mask(n: usize, g: usize) -> u16 {
        match n.saturating_sub(g * LANES) {
            0 => 0,
            l if l >= LANES => u16::MAX,
            l => ((1u32 << l) - 1) as u16,
        }
    }

    /// One register tile's geometry: rows of `a` `lda` apart, `kc` columns, packed groups
    /// `group_stride` apart, output rows `ldo` apart, added to (`add`) or stored, lanes
    /// kept per vector by `masks`.
    #[derive(Clone, Copy)]
    struct Tile {
        lda: usize,
        kc: usize,
        group_stride: usize,
        ldo: usize,
        add: bool,
        masks: [u16; 2],
    }

    impl Tile {
        /// [`Tile::run`] for `rows` (1..=MR) rows of `a` and `vecs` (1 or 2) groups,
        /// prefetching `next`'s columns along the way where given (full blocks only).
        #[inline(always)]
        unsafe fn dispatch(
            self,
            rows: usize,
            vecs: usize,
            a: *const f32,
            b: *const f32,
            out: *mut f32,
            next: Option<Prefetch>,
        ) {
            macro_rules! by_rows {
                ($v:literal) => {
                    match (rows, next) {
                        (12, Some(next)) => self.run::<12, $v, true>(a, b, out, next),
                        (12, None) => self.run::<12, $v, false>(a, b, out, NO_PREFETCH),
                        (11, _) => self.run::<11, $v, false>(a, b, out, NO_PREFETCH),
                        (10, _) => self.run::<10, $v, false>(a, b, out, NO_PREFETCH),
                        (9, _) => self.run::<9, $v, false>(a, b, out, NO_PREFETCH),
                        (8, _) => self.run::<8, $v, false>(a, b, out, NO_PREFETCH),
                        (7, _) => self.run::<7, $v, false>(a, b, out, NO_PREFETCH),
                        (6, _) => self.run::<6, $v, false>(a, b, out, NO_PREFETCH),
                        (5, _) => self.run::<5, $v, false>(a, b, out, NO_PREFETCH),
                        (4, _) => self.run::<4, $v, false>(a, b, out, NO_PREFETCH),
                        (3, _) => self.run::<3, $v, false>(a, b, out, NO_PREFETCH),
                        (2, _) => self.run::<2, $v, false>(a, b, out, NO_PREFETCH),
                        _ => self.run::<1, $v, false>(a, b, out, NO_PREFETCH),
                    }
                };
            }
            if vecs == 2 {
                by_rows!(2)
            } else {
                by_rows!(1)
            }
        }

        /// `out[i * ldo + v * 16 + l] (+)= a_i . b_(v * 16 + l)` for `R` rows of `a` and
        /// the `V` packed groups at `b`, lanes outside `masks` neither read nor written;
        /// with `PF`, the same columns of the `R` rows at `next` (which must exist) are
        /// prefetched into L2.
        #[target_feature(enable = "avx512f")]
        unsafe fn run<const R: usize, const V: usize, const PF: bool>(
            self,
            a: *const f32,
            b: *const f32,
            out: *mut f32,
            next: Prefetch,
        ) {
            let mut acc = [[_mm512_setzero_ps(); V]; R];
            columns::<R, V, PF>(&mut acc, a, next, b, self.lda, self.group_stride, self.kc);
            for (i, row) in acc.iter().enumerate() {
                for (v, &s) in row.iter().enumerate() {
                    let (o, mask) = (out.add(i * self.ldo + v * LANES), self.masks[v]);
                    let s = if self.add {
                        _mm512_add_ps(s, _mm512_maskz_loadu_ps(mask, o))
                    } else {
                        s
                    };
                    _mm512_mask_storeu_ps(o, mask, s);
                }
            }
        }
    }

    /// The columns of [`Tile::run`], `acc[i][v] += a[i][c] * b_v[c]` column by column
    /// (with `PF`, one prefetch per row of `next` every 16 columns: a cache line of f32
    /// values, half of one of 2-byte values).
    /// Not inlined, so that LLVM keeps the accumulators in registers through the loop
    /// (inlined with the stores, it spilled some on every column in an earlier kernel).
    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    unsafe fn columns<const R: usize, const V: usize, const PF: bool>(
        acc_out: &mut [[__m512; V]; R],
        a: *const f32,
        next: Prefetch,
        b: *const f32,
        lda: usize,
        group_stride: usize,
        kc: usize,
    ) {
        let mut acc = *acc_out;
        for c in 0..kc {
            if PF && c % LANES == 0 {
                for i in 0..R {
                    let line = next.at.add(i * next.row_bytes + c * next.size);
                    _mm_prefetch::<_MM_HINT_T1>(line.cast());
                }
            }
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(b.add(v * group_stride + c * LANES));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(i * lda + c));
                for (s, &x) in row.iter_mut().zip(&bv) {
                    *s = _mm512_fmadd_ps(av, x, *s);
                }
            }
        }
        *acc_out = acc;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_with_transposed_view_matches_hand_computed_values() {
        // a = [[1, 2, 3], [4, 5, 6]]; w = [[1, 0, 1], [2, 1, 0]]; a @ w^T = [[4, 4], [10, 13]].
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let w = [1.0, 0.0, 1.0, 2.0, 1.0, 0.0];
        let mut dst = [0.0; 4];
        let (am, wm) = (MatRef::row_major(&a, 2, 3), MatRef::row_major(&w, 2, 3));
        matmul(&mut dst, am, wm.t(), false).unwrap();
        assert_eq!(dst, [4.0, 4.0, 10.0, 13.0]);
        matmul(&mut dst, am, wm.t(), true).unwrap();
        assert_eq!(dst, [8.0, 8.0, 20.0, 26.0]);
    }

    #[test]
    fn out_of_bounds_views_are_rejected() {
        let a = [1.0; 5];
        let mut dst = [0.0; 4];
        let bad = MatRef::row_major(&a, 2, 3);
        assert!(matmul(&mut dst, bad, bad.t(), false).is_err());
    }

    /// `a` [m, k] times `b` [n, k] transposed in f64, with the bound of an f32 sum
    /// (k + 16 roundings of at most eps times the sum of |products|).
    fn nt_reference(a: &[f32], b: &[f32], k: usize) -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        for ar in a.chunks_exact(k) {
            for br in b.chunks_exact(k) {
                let p = ar.iter().zip(br).map(|(&x, &y)| x as f64 * y as f64);
                let abs: f64 = p.clone().map(f64::abs).sum();
                out.push((p.sum(), (k + 16) as f64 * f32::EPSILON as f64 * abs));
            }
        }
        out
    }

    /// [`matmul_nt_packed`] with `b` packed for this one product.
    fn nt(a: FloatSlice<'_>, b: &[f32], k: usize, out: &mut [f32]) -> Result<()> {
        matmul_nt_packed(a, &PackedRows::new(b, k)?, out)
    }

    #[test]
    fn nt_product_matches_an_f64_reference_at_odd_and_tail_shapes() {
        // k: one column, odd, below and past a cache line, exactly one pass (KC 2048; two on AVX2,
        // KC 1024), more than one pass with a shorter last one. m: every remainder of the 12-row
        // block, and blocks enough (m >= 24) for the prefetch of the next one. n: one masked group
        // (1..=16), a pair with the second masked (17..=32), a pair and a single group (33, 48).
        // Quads where they pay (`quads::F32::pays`): one group (4), two (5), three (9, 12); octets
        // (13 to 24): two groups (13, 15, 16), three (17, 19 to 24, the last partly live but at
        // 24); `k` below one piece (2; 1 in octets), whole pieces only (64; 2048 in octets), tails
        // of 1 to 3 columns, past one pass; `m` past a tile's rows and twice them (the next tile
        // prefetched), with a partial last tile. `a` as f32 (read in place) and as bf16 and f16
        // values (converted per block or tile; each value exact in f32, so the same reference
        // holds).
        let mut rng = crate::test_util::Lcg::new(11);
        let mut shapes = vec![
            (1, 1, 1),
            (3, 5, 7),
            (5, 7, 33),
            (12, 16, 2048),
            (25, 17, 2048 + 577),
            (6, 3, 2 * 2048 + 16),
            (37, 33, 2 * 2048 + 97),
            (9, 48, 2048 + 17),
            (24, 33, 301),
            (9, 4, 2),
            (30, 12, 1031),
            (13, 24, 9),
            (11, 9, 2 * 2048 + 6),
            (10, 20, 64),
            // Groups of 16 with the last 1 to 4 rows in quads: rest 4 over two passes, a
            // rest beside three groups, a rest of 2 at a small k.
            (13, 36, 2048 + 5),
            (30, 52, 70),
            (5, 34, 9),
            (21, 14, 1),
            (25, 22, 2048 + 3),
            // AVX2 (groups of 8): four groups (two chunks of two) over three passes (1024
            // columns each, the last 300), the first block prefetching the next.
            (26, 29, 2048 + 300),
            // AVX2, the last 1 to 4 rows past whole groups by dot products (`rest_rows`;
            // 1, 4 and 5 to 7 above): 2 over three passes beside two groups (f32 in
            // place), 3 over two passes beside one (f32 copied), 2 beside five groups with
            // `k` two steps and a tail column, 2 beside one group over two passes, 3
            // beside two groups (in place) over two passes.
            (26, 18, 2048 + 300),
            (14, 11, 1024 + 17),
            (9, 42, 33),
            (13, 10, 1024 + 40),
            (7, 19, 1024 + 9),
        ];
        shapes.extend((1..=13).map(|m| (m, 9 + 2 * m, 83)));
        for (m, n, k) in shapes {
            let b = rng.vec(n * k, -2.0, 2.0);
            let a: Vec<f32> = rng.vec(m * k, -2.0, 2.0);
            let a16: Vec<half::bf16> = a.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let ah: Vec<half::f16> = a.iter().map(|&v| half::f16::from_f32(v)).collect();
            let cases = [
                ("f32", FloatSlice::F32(&a), a.clone()),
                (
                    "bf16",
                    FloatSlice::BF16(&a16),
                    a16.iter().map(|v| v.to_f32()).collect(),
                ),
                (
                    "f16",
                    FloatSlice::F16(&ah),
                    ah.iter().map(|v| v.to_f32()).collect(),
                ),
            ];
            for (dtype, a, values) in cases {
                let want = nt_reference(&values, &b, k);
                // A guard past `out` catches a store to a masked lane beyond the last row.
                let mut buf = vec![f32::NAN; m * n + 32];
                nt(a, &b, k, &mut buf[..m * n]).unwrap();
                assert!(
                    buf[m * n..].iter().all(|v| v.is_nan()),
                    "{dtype} m {m} n {n} k {k}: guard"
                );
                let mut port = vec![f32::NAN; m * n];
                portable_nt(&values, &b, (m, n, k), &mut port).unwrap();
                for (idx, ((&g, &p), &(w, tol))) in buf.iter().zip(&port).zip(&want).enumerate() {
                    assert!(
                        (g as f64 - w).abs() <= tol,
                        "{dtype} m {m} n {n} k {k} [{idx}]: {g} vs {w}"
                    );
                    assert!(
                        (p as f64 - w).abs() <= tol,
                        "gemm crate [{idx}]: {p} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn rows_are_packed_in_quads_exactly_where_they_pay() {
        let k = 5;
        for n in 1..=40 {
            let b = vec![1.0f32; n * k];
            let packed = PackedRows::new(&b, k).unwrap();
            #[cfg(target_arch = "x86_64")]
            {
                let lanes = match &packed.layout {
                    Layout::Lanes(lanes) => Some(lanes.octets()),
                    _ => None,
                };
                // Octets at 13 to 24 rows, quads at 4 to 12.
                let want = match n {
                    13..=24 => Some(true),
                    4..=12 => Some(false),
                    _ => None,
                };
                assert_eq!(lanes, want.filter(|_| quads::available()), "{n} rows");
                // Past 16 rows (and past the quads), the last 1 to 4 in quads.
                let rest = match &packed.layout {
                    Layout::Columns { rest, .. } => rest.as_ref().map_or(0, |r| r.1),
                    _ => 0,
                };
                let want = if quads::available() && n > 24 && (1..=4).contains(&(n % 16)) {
                    n % 16
                } else {
                    0
                };
                assert_eq!(rest, want, "{n} rows");
                // On AVX2 (no AVX-512F), the last 1 to 4 rows past whole groups of 8 as
                // they are, beside the others transposed.
                if let Layout::Transposed { packed: t, rest } = &packed.layout {
                    let rest_n = match n % 8 {
                        r @ 1..=4 if n > 8 => r,
                        _ => 0,
                    };
                    assert_eq!(rest.len(), rest_n * k, "{n} rows");
                    assert_eq!(t.len(), (n - rest_n).div_ceil(8) * 8 * k, "{n} rows");
                }
            }
            assert_eq!((packed.n, packed.k), (n, k));
        }
    }

    #[test]
    fn nt_shapes_that_do_not_fit_are_errors_and_write_nothing() {
        let a = [1.0f32; 6];
        let mut out = [7.0f32; 4];
        assert!(nt(FloatSlice::F32(&a), &a[..4], 4, &mut out).is_err());
        assert!(nt(FloatSlice::F32(&a[..4]), &a[..4], 2, &mut out[..3]).is_err());
        assert!(nt(FloatSlice::F32(&a), &a, 0, &mut out).is_err());
        assert!(PackedRows::new(&a[..5], 2).is_err());
        assert!(nt(FloatSlice::F32(&[]), &[], 0, &mut []).is_err());
        assert_eq!(out, [7.0; 4]);
        // Integers: every partial sum is exact, so the result is.
        let b = [1.0, -2.0, 3.0, 0.5, 4.0, 1.0];
        nt(FloatSlice::F32(&b), &b, 3, &mut out).unwrap();
        assert_eq!(out, [14.0, -4.5, -4.5, 17.25]);
    }

    #[test]
    fn nt_product_with_no_rows_on_either_side_is_empty_and_ok() {
        // m 0 or n 0 with k past one pass (KC): an empty `out`, nothing read; the other
        // operand untouched by any column offset.
        let k = 2 * KC;
        let b = vec![1.0f32; 3 * k];
        let mut out: [f32; 0] = [];
        nt(FloatSlice::F32(&[]), &b[..k], k, &mut out).unwrap();
        nt(FloatSlice::F32(&b), &[], k, &mut out).unwrap();
        nt(FloatSlice::F32(&[]), &[], k, &mut out).unwrap();
        // A non-empty out for an empty product is still a shape error.
        assert!(nt(FloatSlice::F32(&[]), &b[..k], k, &mut [0.0]).is_err());
    }
}

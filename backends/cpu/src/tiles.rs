//! bf16 products on Intel AMX tiles (`TDPBF16PS`) where this process may use them
//! ([`moemla_core::amx::enabled`]), reading [`crate::bf16dot`]'s pair layout in place: a
//! packed `b` is `[ceil(k / 2)][n_pad]` u32 (pairs of columns, `n_pad` a multiple of 16),
//! which is the layout a tile of `b` must have (16 rows of pairs x 16 columns, Intel SDM
//! vol. 2, `TDPBF16PS`), so a tile is 16 rows of 64 bytes at a stride of `n_pad` words.
//! The rows of `a` are read as they lie in memory, `k` apart, 32 columns (64 bytes) per
//! tile row.
//!
//! Each output adds its exact bf16 products to f32 accumulators over the steps in order;
//! within a step the tile unit adds them in an order and with roundings Intel does not
//! specify (measured: not a sequential f32 chain, nor one rounding per step), so results
//! agree with the other paths to the f32 rounding bound of a sum of k products, not bit
//! for bit. Like `VDPBF16PS` (SDM: "DAZ, FTZ, RNE, MXCSR ignored"), subnormal inputs and
//! results count as zero. [`Sums::Add`] adds the products to the outputs instead
//! (attention's running `P V`): the accumulators are loaded from them, not zeroed.

use moemla_core::amx::{self, dot_bf16 as dot, load, store as stored, zero, TileConfig};

/// Columns of `a` (elements of `k`) per tile step: 16 pairs, 64 bytes.
pub const STEP: usize = 32;
/// Rows of a tile: rows of `a` per `a` tile, and pairs per `b` tile.
pub const ROWS: usize = 16;
/// Columns of `b` per tile (16 f32 outputs per row, 64 bytes).
pub const COLS: usize = 16;
/// Bytes of a tile row.
pub const ROW_BYTES: usize = 64;

/// Whether [`gemm_pairs`] multiplies rows `k` wide on this machine: AMX is enabled and
/// `k` is whole tile steps (every `k` of DeepSeek's experts is: 2048, 7168, 1408, ...).
pub fn fits(k: usize) -> bool {
    k > 0 && k.is_multiple_of(STEP) && amx::enabled()
}

/// What [`gemm_pairs`] does with its outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sums {
    /// Overwrites them with the products.
    Set,
    /// Adds the products to what they hold (the accumulators loaded from them rather than
    /// zeroed, edge tiles through a buffer), each output's sum carried on in f32.
    Add,
}

/// `out[i * ldo + j] = a_i . b_j` ([`Sums::Set`]; `+=` with [`Sums::Add`]) for the `m`
/// rows of `a` (`k` apart from `a`) and the first `n` of the `n_pad` packed columns at
/// `xp`, on tiles: the accumulators of 32 rows x 32 columns at a time (4 tiles; 16-row
/// and 16-column blocks at the edges, the last `m % 16` rows with a configuration of that
/// many rows), each over all of `k`.
///
/// # Safety
/// [`fits`]`(k)` must hold; `a + i * k` for `i < m` points at `k` readable elements,
/// `xp` at `k / 2 * n_pad` readable words with `n <= n_pad` and `n_pad` a multiple of
/// 16, and `o + i * ldo + j` for `i < m`, `j < n` is writable (and readable with
/// [`Sums::Add`]).
pub unsafe fn gemm_pairs(
    a: *const u16,
    (m, k): (usize, usize),
    (xp, n, n_pad): (*const u32, usize, usize),
    (o, ldo): (*mut f32, usize),
    sums: Sums,
) {
    if m == 0 || n == 0 {
        return;
    }
    let grid = Grid {
        a,
        k,
        xp,
        n,
        n_pad,
        o,
        ldo,
        add: sums == Sums::Add,
    };
    let whole = m / ROWS * ROWS;
    // SAFETY (all below): tiles are enabled (`fits`); every block stays within the rows
    // and columns the caller vouched for (`Grid::block`).
    unsafe {
        config(ROWS).load();
        let mut r = 0;
        while r + 2 * ROWS <= whole {
            grid.columns::<2>(r, ROWS);
            r += 2 * ROWS;
        }
        if r < whole {
            grid.columns::<1>(r, ROWS);
            r += ROWS;
        }
        if r < m {
            config(m - r).load();
            grid.columns::<1>(r, m - r);
        }
        amx::release();
    }
}

/// One run of tile steps for [`products`] (and [`steps`]): step `s` of the rows of `a` at `a + 64 s`
/// (tile rows `lda` bytes apart, the second row tile `a_tile` bytes after the first), of
/// the pairs of `b` at `b + 16 s ldb` (pair rows `ldb` bytes apart, the second column
/// tile 64 bytes after the first).
pub struct Steps {
    /// The first row tile's first step.
    pub a: *const u8,
    /// Bytes between rows of `a`.
    pub lda: usize,
    /// Bytes from the first row tile to the second.
    pub a_tile: usize,
    /// The first column tile's first step.
    pub b: *const u8,
    /// Bytes between pair rows of `b`.
    pub ldb: usize,
    /// Steps (of 32 columns of `a`, 16 pair rows of `b`).
    pub steps: usize,
}

/// Zeroes the `R` x `C` accumulator tiles (tile `2r + c`) and issues every step's
/// products: `R` row tiles of `a` (tiles 4, 5) against `C` column tiles of `b` (6, 7).
/// The caller stores the accumulators.
///
/// # Safety
/// A configuration from [`config`] is loaded on this thread; every tile the steps load
/// (the configured rows of `a`, 16 pair rows x 64 bytes of each column tile of `b`) is
/// readable.
#[inline(always)]
pub unsafe fn products<const R: usize, const C: usize>(st: &Steps) {
    // SAFETY: as this function's contract.
    unsafe {
        zero_sums::<R, C>();
        steps::<R, C>(st);
    }
}

/// Zeroes the `R` x `C` accumulator tiles (tile `2r + c`).
///
/// # Safety
/// A configuration from [`config`] is loaded on this thread.
#[inline(always)]
pub unsafe fn zero_sums<const R: usize, const C: usize>() {
    // SAFETY: as this function's contract.
    unsafe {
        zero::<0>();
        if C == 2 {
            zero::<1>();
        }
        if R == 2 {
            zero::<2>();
            if C == 2 {
                zero::<3>();
            }
        }
    }
}

/// [`products`] onto the accumulator tiles as they are (zeroed or loaded by the caller,
/// or holding earlier steps' sums).
///
/// # Safety
/// As [`products`].
#[inline(always)]
pub unsafe fn steps<const R: usize, const C: usize>(st: &Steps) {
    // SAFETY: as this function's contract.
    unsafe {
        for s in 0..st.steps {
            let (ap, bp) = (st.a.add(s * ROW_BYTES), st.b.add(s * ROWS * st.ldb));
            load::<4>(ap, st.lda);
            load::<6>(bp, st.ldb);
            dot::<0, 4, 6>();
            if C == 2 {
                load::<7>(bp.add(ROW_BYTES), st.ldb);
                dot::<1, 4, 7>();
            }
            if R == 2 {
                load::<5>(ap.add(st.a_tile), st.lda);
                dot::<2, 5, 6>();
                if C == 2 {
                    dot::<3, 5, 7>();
                }
            }
        }
    }
}

/// Tiles 0-3 accumulators (`C` row tile `r`, column tile `c`: tile `2r + c`) and 4-5 rows
/// of `a`, each `rows` (1 to 16) rows; 6-7 pairs of `b`, 16 rows; all 64 bytes wide.
pub fn config(rows: usize) -> TileConfig {
    let a = (rows, ROW_BYTES);
    TileConfig::new(&[a, a, a, a, a, a, (ROWS, ROW_BYTES), (ROWS, ROW_BYTES)])
        .expect("1 to 16 rows of 64 bytes")
}

/// The operands of one [`gemm_pairs`] call.
struct Grid {
    a: *const u16,
    k: usize,
    xp: *const u32,
    n: usize,
    n_pad: usize,
    o: *mut f32,
    ldo: usize,
    /// Whether the products are added to the outputs ([`Sums::Add`]).
    add: bool,
}

impl Grid {
    /// Rows `r0..r0 + R * rows` (the loaded configuration's `rows` per tile) against the
    /// `n` columns, in tiles of 16 (the last partly live): blocks of 32 columns, then one
    /// of 16.
    ///
    /// # Safety
    /// As [`gemm_pairs`]; those rows exist and the configuration has `rows` rows.
    unsafe fn columns<const R: usize>(&self, r0: usize, rows: usize) {
        // Every column tile starts below n, and ends within n_pad (a multiple of 16, at
        // least n).
        let end = self.n.div_ceil(COLS) * COLS;
        let mut c0 = 0;
        while c0 + 2 * COLS <= end {
            // SAFETY: columns c0..c0 + 32 are within end <= n_pad.
            unsafe { self.block::<R, 2>(r0, rows, c0) };
            c0 += 2 * COLS;
        }
        if c0 < end {
            // SAFETY: end is a multiple of 16: columns c0..c0 + 16 are within it.
            unsafe { self.block::<R, 1>(r0, rows, c0) };
        }
    }

    /// The `R` x `C` accumulator tiles of rows from `r0` and columns from `c0`: zeroed
    /// (or, adding, loaded from the outputs: [`Grid::load_sums`]), then every step of `k`
    /// (`R` tiles of `a`, `C` of `b`, `R * C` products), then stored ([`Grid::store`]).
    ///
    /// # Safety
    /// As [`Grid::columns`]; columns `c0..c0 + 16 C` are within `n_pad`.
    unsafe fn block<const R: usize, const C: usize>(&self, r0: usize, rows: usize, c0: usize) {
        // SAFETY: tile rows r0 + 16 t + i < m for every loaded row (the configuration
        // has `rows` rows, and R * rows rows exist from r0); each loads 64 bytes from
        // column s * 32 < k. Pair rows s * 16 + i < k / 2 and columns c0 + 16 u + j <
        // n_pad of xp exist.
        unsafe {
            let lda = self.k * 2;
            let st = Steps {
                a: self.a.add(r0 * self.k).cast(),
                lda,
                a_tile: rows * lda,
                b: self.xp.add(c0).cast(),
                ldb: self.n_pad * 4,
                steps: self.k / STEP,
            };
            if self.add {
                self.load_sums::<0>(r0, rows, c0);
                if C == 2 {
                    self.load_sums::<1>(r0, rows, c0 + COLS);
                }
                if R == 2 {
                    self.load_sums::<2>(r0 + rows, rows, c0);
                    if C == 2 {
                        self.load_sums::<3>(r0 + rows, rows, c0 + COLS);
                    }
                }
                steps::<R, C>(&st);
            } else {
                products::<R, C>(&st);
            }
            self.store::<0>(r0, rows, c0);
            if C == 2 {
                self.store::<1>(r0, rows, c0 + COLS);
            }
            if R == 2 {
                self.store::<2>(r0 + rows, rows, c0);
                if C == 2 {
                    self.store::<3>(r0 + rows, rows, c0 + COLS);
                }
            }
        }
    }

    /// Accumulator tile `T` from output rows `r0..r0 + rows`, columns from `c0`: straight
    /// from `out` where all 16 columns are below `n`, else through a buffer holding the
    /// first `n - c0` columns and zeros.
    ///
    /// # Safety
    /// As [`Grid::store`].
    unsafe fn load_sums<const T: usize>(&self, r0: usize, rows: usize, c0: usize) {
        // SAFETY: rows r0..r0 + rows (<= m) and columns c0..c0 + live (<= n) of out are
        // readable; the buffer holds 16 rows of 64 bytes.
        unsafe {
            let o = self.o.add(r0 * self.ldo + c0);
            if c0 + COLS <= self.n {
                load::<T>(o.cast_const().cast(), self.ldo * 4);
                return;
            }
            let mut buf = [0.0f32; ROWS * COLS];
            let live = self.n - c0;
            for (i, row) in buf.chunks_exact_mut(COLS).take(rows).enumerate() {
                std::ptr::copy_nonoverlapping(o.add(i * self.ldo), row.as_mut_ptr(), live);
            }
            load::<T>(buf.as_ptr().cast(), ROW_BYTES);
        }
    }

    /// Accumulator tile `T` into output rows `r0..r0 + rows`, columns from `c0`: straight
    /// into `out` where all 16 columns are below `n`, else through a buffer, its first
    /// `n - c0` columns copied.
    ///
    /// # Safety
    /// As [`Grid::block`]; `c0 < n`.
    unsafe fn store<const T: usize>(&self, r0: usize, rows: usize, c0: usize) {
        // SAFETY: rows r0..r0 + rows (<= m) and columns c0..c0 + live (<= n) of out are
        // writable; the buffer holds 16 rows of 64 bytes.
        unsafe {
            let o = self.o.add(r0 * self.ldo + c0);
            if c0 + COLS <= self.n {
                stored::<T>(o.cast(), self.ldo * 4);
                return;
            }
            let mut buf = [0.0f32; ROWS * COLS];
            stored::<T>(buf.as_mut_ptr().cast(), ROW_BYTES);
            let live = self.n - c0;
            for (i, row) in buf.chunks_exact(COLS).take(rows).enumerate() {
                std::ptr::copy_nonoverlapping(row.as_ptr(), o.add(i * self.ldo), live);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    /// The value an output holds before a product: past `m` rows and `n` columns NaN
    /// (which must stay), else a small integer (which [`Sums::Set`] must overwrite and
    /// [`Sums::Add`] add to).
    fn held(i: usize, j: usize, (m, n): (usize, usize)) -> f32 {
        if i >= m || j >= n {
            return f32::NAN;
        }
        (i * 7 + j) as f32 % 11.0 - 5.0
    }

    /// `gemm_pairs` of `a` [m, k] and `b` [n, k] (packed as `bf16dot` packs it) into an
    /// output `ldo` wide with two rows more than `m`, holding [`held`] before.
    fn product(
        a: &[bf16],
        b: &[bf16],
        (m, n, k): (usize, usize, usize),
        ldo: usize,
        sums: Sums,
    ) -> Vec<f32> {
        let n_pad = n.div_ceil(COLS) * COLS;
        let mut xp = vec![0u32; k / 2 * n_pad];
        let mut out: Vec<f32> = (0..(m + 2) * ldo)
            .map(|e| held(e / ldo, e % ldo, (m, n)))
            .collect();
        // SAFETY: the caller checked `fits(k)` and `bf16dot::native()` (pack_into's
        // AVX-512 features); b holds n rows of k and xp their packed size; a holds m rows
        // of k; out m rows of ldo >= n.
        unsafe {
            crate::bf16dot::x86::pack_into(b, n, k, &mut xp);
            gemm_pairs(
                a.as_ptr().cast(),
                (m, k),
                (xp.as_ptr(), n, n_pad),
                (out.as_mut_ptr(), ldo),
                sums,
            );
        }
        out
    }

    #[test]
    fn matches_an_f64_reference_and_writes_only_its_outputs() {
        if !fits(STEP) || !crate::bf16dot::native() {
            eprintln!("skipped: this process may not use AMX-BF16 tiles");
            return;
        }
        // m: one row, a partial tile, one tile, one past, 32-row blocks (with a 16-row
        // block after them: 50, 69) and tails; n: a partial column tile, one, one past
        // (the second tile of a 32-column block partly live, also under two row tiles:
        // 32 x 17), 32-column blocks and a 16-column one; k: one step, several, and an
        // expert's width. The output is wider than n and two rows longer than m: the
        // columns past n and the rows past m must stay NaN, in both modes.
        for (m, n, k) in [
            (1, 1, 32),
            (15, 16, 64),
            (16, 17, 32),
            (17, 20, 64),
            (17, 33, 96),
            (32, 17, 64),
            (33, 50, 96),
            (33, 5, 64),
            (47, 48, 32),
            (50, 40, 64),
            (64, 32, 128),
            (64, 32, 2048),
            (69, 70, 160),
        ] {
            let a = crate::test_util::bf16_values(m * k, 7 + m as u64, -2.0);
            let b = crate::test_util::bf16_values(n * k, 11 + n as u64, -2.0);
            let ldo = n + 3;
            // Set overwrites the held values; Add carries them on.
            for sums in [Sums::Set, Sums::Add] {
                let out = product(&a, &b, (m, n, k), ldo, sums);
                for (i, row) in out.chunks_exact(ldo).enumerate() {
                    for (j, &got) in row.iter().enumerate() {
                        if i >= m || j >= n {
                            assert!(got.is_nan(), "m {m} n {n} k {k}: ({i}, {j}) written");
                            continue;
                        }
                        let (ar, br) = (&a[i * k..][..k], &b[j * k..][..k]);
                        let p = || ar.iter().zip(br).map(|(x, y)| x.to_f64() * y.to_f64());
                        let base = match sums {
                            Sums::Set => 0.0,
                            Sums::Add => held(i, j, (m, n)) as f64,
                        };
                        let want = base + p().sum::<f64>();
                        // Any order of f32 additions: at most k roundings (one more
                        // adding to a held value) of at most eps each.
                        let adds = k + 1 + usize::from(sums == Sums::Add);
                        let abs = base.abs() + p().map(f64::abs).sum::<f64>();
                        let tol = adds as f64 * f32::EPSILON as f64 * abs;
                        assert!(
                            (got as f64 - want).abs() <= tol,
                            "{sums:?} m {m} n {n} k {k} ({i}, {j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn fits_whole_steps_only() {
        assert!(!fits(0));
        assert!(!fits(31) && !fits(33) && !fits(48));
        assert_eq!(fits(32), amx::enabled());
        assert_eq!(fits(7168), amx::enabled());
    }
}

//! The grouped SwiGLU FFN over permuted rows: per expert, tiles of weight rows are
//! multiplied with all of that expert's tokens (gate and up GEMMs with SwiGLU fused, then
//! the down GEMM), each weight row read once, each expert's tokens (or activations)
//! packed once for all its tiles ([`Packed`]): BF16 weights on the native bf16 dot where
//! the CPU has it and it pays, or on AMX tiles ([`bf16_native`]; [`bf16dot::gemm_nt`]),
//! else on the f32
//! kernel ([`matmul_nt_packed`]: the weights read as stored and converted a few rows at a
//! time). Tiles of all experts run in parallel. Off the native dot, an expert with only a
//! few tokens (decode) takes the matrix-vector path of [`gemv`] instead. FP8 weights meet
//! more tokens with their codes decoded as they are read ([`fp8::gemv::rows_times_many`]: on
//! AMX tiles where the process may use them, on the native bf16 dot where it outpaces the
//! f32 FMA, else on f32 FMAs up to [`fp8::gemv::FMA_MAX_VECTORS`] tokens, with AVX-512 or
//! AVX2),
//! else dequantized tiles.
//!
//! Activations are kept transposed per expert (`[rows_out, n_e]`, expert after expert),
//! so every tile writes one contiguous chunk.

use super::fp8::{self, Weights};
use super::permute::Permutation;
use crate::bf16dot;
use crate::gemm_util::{matmul_nt_packed, PackedRows};
use crate::gemv;
use crate::pooled::{self, Pooled};
use crate::storage::FloatSlice;
use crate::vmath;
use half::bf16;
use moemla_core::alloc::try_filled_vec;
use moemla_core::fp8::BLOCK;
use moemla_core::Result;
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Bytes of f32 weights per tile (half as many bytes of bf16 weights: tiles count rows).
/// Measured on the 2-core dev machine at V2-Lite shapes (T = 256): 4 MiB beat 1 MiB by
/// ~15% for bf16 (then upcast per tile) and ~7% for f32 with the earlier kernel; with
/// [`matmul_nt_packed`] 0.5, 1 and 4 MiB came out within the machine's noise. Few-token
/// experts do not use tiles (see [`gemv`]).
#[cfg(not(test))]
const TILE_BYTES: usize = 4 << 20;
/// Small tiles in tests, so that their shapes span several tiles and a partial one.
#[cfg(test)]
const TILE_BYTES: usize = 32 << 10;

/// The experts' weights, in storage type (run dtype, or FP8 with block scales).
#[derive(Clone, Copy, Debug)]
pub struct ExpertWeights<'a> {
    /// [E, 2I, H]: rows 0..I gate (W1), I..2I up (W3).
    pub w13: Weights<'a>,
    /// [E, H, I].
    pub w2: Weights<'a>,
    /// H.
    pub hidden: usize,
    /// I.
    pub inter: usize,
}

/// A tile of one expert's output rows.
struct Tile<'b> {
    expert: usize,
    first: usize,
    rows: usize,
    out: &'b mut [f32],
}

/// Per-thread f32 buffers of [`gate_up`]: weight tiles dequantized from FP8, or rows
/// upcast by [`gemv`], and the up-projection tile.
#[derive(Default)]
struct Scratch {
    gate: Vec<f32>,
    up: Vec<f32>,
    up_out: Vec<f32>,
}

/// `h^T` per expert, `[I, n_e]` expert after expert: `silu(W1_e X_e^T) * (W3_e X_e^T)`,
/// where `X_e` are the expert's permuted rows of `xg` [rows, H] (f32); with a SwiGLU
/// `limit` c, `silu(min(g, c)) * clamp(u, -c, c)`. The output (rows x I, which no input
/// bounds) is checked ([`moemla_core::Error::Size`]) and allocated fallibly
/// ([`moemla_core::Error::OutOfMemory`]). `native`: BF16 weights go through the native
/// bf16 dot ([`bf16dot::gemm_nt`]; pass [`bf16_native`]) when the rows are bf16 values.
pub fn gate_up(
    perm: &Permutation,
    xg: &[f32],
    w: ExpertWeights<'_>,
    limit: Option<f32>,
    native: bool,
) -> Result<Pooled> {
    let (h, i) = (w.hidden, w.inter);
    let mut out = pooled::zeroed(&[perm.rows(), i], "cpu moe_experts activations")?;
    // BF16 weights and rows that are bf16 values: the native bf16 dot where the CPU has it.
    let native = match w.w13 {
        Weights::Float(FloatSlice::BF16(w13)) if native => {
            bf16dot::exact(xg)?.map(|x16| (w13, x16))
        }
        _ => None,
    };
    let tiles = tiles(perm, &mut out, i, tile_rows(h));
    let packed = Packed::new(perm, xg, h, &tiles, PackedRows::new);
    let prepared = fp8_prepared(w.w13, perm, xg, h, &tiles);
    let packed16 = native
        .as_ref()
        .map(|(_, x16)| Packed::new(perm, x16, h, &tiles, bf16dot::Packed::new));
    tiles
        .into_par_iter()
        .try_for_each_init(Scratch::default, |s, tile| {
            let expert = tile.expert;
            let (first, n) = perm.expert_rows(tile.expert);
            let x = &xg[first * h..(first + n) * h];
            let base = tile.expert * 2 * i + tile.first;
            s.up_out.resize(tile.out.len(), 0.0);
            if let (Some((w13, x16)), Some(packed16)) = (&native, &packed16) {
                let x16p = packed16.expert(expert)?;
                let x16 = bf16dot::rows(x16, first, n, h)?;
                let gate = bf16dot::rows(w13, base, tile.rows, h)?;
                bf16dot::gemm_nt(gate, x16, h, x16p.as_ref().as_ref(), tile.out)?;
                let up = bf16dot::rows(w13, base + i, tile.rows, h)?;
                bf16dot::gemm_nt(up, x16, h, x16p.as_ref().as_ref(), &mut s.up_out)?;
                packed16.finished(expert);
            } else if skinny(n) {
                gemv::rows_times(w.w13, base, tile.rows, h, x, tile.out, &mut s.gate);
                gemv::rows_times(w.w13, base + i, tile.rows, h, x, &mut s.up_out, &mut s.up);
            } else if fp8_many(w.w13, &prepared, expert, base, tile.rows, x, tile.out)?
                && fp8_many(
                    w.w13,
                    &prepared,
                    expert,
                    base + i,
                    tile.rows,
                    x,
                    &mut s.up_out,
                )?
            {
            } else {
                let x = packed.expert(tile.expert)?;
                let gate = w.w13.rows(base, tile.rows, h, &mut s.gate)?;
                matmul_nt_packed(gate, &x, tile.out)?;
                let up = w.w13.rows(base + i, tile.rows, h, &mut s.up)?;
                matmul_nt_packed(up, &x, &mut s.up_out)?;
            }
            vmath::swiglu(tile.out, &s.up_out, limit);
            packed.finished(expert);
            if let Some(p) = &prepared {
                p.finished(expert);
            }
            Ok(())
        })?;
    Ok(out)
}

/// `y^T` per expert, `[H, n_e]` expert after expert: `W2_e h_e` from [`gate_up`]'s output.
/// `native` with BF16 weights: multiplied on the native bf16 dot ([`bf16dot::gemm_nt`]),
/// else on the f32 kernels. With BF16 weights on a CPU that has the native dot the
/// activations are rounded to bf16 (as bf16 GEMM kernels store them) on either path;
/// otherwise they stay f32.
pub fn down(perm: &Permutation, h_t: &[f32], w: ExpertWeights<'_>, native: bool) -> Result<Pooled> {
    let (h, i) = (w.hidden, w.inter);
    let mut out = pooled::zeroed(&[perm.rows(), h], "cpu moe_experts down projections")?;
    if let (Weights::Float(FloatSlice::BF16(w2)), true) = (w.w2, native) {
        let act16 = act_rows(perm, h_t, i, bf16::from_f32)?;
        let tiles = tiles(perm, &mut out, h, tile_rows(i));
        let packed = Packed::new(perm, &act16, i, &tiles, bf16dot::Packed::new);
        tiles.into_par_iter().try_for_each(|tile| {
            let expert = tile.expert;
            let (first, n) = perm.expert_rows(expert);
            let actp = packed.expert(expert)?;
            let act = bf16dot::rows(&act16, first, n, i)?;
            let w2 = bf16dot::rows(w2, expert * h + tile.first, tile.rows, i)?;
            bf16dot::gemm_nt(w2, act, i, actp.as_ref().as_ref(), tile.out)?;
            packed.finished(expert);
            Ok(())
        })?;
        return Ok(out);
    }
    // BF16 weights on a CPU with the native dot: the activations are rounded to bf16 here
    // too, as the native path needs them, so a token's result does not depend on which
    // path the rest of its batch sent the call down ([`bf16_native`]).
    let round = matches!(w.w2, Weights::Float(FloatSlice::BF16(_))) && bf16dot::native();
    let act_f32 = act_rows(perm, h_t, i, |v| match round {
        true => bf16::from_f32(v).to_f32(),
        false => v,
    })?;
    let tiles = tiles(perm, &mut out, h, tile_rows(i));
    let packed = Packed::new(perm, &act_f32, i, &tiles, PackedRows::new);
    let prepared = fp8_prepared(w.w2, perm, &act_f32, i, &tiles);
    tiles
        .into_par_iter()
        .try_for_each_init(Vec::new, |row, tile| {
            let expert = tile.expert;
            let (first, n) = perm.expert_rows(expert);
            let act = &act_f32[first * i..(first + n) * i];
            let base = expert * h + tile.first;
            if skinny(n) {
                gemv::rows_times(w.w2, base, tile.rows, i, act, tile.out, row);
            } else if !fp8_many(w.w2, &prepared, expert, base, tile.rows, act, tile.out)? {
                let act = packed.expert(expert)?;
                let w2 = w.w2.rows(base, tile.rows, i, row)?;
                matmul_nt_packed(w2, &act, tile.out)?;
            }
            packed.finished(expert);
            if let Some(p) = &prepared {
                p.finished(expert);
            }
            Ok(())
        })?;
    Ok(out)
}

/// [`gate_up`]'s activations (per expert `[I, n_e]`) as permuted rows `[rows, I]`, each
/// value converted by `conv` ([`Permutation::rows_from_columns`]). Same size as `h_t`,
/// allocated fallibly.
fn act_rows<T: Clone + Default + Send>(
    perm: &Permutation,
    h_t: &[f32],
    i: usize,
    conv: impl Fn(f32) -> T + Sync,
) -> Result<Vec<T>> {
    let mut out: Vec<T> = try_filled_vec(h_t.len(), "cpu moe_experts activation rows")?;
    perm.rows_from_columns(h_t, i, &mut out, conv);
    Ok(out)
}

/// Whether BF16 weights meet the activations on the native bf16 dot in this call (pass
/// to [`gate_up`] and [`down`]): where the CPU has it ([`bf16dot::native`]), and either
/// every expert has few tokens ([`skinny`]: bound by reading the weights, which the
/// native dot reads as bf16 in place), or the native dot outpaces the f32 FMA
/// ([`bf16dot::outpaces_fma`]; Intel's AVX512-BF16 cores run it at half the FMA's FLOP
/// rate, where the f32 kernel on converted rows wins: V2-Lite T = 256, 351 vs 193 ms), or
/// AMX tiles take both products' widths ([`bf16dot::on_tiles`]).
pub fn bf16_native(perm: &Permutation, w: ExpertWeights<'_>) -> bool {
    let few = (0..perm.offsets.len() - 1).all(|e| skinny(perm.expert_rows(e).1));
    let tiles = bf16dot::on_tiles(w.hidden) && bf16dot::on_tiles(w.inter);
    bf16dot::native() && (few || bf16dot::outpaces_fma() || tiles)
}

/// Each expert's rows (tokens or activations, `T`) packed by `pack` (`P`: for
/// [`matmul_nt_packed`], [`bf16dot::gemm_nt`], or FP8 weights' native bf16 dot
/// ([`Fp8Prepared`])): packed by the first of the expert's
/// tiles that needs them, shared by the others, and dropped when the expert's last tile
/// has finished, so that only the experts in progress hold a packed copy (not one of
/// every expert's rows at once).
struct Packed<'a, T, P> {
    perm: &'a Permutation,
    rows: &'a [T],
    cols: usize,
    pack: fn(&'a [T], usize) -> Result<P>,
    experts: Vec<ExpertPack<P>>,
}

/// One expert's entry in [`Packed`].
struct ExpertPack<P> {
    /// Its packed rows, once a tile has packed them (and until its last tile finished).
    packed: Mutex<Option<Arc<P>>>,
    /// Its tiles not yet finished.
    tiles_left: AtomicUsize,
}

impl<'a, T, P> Packed<'a, T, P> {
    /// Nothing packed yet: `rows` are the permuted rows of `cols` ([rows, cols]), `pack`
    /// packs one expert's; `tiles` are the tiles that will run (each calls
    /// [`Packed::finished`] when done).
    fn new(
        perm: &'a Permutation,
        rows: &'a [T],
        cols: usize,
        tiles: &[Tile<'_>],
        pack: fn(&'a [T], usize) -> Result<P>,
    ) -> Self {
        let mut experts: Vec<ExpertPack<P>> = (0..perm.offsets.len() - 1)
            .map(|_| ExpertPack {
                packed: Mutex::new(None),
                tiles_left: AtomicUsize::new(0),
            })
            .collect();
        for t in tiles {
            *experts[t.expert].tiles_left.get_mut() += 1;
        }
        Packed {
            perm,
            rows,
            cols,
            pack,
            experts,
        }
    }

    /// Expert `e`'s rows, packed (by this call if no tile has yet; other tiles of the
    /// expert wait for it meanwhile).
    fn expert(&self, e: usize) -> Result<Arc<P>> {
        let (first, n) = self.perm.expert_rows(e);
        let rows = &self.rows[first * self.cols..(first + n) * self.cols];
        let mut slot = self.experts[e]
            .packed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = &*slot {
            return Ok(Arc::clone(p));
        }
        let p = Arc::new((self.pack)(rows, self.cols)?);
        *slot = Some(Arc::clone(&p));
        Ok(p)
    }

    /// One of expert `e`'s tiles has finished; after its last, the packed rows are dropped.
    fn finished(&self, e: usize) {
        let entry = &self.experts[e];
        if entry.tiles_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            *entry.packed.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }
}

/// Whether an expert with `n` tokens takes the matrix-vector path (each weight row read
/// once and dotted with every token) rather than tile + GEMM.
fn skinny(n: usize) -> bool {
    n <= gemv::MAX_VECTORS
}

/// Each expert's activation vectors prepared once for the native bf16 dot or AMX tiles,
/// for FP8 weights (`None` for others): the vectors of expert `e` as [`fp8::gemv::Prepared`], or
/// `None` where that path does not take them.
type Fp8Prepared<'a> = Option<Packed<'a, f32, Option<fp8::gemv::Prepared>>>;

/// [`Fp8Prepared`] for `w`, the permuted rows `rows` ([rows, cols]) and the `tiles` that
/// will run (each calls [`Packed::finished`] when done).
fn fp8_prepared<'a>(
    w: Weights<'_>,
    perm: &'a Permutation,
    rows: &'a [f32],
    cols: usize,
    tiles: &[Tile<'_>],
) -> Fp8Prepared<'a> {
    matches!(w, Weights::Fp8(_)).then(|| {
        Packed::new(perm, rows, cols, tiles, |rows, cols| {
            Ok(fp8::gemv::Prepared::new(rows, cols))
        })
    })
}

/// FP8 weight rows `first..first + rows` times every token of expert `e` (`act`) into
/// `out` (`[rows, n]`) with the codes decoded as they are read: on the expert's prepared
/// vectors where AMX tiles or the native bf16 dot take them
/// ([`fp8::gemv::rows_times_prepared`]), else
/// [`fp8::gemv::rows_times_many`]; false (the caller dequantizes a tile and takes
/// [`matmul_nt_packed`]) for other weights, or where that path declines (neither AVX-512
/// nor AVX2, more
/// tokens than [`fp8::gemv::FMA_MAX_VECTORS`] off the bf16 dot, no memory for its copy).
fn fp8_many(
    w: Weights<'_>,
    prepared: &Fp8Prepared<'_>,
    e: usize,
    first: usize,
    rows: usize,
    act: &[f32],
    out: &mut [f32],
) -> Result<bool> {
    let (Weights::Fp8(f), Some(prepared)) = (w, prepared) else {
        return Ok(false);
    };
    Ok(match prepared.expert(e)?.as_ref() {
        Some(p) => fp8::gemv::rows_times_prepared(&f, first, rows, p, out),
        None => fp8::gemv::rows_times_many(&f, first, rows, act, out),
    })
}

/// Weight rows per tile for rows of `k` columns (a multiple of 16, >= 16): whole 128-row
/// blocks where at least one fits, so that an FP8 tile's rows share their scales (the AVX2
/// kernel places the activations once per run of such rows; the up projection's tiles
/// start I rows on, aligned so where I is a multiple of 128, as DeepSeek's are). For
/// every weight type alike: bf16 and f32 tiles measured the same at 640 rows as at 736.
fn tile_rows(k: usize) -> usize {
    let rows = TILE_BYTES / k.max(1).saturating_mul(4);
    let unit = if rows >= BLOCK { BLOCK } else { 16 };
    (rows / unit * unit).max(16)
}

/// Splits `buf` (per expert `[out_rows, n_e]`, expert after expert) into tiles of at most
/// `tile` output rows; experts without rows get none.
fn tiles<'b>(
    perm: &Permutation,
    buf: &'b mut [f32],
    out_rows: usize,
    tile: usize,
) -> Vec<Tile<'b>> {
    let mut items = Vec::new();
    let mut rest = buf;
    for expert in 0..perm.offsets.len() - 1 {
        let (_, n) = perm.expert_rows(expert);
        if n == 0 {
            continue;
        }
        let (mut region, tail) = rest.split_at_mut(out_rows * n);
        rest = tail;
        let mut first = 0;
        while first < out_rows {
            let rows = tile.min(out_rows - first);
            let (out, more) = std::mem::take(&mut region).split_at_mut(rows * n);
            region = more;
            items.push(Tile {
                expert,
                first,
                rows,
                out,
            });
            first += rows;
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FloatSlice;

    #[test]
    fn tiles_cover_each_used_expert_once() {
        let perm = Permutation::new(&[1, 1, -1, 1], &[1.0; 4], 3, 1).unwrap(); // expert 1: 3 rows
        let mut buf = vec![0.0; 3 * 5];
        let t = tiles(&perm, &mut buf, 5, 2);
        let spans: Vec<_> = t
            .iter()
            .map(|t| (t.expert, t.first, t.rows, t.out.len()))
            .collect();
        assert_eq!(spans, vec![(1, 0, 2, 6), (1, 2, 2, 6), (1, 4, 1, 3)]);
        assert_eq!(tile_rows(256), 32);
        assert_eq!(tile_rows(1 << 20), 16);
        assert_eq!(tile_rows(48), 128);
        assert_eq!(tile_rows(16), 512);
    }

    /// One expert's SwiGLU FFN on one token in f64, plainly: `(act, Σ|W2 act| per output,
    /// W2 act)` for `w13` [2I, H] and `w2` [H, I] of expert `e`.
    fn expert_ref(
        x: &[f32],
        w13: &[f32],
        w2: &[f32],
        e: usize,
        (h, i): (usize, usize),
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let dot = |row: usize| -> f64 {
            let w = &w13[(e * 2 * i + row) * h..][..h];
            w.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum()
        };
        let act: Vec<f64> = (0..i)
            .map(|r| {
                let g = dot(r);
                g / (1.0 + (-g).exp()) * dot(i + r)
            })
            .collect();
        let row = |c: usize| &w2[(e * h + c) * i..][..i];
        let abs = (0..h)
            .map(|c| {
                row(c)
                    .iter()
                    .zip(&act)
                    .map(|(&w, a)| (w as f64 * a).abs())
                    .sum()
            })
            .collect();
        let y = (0..h)
            .map(|c| row(c).iter().zip(&act).map(|(&w, a)| w as f64 * a).sum())
            .collect();
        (act, abs, y)
    }

    #[test]
    fn ffn_native_and_fallback_paths_match_an_f64_reference_at_odd_shapes() {
        // H 600 and I 70 are no multiple of any tile or vector width; gate/up tiles of 16
        // rows (the last 6) and down tiles of 112 (the last 40). T 1 and 3 take the
        // matrix-vector path without the native dot, T 40 the tile GEMMs; -1 ids skipped.
        let (h, i, e, k) = (600, 70, 3, 2);
        let mut rng = crate::test_util::Lcg::new(41);
        let round = |v: Vec<f32>| -> Vec<bf16> { v.into_iter().map(bf16::from_f32).collect() };
        let w13 = round(rng.vec(e * 2 * i * h, -0.1, 0.1));
        let w2 = round(rng.vec(e * h * i, -0.1, 0.1));
        let f32s = |v: &[bf16]| -> Vec<f32> { v.iter().map(|b| b.to_f32()).collect() };
        let (w13f, w2f) = (f32s(&w13), f32s(&w2));
        let w = |w13, w2| ExpertWeights {
            w13: Weights::Float(w13),
            w2: Weights::Float(w2),
            hidden: h,
            inter: i,
        };
        let bf = w(FloatSlice::BF16(&w13), FloatSlice::BF16(&w2));
        // The same values as F32 weights: f32 products whatever `native` says.
        let f = w(FloatSlice::F32(&w13f), FloatSlice::F32(&w2f));
        for t in [1, 3, 40] {
            let ids: Vec<i32> = (0..t * k)
                .map(|n| {
                    if n % 5 == 3 {
                        -1
                    } else {
                        ((n * 7 + n / k) % e) as i32
                    }
                })
                .collect();
            let perm = Permutation::new(&ids, &vec![1.0; t * k], e, k).unwrap();
            let x = f32s(&round(rng.vec(t * h, -1.0, 1.0)));
            let xg: Vec<f32> = perm
                .tokens
                .iter()
                .flat_map(|&tok| x[tok * h..(tok + 1) * h].to_vec())
                .collect();
            for (w, native) in [(bf, false), (bf, true), (f, true)] {
                // BF16 weights on a CPU with the native dot: the activations are rounded to
                // bf16 on either path (the native one needs them so; the f32 one follows,
                // so that a token's result does not depend on the path its batch took).
                // The native path rounds them on any CPU (without the dot, `gemm_nt`'s f32
                // loop takes the same bf16 operands; `bf16_native` never asks for it there).
                let rounds = (native || bf16dot::native())
                    && matches!(w.w2, Weights::Float(FloatSlice::BF16(_)));
                let h_t = gate_up(&perm, &xg, w, None, native).unwrap();
                let y_t = down(&perm, &h_t, w, native).unwrap();
                let mut rounded = 0;
                for (pair, &id) in ids.iter().enumerate() {
                    let Ok(ex) = usize::try_from(id) else {
                        assert_eq!(perm.row_of[pair], None);
                        continue;
                    };
                    let row = perm.row_of[pair].unwrap();
                    let (first, n) = perm.expert_rows(ex);
                    let xt = &x[pair / k * h..][..h];
                    let (act, abs, want) = expert_ref(xt, &w13f, &w2f, ex, (h, i));
                    for (r, &a) in act.iter().enumerate() {
                        let got = h_t[first * i + r * n + (row - first)] as f64;
                        assert!((got - a).abs() <= 1e-5 * (1.0 + a.abs()), "T {t} act {r}");
                    }
                    for c in 0..h {
                        let got = y_t[first * h + c * n + (row - first)] as f64;
                        let err = (got - want[c]).abs();
                        // f32 sums: 1e-5; rounding each activation to bf16 adds a
                        // relative error <= 2^-8.
                        let tol = if rounds { 1.0 / 256.0 + 1e-5 } else { 1e-5 } * abs[c];
                        assert!(
                            err <= tol,
                            "T {t} native {native} y {c}: {got} vs {}",
                            want[c]
                        );
                        rounded += usize::from(err > 1e-5 * abs[c]);
                    }
                }
                assert_eq!(rounded > 0, rounds, "T {t} {native}");
            }
        }
    }

    #[test]
    fn an_experts_packed_rows_are_shared_by_its_tiles_and_dropped_after_the_last() {
        // Expert 0: 3 rows of 2 columns; out rows 5 in tiles of 2: three tiles.
        let perm = Permutation::new(&[0, 0, 0], &[1.0; 3], 2, 1).unwrap();
        let rows = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut buf = vec![0.0; 5 * 3];
        let t = tiles(&perm, &mut buf, 5, 2);
        assert_eq!(t.len(), 3);
        let packed = Packed::new(&perm, &rows, 2, &t, PackedRows::new);
        let first = packed.expert(0).unwrap();
        assert!(Arc::ptr_eq(&first, &packed.expert(0).unwrap()));
        drop(first);
        let held =
            |p: &Packed<'_, f32, PackedRows<'_>>| p.experts[0].packed.lock().unwrap().is_some();
        packed.finished(0);
        packed.finished(0);
        assert!(held(&packed));
        packed.finished(0);
        assert!(!held(&packed));
    }

    #[test]
    fn activation_sizes_are_checked_not_wrapped() {
        // Two routed rows; I so large that rows x I cannot be allocated (256 TiB) or does
        // not even fit in the address space. The weights are never read.
        let perm = Permutation::new(&[0, 0], &[1.0; 2], 1, 1).unwrap();
        let w = |inter| ExpertWeights {
            w13: Weights::Float(FloatSlice::F32(&[])),
            w2: Weights::Float(FloatSlice::F32(&[])),
            hidden: 1,
            inter,
        };
        let err = gate_up(&perm, &[1.0, 1.0], w(1 << 45), None, false).unwrap_err();
        assert!(
            matches!(err, moemla_core::Error::OutOfMemory { .. }),
            "{err}"
        );
        let err = gate_up(&perm, &[1.0, 1.0], w(1 << 62), None, false).unwrap_err();
        assert!(matches!(err, moemla_core::Error::Size { .. }), "{err}");
    }
}

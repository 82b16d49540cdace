//! The grouped SwiGLU FFN over permuted rows: per expert, tiles of weight rows are upcast
//! to f32 once and multiplied with all of that expert's tokens (gate and up GEMMs with
//! SwiGLU fused, then the down GEMM). Tiles of all experts run in parallel. An expert with
//! only a few tokens (decode) takes the matrix-vector path of [`gemv`] instead.
//!
//! Activations are kept transposed per expert (`[rows_out, n_e]`, expert after expert),
//! so every tile writes one contiguous chunk.

use super::fp8::Weights;
use super::permute::Permutation;
use crate::bf16dot;
use crate::gemm_util::{matmul, MatRef};
use crate::gemv;
use crate::storage::{zeroed, FloatSlice};
use moemla_core::Result;
use rayon::prelude::*;

/// Bytes of f32 weights per tile. Measured on the 2-core dev machine at V2-Lite shapes
/// (T = 256): 4 MiB beat 1 MiB by ~15% for bf16 (upcast tiles) and ~7% for f32; larger
/// tiles gained nothing. Few-token experts do not use tiles (see [`gemv`]).
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

/// Per-thread f32 buffers: upcast weight tiles (or rows), and the up-projection tile (or
/// the transposed activations of the down projection).
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
/// ([`moemla_core::Error::OutOfMemory`]).
pub fn gate_up(
    perm: &Permutation,
    xg: &[f32],
    w: ExpertWeights<'_>,
    limit: Option<f32>,
) -> Result<Vec<f32>> {
    let (h, i) = (w.hidden, w.inter);
    let mut out = zeroed(&[perm.rows(), i], "cpu moe_experts activations")?;
    // BF16 weights and rows that are bf16 values: the native bf16 dot where the CPU has it.
    let native = match w.w13 {
        Weights::Float(FloatSlice::BF16(w13)) if bf16dot::native() => {
            bf16dot::exact(xg)?.map(|x16| (w13, x16))
        }
        _ => None,
    };
    tiles(perm, &mut out, i, tile_rows(h))
        .into_par_iter()
        .try_for_each_init(Scratch::default, |s, tile| {
            let (first, n) = perm.expert_rows(tile.expert);
            let x = &xg[first * h..(first + n) * h];
            let base = tile.expert * 2 * i + tile.first;
            s.up_out.resize(tile.out.len(), 0.0);
            if let Some((w13, x16)) = &native {
                let x16 = bf16dot::rows(x16, first, n, h)?;
                let gate = bf16dot::rows(w13, base, tile.rows, h)?;
                bf16dot::gemm_nt(gate, x16, h, tile.out)?;
                let up = bf16dot::rows(w13, base + i, tile.rows, h)?;
                bf16dot::gemm_nt(up, x16, h, &mut s.up_out)?;
            } else if skinny(n) {
                gemv::rows_times(w.w13, base, tile.rows, h, x, tile.out, &mut s.gate);
                gemv::rows_times(w.w13, base + i, tile.rows, h, x, &mut s.up_out, &mut s.up);
            } else {
                let x_t = MatRef::row_major(x, n, h).t();
                let gate = w.w13.rows_f32(base, tile.rows, h, &mut s.gate);
                matmul(tile.out, MatRef::row_major(gate, tile.rows, h), x_t, false)?;
                let up = w.w13.rows_f32(base + i, tile.rows, h, &mut s.up);
                matmul(
                    &mut s.up_out,
                    MatRef::row_major(up, tile.rows, h),
                    x_t,
                    false,
                )?;
            }
            match limit {
                None => {
                    for (g, u) in tile.out.iter_mut().zip(&s.up_out) {
                        *g = silu(*g) * u;
                    }
                }
                Some(c) => {
                    for (g, u) in tile.out.iter_mut().zip(&s.up_out) {
                        *g = clamped_swiglu(*g, *u, c);
                    }
                }
            }
            Ok(())
        })?;
    Ok(out)
}

/// `y^T` per expert, `[H, n_e]` expert after expert: `W2_e h_e` from [`gate_up`]'s output.
pub fn down(perm: &Permutation, h_t: &[f32], w: ExpertWeights<'_>) -> Result<Vec<f32>> {
    let (h, i) = (w.hidden, w.inter);
    let mut out = zeroed(&[perm.rows(), h], "cpu moe_experts down projections")?;
    tiles(perm, &mut out, h, tile_rows(i))
        .into_par_iter()
        .try_for_each_init(Scratch::default, |s, tile| {
            let (first, n) = perm.expert_rows(tile.expert);
            let act = &h_t[first * i..(first + n) * i];
            let base = tile.expert * h + tile.first;
            if skinny(n) {
                // The activations as n contiguous vectors: [n, I].
                s.up_out.clear();
                s.up_out
                    .extend((0..n * i).map(|at| act[(at % i) * n + at / i]));
                gemv::rows_times(w.w2, base, tile.rows, i, &s.up_out, tile.out, &mut s.gate);
                Ok(())
            } else {
                let w2 = w.w2.rows_f32(base, tile.rows, i, &mut s.gate);
                let act = MatRef::row_major(act, i, n);
                matmul(tile.out, MatRef::row_major(w2, tile.rows, i), act, false)
            }
        })?;
    Ok(out)
}

/// Whether an expert with `n` tokens takes the matrix-vector path (each weight row read
/// once and dotted with every token) rather than tile + GEMM.
fn skinny(n: usize) -> bool {
    n <= gemv::MAX_VECTORS
}

/// SiLU (swish): `x * sigmoid(x)`.
fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `silu(min(g, c)) * clamp(u, -c, c)` (DeepSeek-V4's clamp); a NaN `g` or `u` stays NaN.
fn clamped_swiglu(g: f32, u: f32, c: f32) -> f32 {
    let g = if g > c { c } else { g };
    silu(g) * u.clamp(-c, c)
}

/// Weight rows per tile for rows of `k` columns (a multiple of 16, >= 16).
fn tile_rows(k: usize) -> usize {
    let rows = TILE_BYTES / k.max(1).saturating_mul(4);
    (rows / 16 * 16).max(16)
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
    fn silu_matches_its_definition() {
        for x in [-3.0f32, -0.5, 0.0, 1.25, 8.0] {
            let want = x as f64 / (1.0 + (-x as f64).exp());
            assert!((silu(x) as f64 - want).abs() < 1e-6);
        }
    }

    #[test]
    fn the_swiglu_clamp_bites_both_ways_and_keeps_nan() {
        let c = 10.0;
        assert_eq!(clamped_swiglu(3.0, -4.0, c), silu(3.0) * -4.0);
        assert_eq!(clamped_swiglu(25.0, 30.0, c), silu(10.0) * 10.0);
        assert_eq!(clamped_swiglu(-25.0, -30.0, c), silu(-25.0) * -10.0);
        assert!(clamped_swiglu(f32::NAN, 1.0, c).is_nan());
        assert!(clamped_swiglu(1.0, f32::NAN, c).is_nan());
    }

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
        let err = gate_up(&perm, &[1.0, 1.0], w(1 << 45), None).unwrap_err();
        assert!(
            matches!(err, moemla_core::Error::OutOfMemory { .. }),
            "{err}"
        );
        let err = gate_up(&perm, &[1.0, 1.0], w(1 << 62), None).unwrap_err();
        assert!(matches!(err, moemla_core::Error::Size { .. }), "{err}");
    }
}

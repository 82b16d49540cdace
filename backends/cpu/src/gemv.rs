//! Weight rows times a few activation vectors: the decode-time shape of the expert GEMMs,
//! where a general GEMM would first pack (copy) the whole weight tile. Each weight row is
//! read once (F16/BF16: upcast into an L1-resident buffer) and dotted with every
//! activation vector. FP8 weights are decoded in registers where the CPU has AVX-512
//! ([`fp8::gemv`]), else dequantized the same way, row by row.

use crate::ops::moe_experts::fp8::{self, Weights};
use crate::storage::FloatSlice;

/// Up to this many activation vectors, [`rows_times`] beats a tile plus GEMM (measured
/// at V2-Lite shapes: bf16 decode -20..30% time, f32 about -10%).
pub const MAX_VECTORS: usize = 4;

/// `out[r * n + c] = w[first + r] . act[c]` for `rows` weight rows of `k` columns (a
/// row-major matrix in storage type) and `n` activation vectors `act` [n, k] (f32);
/// `out` is [rows, n]. `row` is scratch for one upcast weight row (unused for F32).
pub fn rows_times(
    w: Weights<'_>,
    first: usize,
    rows: usize,
    k: usize,
    act: &[f32],
    out: &mut [f32],
    row: &mut Vec<f32>,
) {
    // FP8: codes decoded in registers where the CPU can (no dequantized row at all).
    if let Weights::Fp8(f) = &w {
        if f.cols == k && fp8::gemv::rows_times(f, first, rows, act, out) {
            return;
        }
    }
    pulp::Arch::new().dispatch(RowsTimes {
        w,
        first,
        rows,
        k,
        act,
        out,
        row,
    });
}

/// [`rows_times`] as a pulp kernel: one run-time dispatch per call, the whole loop (upcast
/// and dot products) inlined into the code compiled for the detected vector unit.
struct RowsTimes<'a> {
    w: Weights<'a>,
    first: usize,
    rows: usize,
    k: usize,
    act: &'a [f32],
    out: &'a mut [f32],
    row: &'a mut Vec<f32>,
}

impl pulp::WithSimd for RowsTimes<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let k = self.k;
        let n = self.act.len() / k.max(1);
        self.row.resize(k, 0.0);
        for (r, out) in self.out.chunks_mut(n).take(self.rows).enumerate() {
            let w_row: &[f32] = match self.w {
                Weights::Float(FloatSlice::F32(v)) => &v[(self.first + r) * k..][..k],
                other => {
                    other.read_row_inline(self.first + r, self.row);
                    self.row
                }
            };
            for (o, x) in out.iter_mut().zip(self.act.chunks_exact(k)) {
                *o = dot(w_row, x);
            }
        }
    }
}

/// `a . b` with 16 independent partial sums (so it vectorises), combined in a fixed order.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..LANES {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn rows_times_matches_plain_dot_products() {
        let (rows, k) = (3, 37); // 37: two full chunks of 16 and a tail of 5
        let w: Vec<bf16> = (0..(rows + 1) * k)
            .map(|i| bf16::from_f32(((i * 7) % 11) as f32 - 5.0))
            .collect();
        let act: Vec<f32> = (0..2 * k).map(|i| ((i * 3) % 5) as f32 * 0.5).collect();
        let mut out = vec![0.0; rows * 2];
        rows_times(
            Weights::Float(FloatSlice::BF16(&w)),
            1,
            rows,
            k,
            &act,
            &mut out,
            &mut Vec::new(),
        );
        for r in 0..rows {
            for c in 0..2 {
                let want: f64 = (0..k)
                    .map(|j| w[(1 + r) * k + j].to_f64() * act[c * k + j] as f64)
                    .sum();
                assert_eq!(out[r * 2 + c] as f64, want, "row {r} vector {c}");
            }
        }
    }
}

//! Weight rows times a few activation vectors: the decode-time shape of the expert GEMMs,
//! where a general GEMM would first pack (copy) the whole weight tile. Each weight row is
//! read once (F16/BF16: upcast into an L1-resident buffer) and dotted with every
//! activation vector.

use crate::storage::FloatSlice;

/// Up to this many activation vectors, [`rows_times`] beats a tile plus GEMM (measured
/// at V2-Lite shapes: bf16 decode -20..30% time, f32 about -10%).
pub const MAX_VECTORS: usize = 4;

/// `out[r * n + c] = w[first + r] . act[c]` for `rows` weight rows of `k` columns (a
/// row-major matrix in storage type) and `n` activation vectors `act` [n, k] (f32);
/// `out` is [rows, n]. `row` is scratch for one upcast weight row (unused for F32).
pub fn rows_times(
    w: FloatSlice<'_>,
    first: usize,
    rows: usize,
    k: usize,
    act: &[f32],
    out: &mut [f32],
    row: &mut Vec<f32>,
) {
    let n = act.len() / k.max(1);
    for (r, out) in out.chunks_mut(n).take(rows).enumerate() {
        let row = w.rows_f32(first + r, 1, k, row);
        pulp::Arch::new().dispatch(Dots { row, act, k, out });
    }
}

/// `out[c] = row . act[c]` as a pulp kernel (inlined into the code compiled for the
/// detected vector unit).
struct Dots<'a> {
    row: &'a [f32],
    act: &'a [f32],
    k: usize,
    out: &'a mut [f32],
}

impl pulp::WithSimd for Dots<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        for (o, a) in self.out.iter_mut().zip(self.act.chunks_exact(self.k)) {
            *o = dot(self.row, a);
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
            FloatSlice::BF16(&w),
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

//! Contract v2 experts on the CPU: expert weights as stored (run dtype, or FP8 e4m3 codes
//! with 128x128 block scales: decoded as they are read by [`gemv`] where the CPU can, else
//! dequantized row by row into the f32 tiles the GEMMs read, so no dequantized weight
//! tensor ever exists), and `fp8_block128` activation quantization.

#[cfg(target_arch = "x86_64")]
mod dpbf16;
pub mod gemv;
mod quantize;

#[cfg(target_arch = "x86_64")]
pub(crate) use dpbf16::{pow2_exponent, MAGNITUDES};

use super::permute::Permutation;
use crate::storage::{f32_slice, row_range, storage, CpuSlice, FloatSlice};
use moemla_core::fp8::{ScaleMode, BLOCK};
use moemla_core::{DType, DeviceTensor, Error, Result};
use rayon::prelude::*;

/// Whether FP8 weights can meet activations on the native bf16 dot on this CPU
/// (AVX512-BF16 with VBMI and AVX-512 F/BW/VL): decode-time experts take it when their activations are bf16
/// values or `fp8_block128`-quantized, prefill ones where it also outpaces the f32 FMA
/// ([`gemv`]).
pub(crate) fn bf16_dot() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        dpbf16::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One weight stack [E, R, C] as stored.
#[derive(Clone, Copy, Debug)]
pub enum Weights<'a> {
    /// Run-dtype values.
    Float(FloatSlice<'a>),
    /// e4m3 codes with block scales.
    Fp8(Fp8Weights<'a>),
}

/// FP8 weights [E, R, C]: `W[e, r, c] = e4m3(codes[e, r, c]) * scales[e, r / 128, c / 128]`.
#[derive(Clone, Copy, Debug)]
pub struct Fp8Weights<'a> {
    /// The codes, row-major [E, R, C].
    pub codes: &'a [u8],
    /// The scales, [E, ceil(R / 128), ceil(C / 128)].
    pub scales: &'a [f32],
    /// R: rows per expert.
    pub rows: usize,
    /// C: columns.
    pub cols: usize,
}

impl<'a> Weights<'a> {
    /// The weights of argument `arg` of `call`: run dtype, or FP8 with `scale` (validation
    /// guarantees the dtypes and the scale shape `[E, ceil(R/128), ceil(C/128)]`).
    pub fn of(
        backend: &str,
        call: &'static str,
        (arg, t): (&'static str, &'a DeviceTensor),
        scale: Option<(&'static str, &'a DeviceTensor)>,
    ) -> Result<Self> {
        let Some((scale_arg, scale)) = scale else {
            return Ok(Weights::Float(crate::storage::float_slice(
                t, backend, call, arg,
            )?));
        };
        let codes = match storage(t, backend, call, arg)? {
            CpuSlice::F8E4M3(v) => v,
            other => {
                return Err(Error::Device {
                    backend: backend.to_string(),
                    call: format!("{call}: `{arg}`"),
                    message: format!("buffer holds {}, expected F8_E4M3", other.dtype()),
                })
            }
        };
        debug_assert_eq!(t.dtype(), DType::F8E4M3);
        let [_, rows, cols] = [0, 1, 2].map(|d| t.dims()[d]);
        Ok(Weights::Fp8(Fp8Weights {
            codes,
            scales: f32_slice(scale, backend, call, scale_arg)?,
            rows,
            cols,
        }))
    }

    /// Rows `first..first + rows` (rows of the flattened [E * R, C] matrix, `cols` = C
    /// columns): the stored rows themselves for float weights (any float type), FP8 ones
    /// dequantized with their block scales into `scratch` (f32). Rows outside the
    /// weights are [`Error::Device`] (checked arithmetic), nothing read.
    pub fn rows<'s>(
        self,
        first: usize,
        rows: usize,
        cols: usize,
        scratch: &'s mut Vec<f32>,
    ) -> Result<FloatSlice<'s>>
    where
        Self: 's,
    {
        let outside = || Error::Device {
            backend: crate::NAME.to_string(),
            call: "moe_experts weight rows".to_string(),
            message: format!("rows {first}..{first}+{rows} of {cols} columns outside the weights"),
        };
        match self {
            Weights::Float(w) => w.rows(first, rows, cols).ok_or_else(outside),
            Weights::Fp8(w) => {
                let inside = cols == w.cols
                    && row_range(first, rows, cols).is_some_and(|r| r.end <= w.codes.len());
                if !inside {
                    return Err(outside());
                }
                scratch.resize(rows * cols, 0.0);
                for (r, dst) in scratch.chunks_exact_mut(cols).enumerate() {
                    w.read_row(first + r, dst);
                }
                Ok(FloatSlice::F32(scratch))
            }
        }
    }

    /// Row `row` of the flattened [E * R, C] matrix as f32 into `dst` (C long), for kernels
    /// compiled for the detected vector unit (inlined there).
    #[inline(always)]
    pub fn read_row_inline(&self, row: usize, dst: &mut [f32]) {
        match self {
            Weights::Float(w) => w.read_f32_inline(row * dst.len(), dst),
            Weights::Fp8(w) => w.read_row(row, dst),
        }
    }
}

impl<'a> Fp8Weights<'a> {
    /// Row `row` of the flattened [E * R, C] matrix: its C codes and the scales of its
    /// column blocks (ceil(C / 128), from its expert's row block). A row past the codes
    /// or the scales panics: callers check their rows first.
    #[inline(always)]
    pub fn row(&self, row: usize) -> (&'a [u8], &'a [f32]) {
        let (e, r) = (row / self.rows, row % self.rows);
        let col_blocks = self.cols.div_ceil(BLOCK);
        let scale_row = e * self.rows.div_ceil(BLOCK) + r / BLOCK;
        (
            &self.codes[row * self.cols..][..self.cols],
            &self.scales[scale_row * col_blocks..][..col_blocks],
        )
    }

    /// How many rows from `row` (of the flattened [E * R, C] matrix) on share its scales:
    /// to the end of its 128-row block or of its expert, whichever comes first (>= 1).
    /// R (`self.rows`) must not be 0: callers check their rows first.
    pub fn rows_sharing_scales(&self, row: usize) -> usize {
        let r = row % self.rows;
        (r / BLOCK * BLOCK + BLOCK).min(self.rows) - r
    }

    /// Dequantizes row `row` (of the flattened [E * R, C] matrix) into `dst` (C long): each
    /// 128-column block times its scale.
    #[inline(always)]
    pub fn read_row(&self, row: usize, dst: &mut [f32]) {
        let (codes, scales) = self.row(row);
        for ((d, c), &s) in dst.chunks_mut(BLOCK).zip(codes.chunks(BLOCK)).zip(scales) {
            for (v, &code) in d.iter_mut().zip(c) {
                *v = crate::convert::e4m3(code) * s;
            }
        }
    }
}

/// Quantizes every row of `rows` ([n, len] row-major) as `fp8_block128` activations.
pub fn quantize_rows(rows: &mut [f32], len: usize, mode: ScaleMode) {
    if len == 0 {
        return;
    }
    rows.par_chunks_mut(len)
        .for_each(|row| quantize::activation_row(row, mode));
}

/// Quantizes the activations `h_t` (per expert `[I, n_e]`, expert after expert: one token
/// per column) as `fp8_block128` rows: each token's I values in groups of 128.
pub fn quantize_columns(perm: &Permutation, h_t: &mut [f32], inter: usize, mode: ScaleMode) {
    // Each expert's block [I, n_e], in parallel.
    let mut blocks = Vec::new();
    let mut rest = h_t;
    for e in 0..perm.offsets.len().saturating_sub(1) {
        let (_, n) = perm.expert_rows(e);
        let (block, tail) = std::mem::take(&mut rest).split_at_mut(n * inter);
        rest = tail;
        blocks.push((block, n));
    }
    blocks.into_par_iter().for_each(|(block, n)| {
        let mut column = Vec::with_capacity(inter);
        for c in 0..n {
            column.clear();
            column.extend((0..inter).map(|r| block[r * n + c]));
            quantize::activation_row(&mut column, mode);
            for (r, &v) in column.iter().enumerate() {
                block[r * n + c] = v;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use moemla_core::fp8::{e4m3_decode, quantize_activation_row};

    #[test]
    fn runs_of_rows_sharing_scales_end_at_each_128_row_block_and_each_expert() {
        let w = Fp8Weights {
            codes: &[],
            scales: &[],
            rows: 130,
            cols: 1,
        };
        // Expert 0's rows 0..128 and 128..130, then expert 1 (flattened rows 130..).
        for (row, want) in [(0, 128), (127, 1), (128, 2), (129, 1), (130, 128), (258, 2)] {
            assert_eq!(w.rows_sharing_scales(row), want, "row {row}");
        }
    }

    #[test]
    fn fp8_rows_are_dequantized_with_their_own_block_scale() {
        // E 2, R 130 (a partial row block), C 200 (a partial column block).
        let (e, r, c) = (2, 130, 200);
        let codes: Vec<u8> = (0..e * r * c).map(|i| (i * 7 % 251) as u8 & 0x7E).collect();
        let scales: Vec<f32> = (0..e * 2 * 2).map(|i| 0.5 + i as f32 * 0.25).collect();
        let w = Weights::Fp8(Fp8Weights {
            codes: &codes,
            scales: &scales,
            rows: r,
            cols: c,
        });
        let mut scratch = Vec::new();
        // Rows 128..131 of the flattened matrix: expert 0 rows 128, 129, then expert 1 row 0.
        let Ok(FloatSlice::F32(got)) = w.rows(128, 3, c, &mut scratch) else {
            panic!("FP8 rows dequantize to f32");
        };
        for (n, (row, expert, local)) in [(128, 0, 128), (129, 0, 129), (130, 1, 0)]
            .into_iter()
            .enumerate()
        {
            for col in [0, 127, 128, 199] {
                let scale = scales[(expert * 2 + local / 128) * 2 + col / 128];
                let want = e4m3_decode(codes[row * c + col]) * scale;
                assert_eq!(got[n * c + col], want, "row {row} col {col}");
            }
        }
        let mut one = vec![0.0; c];
        w.read_row_inline(130, &mut one);
        assert_eq!(one, got[2 * c..]);
    }

    #[test]
    fn weight_rows_outside_the_weights_are_errors_not_panics() {
        let (r, c) = (4, 8);
        let codes = vec![0u8; r * c];
        let scales = [1.0f32];
        let fp8 = Weights::Fp8(Fp8Weights {
            codes: &codes,
            scales: &scales,
            rows: r,
            cols: c,
        });
        let values = vec![1.0f32; r * c];
        let float = Weights::Float(FloatSlice::F32(&values));
        let mut scratch = Vec::new();
        for w in [fp8, float] {
            assert!(w.rows(0, r, c, &mut scratch).is_ok());
            for (first, rows) in [(1, r), (r, 1), (usize::MAX, 1), (1 << 62, 2)] {
                let err = w.rows(first, rows, c, &mut scratch).unwrap_err();
                assert!(
                    err.to_string().contains("outside the weights"),
                    "{first}+{rows}: {err}"
                );
            }
        }
        // FP8 rows read with another column count than the weights have.
        assert!(fp8.rows(0, 1, c / 2, &mut scratch).is_err());
    }

    #[test]
    fn activation_columns_are_quantized_per_token() {
        // One expert, 2 tokens, I 3: h_t = [[a0, b0], [a1, b1], [a2, b2]].
        let perm = Permutation::new(&[0, 0], &[1.0, 1.0], 1, 1).unwrap();
        let mut h_t = vec![1.0, 10.0, 0.3, -7.0, 0.11, 3.3];
        quantize_columns(&perm, &mut h_t, 3, ScaleMode::F32);
        let mut a = vec![1.0f32, 0.3, 0.11];
        let mut b = vec![10.0f32, -7.0, 3.3];
        quantize_activation_row(&mut a, ScaleMode::F32);
        quantize_activation_row(&mut b, ScaleMode::F32);
        assert_eq!(h_t, vec![a[0], b[0], a[1], b[1], a[2], b[2]]);
        // amax 10 -> scale 10/448; 3.3 / scale is not a code: it moved.
        assert_ne!(h_t[5], 3.3);
    }
}

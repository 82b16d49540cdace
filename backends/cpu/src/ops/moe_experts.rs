//! `moe_experts` on the CPU, structured like a fused MoE kernel: check ids, permute
//! (group routed pairs by expert and gather their token rows), grouped SwiGLU GEMMs
//! ([`ffn`]), then a deterministic weighted combine (each token sums its slots in order).
//! Slots with id -1 or weight 0 are never routed, so they contribute nothing even when
//! their expert's output is not finite. Contract v2: FP8 weights are dequantized tile by
//! tile as the GEMMs read them ([`fp8`]); `fp8_block128` quantizes x and the activations
//! before the GEMM that reads them; `swiglu_limit` clamps the gate and up values. Shared
//! experts run through the same GEMMs as S more experts that every token is routed to
//! ([`Permutation::every_token`]); the combine adds them with weight 1 after the routed
//! slots, and `y` is rounded to the run dtype once. Every buffer whose size no input
//! bounds (rows x H, rows x I) is sized with checked arithmetic and allocated fallibly.

mod ffn;
pub mod fp8;
mod panelled;
mod permute;

use crate::pooled::{self, Pooled};
use crate::storage::{
    check_inputs, f32_slice, float_mut, float_slice, i32_slice, CpuStorage, FloatSlice,
    FloatSliceMut,
};
use ffn::ExpertWeights;
use fp8::Weights;
use half::{bf16, f16};
use moemla_core::calls::{MoeExpertsCall, SharedExperts};
use moemla_core::indices::check_topk_ids;
use moemla_core::{ActivationQuant, Result};
use panelled::PanelExperts;
use permute::Permutation;
use rayon::prelude::*;

const CALL: &str = "moe_experts";

/// Runs the experts; returns `y` [T, H] in the run dtype.
pub fn run(backend: &str, call: &MoeExpertsCall<'_>) -> Result<CpuStorage> {
    // Weights in panels are checked where `run_into` resolves them (`PanelExperts::of`),
    // before its buffers sized by rows are allocated.
    fn stored(t: &moemla_core::DeviceTensor) -> Option<&moemla_core::DeviceTensor> {
        (!crate::panels::PanelWeights::holds(t)).then_some(t)
    }
    check_inputs(
        backend,
        CALL,
        &[
            ("x", Some(call.x)),
            ("w13", stored(call.w13)),
            ("w2", stored(call.w2)),
            ("topk_ids", Some(call.topk_ids)),
            ("topk_weights", Some(call.topk_weights)),
            ("w13_scale", call.fp8_scales.map(|s| s.w13_scale)),
            ("w2_scale", call.fp8_scales.map(|s| s.w2_scale)),
            ("shared_w13", call.shared.and_then(|s| stored(s.w13))),
            ("shared_w2", call.shared.and_then(|s| stored(s.w2))),
        ],
    )?;
    let mut y = CpuStorage::zeros(call.dtype, &[call.tokens, call.hidden].into())?;
    run_into(
        backend,
        call,
        float_mut(y.as_mut_slice(), backend, CALL, "y")?,
    )?;
    Ok(y)
}

/// Runs the experts, writing `y` [T, H] (run dtype) in place (every element overwritten).
/// On an index error nothing is written.
pub fn run_into(backend: &str, call: &MoeExpertsCall<'_>, y: FloatSliceMut<'_>) -> Result<()> {
    let ids = i32_slice(call.topk_ids, backend, CALL, "topk_ids")?;
    check_topk_ids(call, ids)?;
    let weights = f32_slice(call.topk_weights, backend, CALL, "topk_weights")?;
    let x = float_slice(call.x, backend, CALL, "x")?;
    let limit = call.params.swiglu_limit.map(|c| c as f32);
    let routed = PanelExperts::of(
        backend,
        ("w13", call.w13),
        ("w2", call.w2),
        (call.hidden, call.inter),
    )?;
    let shared_panels = match call.shared {
        Some(s) => PanelExperts::of(
            backend,
            ("shared_w13", s.w13),
            ("shared_w2", s.w2),
            (call.hidden, s.inter),
        )?,
        None => None,
    };
    let perm = Permutation::new(ids, weights, call.experts, call.top_k)?;
    let y_rows = match routed {
        Some(p) => Outputs::Panels(p.run(&perm, f32_x(x)?, limit)?),
        None => Outputs::Rows(stored_rows(backend, call, x, &perm, limit)?),
    };
    let shared = match call.shared {
        Some(s) => Some(shared_experts(backend, call, s, x, limit, shared_panels)?),
        None => None,
    };
    let combine = Combine {
        perm: &perm,
        y_rows: &y_rows,
        weights,
        shared: shared.as_ref(),
        top_k: call.top_k,
        hidden: call.hidden,
    };
    match y {
        FloatSliceMut::F32(y) => combine.write(y, |out, acc| out.copy_from_slice(acc)),
        FloatSliceMut::F16(y) => combine.write(y, |out, acc| {
            out.iter_mut()
                .zip(acc)
                .for_each(|(o, &v)| *o = f16::from_f32(v))
        }),
        FloatSliceMut::BF16(y) => combine.write(y, |out, acc| {
            out.iter_mut()
                .zip(acc)
                .for_each(|(o, &v)| *o = bf16::from_f32(v))
        }),
    }
    Ok(())
}

/// `x` as f32: weights in panels are F32, and validation makes the weights' dtype the run
/// dtype (the error guards a direct call of the backend method).
fn f32_x(x: FloatSlice<'_>) -> Result<&[f32]> {
    match x {
        FloatSlice::F32(x) => Ok(x),
        _ => Err(moemla_core::Error::Device {
            backend: crate::NAME.to_string(),
            call: CALL.to_string(),
            message: "F32 weights in panels beside tokens of another dtype".to_string(),
        }),
    }
}

/// The routed experts' down projections of every permuted row as rows `[rows, H]`, from
/// weights as stored (run dtype, or FP8 with block scales).
fn stored_rows(
    backend: &str,
    call: &MoeExpertsCall<'_>,
    x: FloatSlice<'_>,
    perm: &Permutation,
    limit: Option<f32>,
) -> Result<Pooled> {
    let scales = call.fp8_scales;
    let w = ExpertWeights {
        w13: Weights::of(
            backend,
            CALL,
            ("w13", call.w13),
            scales.map(|s| ("w13_scale", s.w13_scale)),
        )?,
        w2: Weights::of(
            backend,
            CALL,
            ("w2", call.w2),
            scales.map(|s| ("w2_scale", s.w2_scale)),
        )?,
        hidden: call.hidden,
        inter: call.inter,
    };
    let p = call.params;
    let quant =
        (p.activation_quant == ActivationQuant::Fp8Block128).then(|| p.activation_scale.mode());
    let xg = match quant {
        // Each token quantized once, before its k copies are gathered.
        Some(mode) => {
            let what = "cpu moe_experts quantized x";
            let mut xq = upcast_rows(x, (call.tokens, call.hidden), |t| t, what)?;
            fp8::quantize_rows(&mut xq, call.hidden, mode);
            gather_rows(FloatSlice::F32(&xq), perm, call.hidden)?
        }
        None => gather_rows(x, perm, call.hidden)?,
    };
    let native = ffn::bf16_native(perm, w);
    let mut h_t = ffn::gate_up(perm, &xg, w, limit, native)?;
    if let Some(mode) = quant {
        fp8::quantize_columns(perm, &mut h_t, call.inter, mode);
    } else if rounds_before_fp8_down(x, w.w2, fp8::bf16_dot()) {
        round_to_bf16(&mut h_t);
    }
    let y_t = ffn::down(perm, &h_t, w, native)?;
    drop(h_t);
    // The gathered rows are no longer needed, and their buffer has the outputs' shape.
    let mut y_rows = xg;
    perm.rows_from_columns(&y_t, call.hidden, &mut y_rows, |v| v);
    Ok(y_rows)
}

/// The shared experts' outputs: S dense experts that every token goes through, run as
/// routed experts of a permutation that sends each token to each of them. Their weights
/// are the run dtype and the activations unquantized (validation refuses shared experts
/// beside FP8 routed weights, which `fp8_block128` needs); the clamp applies.
fn shared_experts(
    backend: &str,
    call: &MoeExpertsCall<'_>,
    s: SharedExperts<'_>,
    x: FloatSlice<'_>,
    limit: Option<f32>,
    panels: Option<PanelExperts<'_>>,
) -> Result<Shared> {
    let perm = Permutation::every_token(call.tokens, s.count)?;
    if let Some(p) = panels {
        let y = Outputs::Panels(p.run(&perm, f32_x(x)?, limit)?);
        return Ok(Shared { perm, y_rows: y });
    }
    let w = ExpertWeights {
        w13: Weights::of(backend, CALL, ("shared_w13", s.w13), None)?,
        w2: Weights::of(backend, CALL, ("shared_w2", s.w2), None)?,
        hidden: call.hidden,
        inter: s.inter,
    };
    let xg = gather_rows(x, &perm, call.hidden)?;
    let native = ffn::bf16_native(&perm, w);
    let h_t = ffn::gate_up(&perm, &xg, w, limit, native)?;
    drop(xg);
    let y_t = ffn::down(&perm, &h_t, w, native)?;
    drop(h_t);
    let mut y_rows = pooled::zeroed(&[perm.rows(), call.hidden], "cpu moe_experts shared rows")?;
    perm.rows_from_columns(&y_t, call.hidden, &mut y_rows, |v| v);
    Ok(Shared {
        perm,
        y_rows: Outputs::Rows(y_rows),
    })
}

/// Each permuted row's down projection, `[rows, H]` as rows or in column panels
/// ([`panelled`]).
enum Outputs {
    /// Row after row.
    Rows(Pooled),
    /// Column panels of width H.
    Panels(Pooled),
}

impl Outputs {
    /// `acc += scale(row)` for permuted row `row` of `perm` (`acc` H long).
    fn add(&self, perm: &Permutation, row: usize, acc: &mut [f32], scale: impl Fn(f32) -> f32) {
        let hidden = acc.len();
        match self {
            Outputs::Rows(y) => add_row(acc, &y[row * hidden..][..hidden], scale),
            Outputs::Panels(y) => panelled::add_row(y, perm, (row, hidden), acc, scale),
        }
    }
}

/// The shared experts' down projections and the permutation that produced them.
struct Shared {
    /// Every token routed to each shared expert (slot `s` of token `t` = shared expert `s`).
    perm: Permutation,
    /// Each shared expert's down projections, `[S * T, H]` (row `s * T + t`).
    y_rows: Outputs,
}

/// Whether the activations are rounded to bf16 before the down projection: in a BF16 run
/// with FP8 `w2` on a CPU where FP8 weights can meet activations on the native bf16 dot
/// (`fp8_bf16_dot`: [`fp8::bf16_dot`]), as the bf16 weights' path keeps them in bf16
/// (`ffn::down`); the FP8 codes are exact bf16 values. Decided by the CPU, not by the
/// path a call takes (prefill on Intel takes the f32 FMA or dequantized tiles), so that
/// whether a token's activations are rounded does not depend on its batch.
fn rounds_before_fp8_down(x: FloatSlice<'_>, w2: Weights<'_>, fp8_bf16_dot: bool) -> bool {
    fp8_bf16_dot && matches!((x, w2), (FloatSlice::BF16(_), Weights::Fp8(_)))
}

/// Rounds every value of `v` to bf16 (nearest even), in parallel.
fn round_to_bf16(v: &mut [f32]) {
    v.par_chunks_mut(ROUND_CHUNK)
        .for_each(|c| c.iter_mut().for_each(|x| *x = bf16::from_f32(*x).to_f32()));
}

/// Values per task of [`round_to_bf16`].
const ROUND_CHUNK: usize = 1 << 14;

/// The permuted rows of `x`, upcast to f32: [rows, H].
fn gather_rows(x: FloatSlice<'_>, perm: &Permutation, hidden: usize) -> Result<Pooled> {
    let what = "cpu moe_experts gathered rows";
    upcast_rows(x, (perm.rows(), hidden), |r| perm.tokens[r], what)
}

/// `rows` rows of `hidden` f32 (a pooled buffer named `what` for its errors), row `r` the
/// upcast of token `token(r)` of `x`, in parallel.
fn upcast_rows(
    x: FloatSlice<'_>,
    (rows, hidden): (usize, usize),
    token: impl Fn(usize) -> usize + Sync,
    what: &str,
) -> Result<Pooled> {
    let mut out = pooled::zeroed(&[rows, hidden], what)?;
    out.par_chunks_mut(hidden.max(1))
        .enumerate()
        .for_each(|(r, row)| x.read_f32(token(r) * hidden, row));
    Ok(out)
}

/// The weighted combine of the experts' outputs into `y`.
struct Combine<'a> {
    /// The routed rows.
    perm: &'a Permutation,
    /// Each permuted row's down projection, `[rows, H]`.
    y_rows: &'a Outputs,
    /// `topk_weights` [T, top_k].
    weights: &'a [f32],
    /// The shared experts' outputs, if any (weight 1 each).
    shared: Option<&'a Shared>,
    top_k: usize,
    hidden: usize,
}

impl Combine<'_> {
    /// `y[t] = sum_j w[t, j] * down[row_of(t, j)]` over the routed slots, then `+
    /// shared_s(x[t])` for each shared expert `s`, summed in f32 in that order
    /// (deterministic), each row then stored into `y` [T, H] by `store`.
    fn write<T: Send>(&self, y: &mut [T], store: impl Fn(&mut [T], &[f32]) + Sync) {
        let (perm, hidden, top_k) = (self.perm, self.hidden, self.top_k);
        y.par_chunks_mut(hidden).enumerate().for_each_init(
            || vec![0.0f32; hidden],
            |acc, (t, out)| {
                acc.fill(0.0);
                for j in 0..top_k {
                    if let Some(row) = perm.row_of[t * top_k + j] {
                        let w = self.weights[t * top_k + j];
                        self.y_rows.add(perm, row, acc, |v| w * v);
                    }
                }
                if let Some(sh) = self.shared {
                    let count = sh.perm.offsets.len() - 1;
                    for row in sh.perm.row_of[t * count..(t + 1) * count].iter().flatten() {
                        sh.y_rows.add(&sh.perm, *row, acc, |v| v);
                    }
                }
                store(out, acc);
            },
        );
    }
}

/// `acc += scale(row)`, value by value (`row` as long as `acc`).
fn add_row(acc: &mut [f32], row: &[f32], scale: impl Fn(f32) -> f32) {
    for (a, &v) in acc.iter_mut().zip(row) {
        *a += scale(v);
    }
}

#[cfg(test)]
mod tests;

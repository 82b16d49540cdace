//! `moe_experts` v2: the gate/up and down GEMMs for FP8 block-scaled weights (w8a16),
//! `fp8_block128` activation quantization (w8a8) and the SwiGLU clamp
//! (kernels/opencl/moe_experts_v2.cl). The plan and the combine are v1's
//! ([`super::moe_experts`]); a call with none of these features runs v1's GEMMs.

use crate::device::{Arg, ClDevice};
use crate::ops::{byte_len, int, int_product};
use crate::programs_v2::{program, Kernels};
use crate::ClBuffer;
use moemla_core::calls::MoeExpertsCall;
use moemla_core::{ActivationQuant, ActivationScale, DType, Op, Result};

/// Rows per GEMM block and columns per GEMM tile (`TILE` in the kernel source).
const TILE: usize = 16;
/// Work-group of the elementwise kernels.
const LS: usize = 64;

/// Whether `call` needs the v2 GEMMs (FP8 weights, activation quantization or a clamp).
pub fn needed(call: &MoeExpertsCall<'_>) -> bool {
    let p = call.params;
    call.fp8_scales.is_some()
        || p.activation_quant != ActivationQuant::None
        || p.swiglu_limit.is_some()
}

/// The plan's buffers the GEMMs read and write.
pub struct Plan<'a> {
    /// The pair of each GEMM row (-1: padding), `[rows]`.
    pub row_pair: &'a ClBuffer,
    /// The expert of each TILE-row block (-1: unused), `[rows / TILE]`.
    pub block_expert: &'a ClBuffer,
    /// The SwiGLU activations, f32 `[rows, I]`.
    pub act: &'a ClBuffer,
    /// The down projections, f32 `[rows, H]`.
    pub down: &'a ClBuffer,
    /// GEMM rows (whole TILE-row blocks).
    pub rows: usize,
}

/// Enqueues both GEMMs of `call` over `plan` (activations quantized first when asked).
pub fn gemms(
    dev: &ClDevice,
    backend: &str,
    call: &MoeExpertsCall<'_>,
    plan: &Plan<'_>,
) -> Result<()> {
    let op = Op::MoeExperts;
    let (t, h, i, k) = (call.tokens, call.hidden, call.inter, call.top_k);
    let p = call.params;
    let x = call.x.buffer::<ClBuffer>(backend, "moe_experts", "x")?;
    let w13 = call.w13.buffer::<ClBuffer>(backend, "moe_experts", "w13")?;
    let w2 = call.w2.buffer::<ClBuffer>(backend, "moe_experts", "w2")?;
    let (fp8, s13, s2) = match call.fp8_scales {
        Some(s) => (
            1,
            s.w13_scale
                .buffer::<ClBuffer>(backend, "moe_experts", "w13_scale")?,
            s.w2_scale
                .buffer::<ClBuffer>(backend, "moe_experts", "w2_scale")?,
        ),
        None => (0, w13, w2), // never read as scales when fp8 = 0
    };
    let quant = (p.activation_quant == ActivationQuant::Fp8Block128)
        .then_some((p.activation_scale == ActivationScale::Ue8m0) as i32);
    let (h32, i32_, k32) = (int(op, "H", h)?, int(op, "I", i)?, int(op, "k", k)?);
    let n_x = int_product(op, "T * H", &[t, h])?;
    let program = program(dev, Kernels::MoeExpertsV2, call.dtype)?;
    let round = |n: usize| n.div_ceil(LS) * LS;

    let xf = dev.alloc_workspace("moe_experts f32 x", byte_len(&[t, h], DType::F32)?)?;
    let widen = [Arg::Buf(x), Arg::Buf(&xf), Arg::I32(n_x)];
    dev.launch(
        &program,
        "experts_x_f32",
        &widen,
        &[round(n_x as usize)],
        &[LS],
    )?;
    let quantize = |v: &ClBuffer, rows: usize, n: usize, ue8m0: i32| -> Result<()> {
        let groups = int_product(op, "rows * ceil(n / 128)", &[rows, n.div_ceil(128)])?;
        let args = [
            Arg::Buf(v),
            Arg::I32(int(op, "rows", rows)?),
            Arg::I32(int(op, "n", n)?),
            Arg::I32(ue8m0),
        ];
        dev.launch(
            &program,
            "experts_quant",
            &args,
            &[round(groups as usize)],
            &[LS],
        )
    };
    if let Some(ue8m0) = quant {
        quantize(&xf, t, h, ue8m0)?;
    }
    let limit = p.swiglu_limit.map_or(0.0, |c| c as f32);
    let gate_up = [
        Arg::Buf(&xf),
        Arg::Buf(w13),
        Arg::Buf(s13),
        Arg::I32(fp8),
        Arg::Buf(plan.row_pair),
        Arg::Buf(plan.block_expert),
        Arg::Buf(plan.act),
        Arg::I32(h32),
        Arg::I32(i32_),
        Arg::I32(k32),
        Arg::I32(p.swiglu_limit.is_some() as i32),
        Arg::F32(limit),
    ];
    let tiles = |n: usize| n.div_ceil(TILE) * TILE;
    dev.launch(
        &program,
        "experts_gate_up_v2",
        &gate_up,
        &[tiles(i), plan.rows],
        &[TILE, TILE],
    )?;
    if let Some(ue8m0) = quant {
        quantize(plan.act, plan.rows, i, ue8m0)?;
    }
    let down = [
        Arg::Buf(plan.act),
        Arg::Buf(w2),
        Arg::Buf(s2),
        Arg::I32(fp8),
        Arg::Buf(plan.block_expert),
        Arg::Buf(plan.down),
        Arg::I32(h32),
        Arg::I32(i32_),
    ];
    dev.launch(
        &program,
        "experts_down_v2",
        &down,
        &[tiles(h), plan.rows],
        &[TILE, TILE],
    )
}

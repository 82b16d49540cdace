//! `moe_experts`: align, gate-up + SwiGLU, down, combine (kernels/README.md,
//! moe_experts.cu), with `topk_ids` checked on the device into one error flag; contract
//! v2: FP8 weights (w8a16), `fp8_block128` activations (w8a8: x and `act` quantized by
//! `moemla_moe_quant_*` before their GEMMs), the SwiGLU clamp and dense shared experts
//! (every token through each, on the run-dtype GEMM kernels, added in the combine).

use super::{at, flag_check, GpuRunner};
use crate::args::Arg;
use crate::device::{GpuBuffer, GpuDevice};
use crate::module::Module;
use moemla_core::calls::MoeExpertsCall;
use moemla_core::{ActivationQuant, ActivationScale, DeviceTensor, Op, Result};
use moemla_kernel_plan::experts::{self, Precision, SharedSizes};

const CALL: &str = "moe_experts";

/// Enqueues the fused experts into `y` [T, H] in the run dtype (the caller's or a fresh
/// tensor). The device is current.
pub(super) fn run<D: GpuDevice>(
    g: &GpuRunner<D>,
    call: &MoeExpertsCall<'_>,
    y: &DeviceTensor,
) -> Result<()> {
    let op = Op::MoeExperts;
    let y = g.out_buffer(y, CALL, "y")?;
    let x = g.buffer(call.x, CALL, "x")?;
    let w13 = g.buffer(call.w13, CALL, "w13")?;
    let w2 = g.buffer(call.w2, CALL, "w2")?;
    let ids = g.buffer(call.topk_ids, CALL, "topk_ids")?;
    let weights = g.buffer(call.topk_weights, CALL, "topk_weights")?;
    let scales = call
        .fp8_scales
        .map(|s| {
            Ok::<_, moemla_core::Error>((
                g.buffer(s.w13_scale, CALL, "w13_scale")?,
                g.buffer(s.w2_scale, CALL, "w2_scale")?,
            ))
        })
        .transpose()?;
    let shared = call
        .shared
        .map(|s| {
            Ok::<_, moemla_core::Error>((
                g.buffer(s.w13, CALL, "shared_w13")?,
                g.buffer(s.w2, CALL, "shared_w2")?,
            ))
        })
        .transpose()?;
    let p = call.params;
    let precision = match (scales.is_some(), p.activation_quant) {
        (false, _) => Precision::Native,
        (true, ActivationQuant::None) => Precision::W8A16,
        (true, ActivationQuant::Fp8Block128) => Precision::W8A8,
    };
    // No clamp: +inf (the kernels' selects then keep g and u, NaN included).
    let limit = Arg::F32(p.swiglu_limit.map_or(f32::INFINITY, |c| c as f32));
    let ue8m0 = Arg::I32(i32::from(p.activation_scale == ActivationScale::Ue8m0));
    let limits = g.dev.limits(op)?;
    let plan = experts::plan_with_shared(
        call.tokens,
        call.hidden,
        call.inter,
        call.experts,
        call.top_k,
        call.dtype,
        precision,
        call.shared.map(|s| SharedSizes {
            count: s.count,
            inter: s.inter,
        }),
        &limits,
    )
    .map_err(|e| g.plan_error(e))?;
    let (h, i, k) = (
        g.int(op, "H", call.hidden)?,
        g.int(op, "I", call.inter)?,
        g.int(op, "k", call.top_k)?,
    );

    let mut stream = g.lock();
    let ws = stream.workspace(&g.dev, plan.workspace.bytes)?;
    let flag = stream.flags.reserve(
        &g.dev,
        op,
        vec![flag_check(
            "topk_ids",
            call.topk_ids,
            format!("[-1, {})", call.experts),
        )],
    )?[0];
    let w = plan.workspace;
    let [align, gate_up, down, combine] = &plan.launches;
    let m = Module::MoeExperts;
    g.launch(
        m,
        align,
        &[
            Arg::Ptr(ids.address()),
            Arg::Ptr(weights.address()),
            g.int(op, "T * k", plan.slots)?,
            g.int(op, "E", call.experts)?,
            g.int(op, "row tiles", plan.max_tiles)?,
            at(ws, w.sorted_rows),
            at(ws, w.slot_pos),
            at(ws, w.tile_expert),
            at(ws, w.meta),
            Arg::Ptr(flag),
        ],
    )?;
    let x_at = Arg::Ptr(x.address());
    let (w13_at, w2_at) = (Arg::Ptr(w13.address()), Arg::Ptr(w2.address()));
    let rows_args = [at(ws, w.sorted_rows), at(ws, w.tile_expert), at(ws, w.meta)];
    // gate/up's A and B operands, then down's (kernels/README.md, moe_experts.cu).
    let (gate_up_ab, down_ab): (Vec<Arg>, Vec<Arg>) = match (precision, scales) {
        (Precision::W8A8, Some((s13, s2))) => (
            vec![
                at(ws, w.x_codes),
                at(ws, w.x_scales),
                w13_at,
                Arg::Ptr(s13.address()),
            ],
            vec![
                at(ws, w.act_codes),
                at(ws, w.act_scales),
                w2_at,
                Arg::Ptr(s2.address()),
            ],
        ),
        (_, Some((s13, s2))) => (
            vec![x_at, w13_at, Arg::Ptr(s13.address())],
            vec![at(ws, w.act), w2_at, Arg::Ptr(s2.address())],
        ),
        (_, None) => (vec![x_at, w13_at], vec![at(ws, w.act), w2_at]),
    };
    // W8A8 plans (only they) quantize x first and `act` between the GEMMs.
    if let Some(qx) = &plan.quant_x {
        g.launch(
            m,
            qx,
            &[
                x_at,
                h,
                at(ws, w.meta),
                Arg::I32(0),
                at(ws, w.x_codes),
                at(ws, w.x_scales),
                ue8m0,
            ],
        )?;
    }
    let mut args = gate_up_ab;
    args.extend(rows_args);
    args.extend([at(ws, w.act), h, i, k, limit]);
    g.launch(m, gate_up, &args)?;
    if let Some(qa) = &plan.quant_act {
        g.launch(
            m,
            qa,
            &[
                at(ws, w.act),
                i,
                at(ws, w.meta),
                Arg::I32(1),
                at(ws, w.act_codes),
                at(ws, w.act_scales),
                ue8m0,
            ],
        )?;
    }
    let mut args = down_ab;
    args.extend(rows_args);
    args.extend([at(ws, w.yslot), h, i]);
    g.launch(m, down, &args)?;
    let mut combine_args = vec![
        at(ws, w.yslot),
        at(ws, w.slot_pos),
        Arg::Ptr(weights.address()),
    ];
    // Shared experts: every token's row in each of S segments, the run-dtype gate/up and
    // down kernels over them (top_k 1: a row holds its token), then the shared combine.
    if let (Some(sp), Some((s13, s2)), Some(sh)) = (&plan.shared, shared, call.shared) {
        let [rows, s_gate_up, s_down] = &sp.launches;
        let is = g.int(op, "Is", sh.inter)?;
        let seg_rows = g.int(op, "T padded rows", sp.seg_tiles * experts::TILE_M)?;
        let s_rows = [
            at(ws, w.shared_rows),
            at(ws, w.shared_tile_expert),
            at(ws, w.shared_meta),
        ];
        g.launch(
            m,
            rows,
            &[
                g.int(op, "T", call.tokens)?,
                g.int(op, "T / 64 tiles", sp.seg_tiles)?,
                at(ws, w.shared_rows),
                at(ws, w.shared_tile_expert),
                at(ws, w.shared_meta),
            ],
        )?;
        let mut args = vec![x_at, Arg::Ptr(s13.address())];
        args.extend(s_rows);
        args.extend([at(ws, w.shared_act), h, is, Arg::I32(1), limit]);
        g.launch(m, s_gate_up, &args)?;
        let mut args = vec![at(ws, w.shared_act), Arg::Ptr(s2.address())];
        args.extend(s_rows);
        args.extend([at(ws, w.yshared), h, is]);
        g.launch(m, s_down, &args)?;
        combine_args.extend([at(ws, w.yshared), g.int(op, "S", sh.count)?, seg_rows]);
    }
    combine_args.extend([Arg::Ptr(y.address()), h, k]);
    g.launch(m, combine, &combine_args)?;
    drop(stream);
    Ok(())
}

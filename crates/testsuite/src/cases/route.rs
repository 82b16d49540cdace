//! `moe_route` against the reference: DeepSeek-V3, V2, V2-Lite and small configurations.

use crate::compare::{check_route, ensure, Tol};
use crate::harness::Ctx;
use crate::reference;
use crate::rng::Rng;
use moemla_core::{ops, DType, GroupSelect, HostTensor, Op, RouteParams, ScoreFunc};

/// Smallest accepted decision margin (relative to the row's score magnitude) of generated
/// inputs: f32 routing is accurate to ~1e-7, so no backend can legitimately flip a choice.
const MIN_MARGIN: f64 = 1e-4;

/// DeepSeek-V3: E 256, top-8, 8 groups keep 4, sigmoid + bias, top-2 sum, renormalised, 2.5.
pub fn v3(ctx: &Ctx<'_>, dtype: DType) {
    route_case(
        ctx,
        dtype,
        33,
        256,
        &RouteParams::deepseek_v3(),
        true,
        0x5e3,
    );
}

/// DeepSeek-V2: E 160, top-6, 8 groups keep 3, softmax, max, no renormalisation, 16.
pub fn v2(ctx: &Ctx<'_>, dtype: DType) {
    route_case(
        ctx,
        dtype,
        33,
        160,
        &RouteParams::deepseek_v2(),
        false,
        0x5e2,
    );
}

/// DeepSeek-V2-Lite: E 64, top-6, no groups, softmax, no renormalisation.
pub fn v2_lite(ctx: &Ctx<'_>, dtype: DType) {
    route_case(
        ctx,
        dtype,
        33,
        64,
        &RouteParams::deepseek_v2_lite(),
        false,
        0x5e1,
    );
}

/// Small: E 8 in 4 groups keep 2, top-3, sigmoid + bias, max group score, renormalised.
pub fn small_groups(ctx: &Ctx<'_>, dtype: DType) {
    let p = RouteParams {
        score_func: ScoreFunc::Sigmoid,
        top_k: 3,
        n_group: 4,
        topk_group: 2,
        group_select: GroupSelect::Max,
        renormalize: true,
        routed_scaling_factor: 1.5,
    };
    route_case(ctx, dtype, 5, 8, &p, true, 0x51);
}

/// top_k = E (every expert chosen), including the single-expert case E = 1.
pub fn top_k_equals_experts(ctx: &Ctx<'_>, dtype: DType) {
    for experts in [4, 1] {
        let p = RouteParams {
            score_func: ScoreFunc::Softmax,
            top_k: experts,
            n_group: 1,
            topk_group: 1,
            group_select: GroupSelect::Top2Sum,
            renormalize: true,
            routed_scaling_factor: 3.0,
        };
        route_case(ctx, dtype, 3, experts, &p, false, 0x4e + experts as u64);
    }
}

/// Generates logits without near ties (row by row, after rounding to `dtype`), routes them
/// on the backend and checks ids (as sets) and weights (by id) against the reference.
fn route_case(
    ctx: &Ctx<'_>,
    dtype: DType,
    tokens: usize,
    experts: usize,
    p: &RouteParams,
    with_bias: bool,
    seed: u64,
) {
    if !ctx.supports(Op::MoeRoute, dtype) {
        return;
    }
    let mut rng = Rng::new(seed);
    let bias = rng.vec(experts, -0.5, 0.5);
    let (bias_d, bias_x) = ctx.upload_as(&[experts], &bias, DType::F32);
    let bias_x = with_bias.then_some(bias_x.as_slice());
    let mut logits = Vec::with_capacity(tokens * experts);
    for _ in 0..tokens {
        logits.extend(well_separated_row(&mut rng, dtype, bias_x, experts, p));
    }
    let (logits_d, logits_x) = ctx.upload_as(&[tokens, experts], &logits, dtype);
    let r = reference::moe_route(&logits_x, bias_x, tokens, experts, p);
    let out = ops::moe_route(ctx.backend, &logits_d, with_bias.then_some(&bias_d), p)
        .unwrap_or_else(|e| panic!("moe_route {dtype} E={experts}: {e}"));
    let ids = ctx.download_i32(&out.topk_ids);
    let w = ctx.download_f32(&out.topk_weights);
    let result = check_route(&ids, &w, &r, Tol::of(DType::F32));
    ensure(result.map_err(|m| format!("moe_route {dtype} T={tokens} E={experts} {p:?}: {m}")));
}

/// One row of logits whose routing decisions (after rounding to `dtype`) all have a margin
/// of at least [`MIN_MARGIN`].
fn well_separated_row(
    rng: &mut Rng,
    dtype: DType,
    bias: Option<&[f64]>,
    experts: usize,
    p: &RouteParams,
) -> Vec<f32> {
    for _attempt in 0..1000 {
        let row = rng.vec(experts, -4.0, 4.0);
        let rounded = HostTensor::from_f32_as([experts], &row, dtype)
            .and_then(|t| t.to_f32_vec())
            .expect("float row");
        let exact: Vec<f64> = rounded.iter().map(|&v| v as f64).collect();
        if reference::moe_route(&exact, bias, 1, experts, p).margin[0] >= MIN_MARGIN {
            return row;
        }
    }
    panic!("no routing row without near ties found (E={experts}, {p:?})");
}

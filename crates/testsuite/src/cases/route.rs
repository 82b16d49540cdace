//! `moe_route` against the reference: DeepSeek-V3, V2, V2-Lite and small configurations,
//! and the contract's rules for non-finite scores (all-zero rows renormalised, NaN ranking).

use crate::compare::{check_route, check_route_ids, ensure, Tol};
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

/// Sigmoid scores that underflow to exactly 0 (every logit -1000, F32) renormalised: the
/// denominator max(sum, 1e-20) gives weights of exactly 0 (0 / 0 would be NaN); the ids
/// are still valid and distinct. Ungrouped and grouped, no bias.
pub fn renorm_all_zero_scores(ctx: &Ctx<'_>) {
    if !ctx.supports(Op::MoeRoute, DType::F32) {
        return;
    }
    let (tokens, experts, top_k) = (3, 16, 4);
    for (n_group, topk_group) in [(1, 1), (4, 2)] {
        let p = RouteParams {
            score_func: ScoreFunc::Sigmoid,
            top_k,
            n_group,
            topk_group,
            group_select: GroupSelect::Top2Sum,
            renormalize: true,
            routed_scaling_factor: 2.5,
        };
        let logits = vec![-1000.0f32; tokens * experts];
        let logits_d = ctx.upload(&HostTensor::from_slice([tokens, experts], &logits).unwrap());
        let out = ops::moe_route(ctx.backend, &logits_d, None, &p)
            .unwrap_or_else(|e| panic!("moe_route all logits -1000, {p:?}: {e}"));
        let ids = ctx.download_i32(&out.topk_ids);
        let w = ctx.download_f32(&out.topk_weights);
        assert!(
            w.iter().all(|&v| v == 0.0),
            "{p:?}: weights {w:?}, expected all exactly 0"
        );
        for (t, row) in ids.chunks(top_k).enumerate() {
            let mut distinct = row.to_vec();
            distinct.sort_unstable();
            distinct.dedup();
            assert!(
                distinct.len() == top_k && row.iter().all(|&e| e >= 0 && (e as usize) < experts),
                "{p:?}: token {t} ids {row:?}, expected {top_k} distinct ids in [0, {experts})"
            );
        }
    }
}

/// NaN selection scores rank as -inf everywhere (group scores and top-k): with NaN logits
/// (sigmoid) and NaN bias entries, the non-NaN experts are chosen first and the ids are the
/// reference's set, ungrouped and grouped (max, top2_sum). Past the non-NaN experts, the
/// NaN ones follow, lower index first. Weights are compared where the reference's are
/// finite (a NaN expert's weight is whatever the arithmetic gives).
pub fn nan_scores_rank_last(ctx: &Ctx<'_>) {
    if !ctx.supports(Op::MoeRoute, DType::F32) {
        return;
    }
    let (tokens, experts) = (4, 32);
    let nan_bias = [3, 17, 18];
    // (n_group, topk_group, group_select, top_k); 27 or 28 of the 32 experts are not NaN.
    let configs = [
        (1, 1, GroupSelect::Max, 8),
        (4, 2, GroupSelect::Max, 6),
        (8, 4, GroupSelect::Top2Sum, 8),
        (1, 1, GroupSelect::Max, 30),
    ];
    for (n, &(n_group, topk_group, group_select, top_k)) in configs.iter().enumerate() {
        let p = RouteParams {
            score_func: ScoreFunc::Sigmoid,
            top_k,
            n_group,
            topk_group,
            group_select,
            renormalize: true,
            routed_scaling_factor: 2.5,
        };
        let mut rng = Rng::new(0x7a40 + n as u64);
        let mut bias = rng.vec(experts, -0.5, 0.5);
        nan_bias.iter().for_each(|&e| bias[e] = f32::NAN);
        let bias_x: Vec<f64> = bias.iter().map(|&v| v as f64).collect();
        let mut logits = Vec::with_capacity(tokens * experts);
        for t in 0..tokens {
            // NaN logits at two experts per token (one of them 3 for token 0: both NaN).
            let nan_logits = [(t * 5 + 3) % experts, (t * 11 + 7) % experts];
            logits.extend(nan_row(&mut rng, &bias_x, &nan_logits, &p));
        }
        let logits_x: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
        let r = reference::moe_route(&logits_x, Some(&bias_x), tokens, experts, &p);
        let logits_d = ctx.upload(&HostTensor::from_slice([tokens, experts], &logits).unwrap());
        let bias_d = ctx.upload(&HostTensor::from_slice([experts], &bias).unwrap());
        let out = ops::moe_route(ctx.backend, &logits_d, Some(&bias_d), &p)
            .unwrap_or_else(|e| panic!("moe_route with NaN scores, {p:?}: {e}"));
        let ids = ctx.download_i32(&out.topk_ids);
        let w = ctx.download_f32(&out.topk_weights);
        let what = |m: String| format!("moe_route NaN scores {p:?}: {m}");
        ensure(check_route_ids(&ids, &r).map_err(what));
        if r.weights.iter().flatten().all(|v| v.is_finite()) {
            ensure(check_route(&ids, &w, &r, Tol::of(DType::F32)).map_err(what));
        }
        if n_group == 1 {
            // Independently of the reference: as many non-NaN experts as fit come first.
            for (t, row) in ids.chunks(top_k).enumerate() {
                let is_nan = |e: i32| {
                    let e = e as usize;
                    logits[t * experts + e].is_nan() || bias[e].is_nan()
                };
                let finite = (0..experts as i32).filter(|&e| !is_nan(e)).count();
                let chosen = row.iter().filter(|&&e| !is_nan(e)).count();
                assert_eq!(
                    chosen,
                    top_k.min(finite),
                    "{p:?}: token {t} ids {row:?} leave out a non-NaN expert"
                );
            }
        }
    }
}

/// One row of logits with NaN at `nan_at`, otherwise in [-4, 4), whose decisions among the
/// non-NaN experts have a margin of at least [`MIN_MARGIN`]; a cut that falls among the NaN
/// experts (more slots than non-NaN candidates) is decided by index and accepted.
fn nan_row(rng: &mut Rng, bias: &[f64], nan_at: &[usize], p: &RouteParams) -> Vec<f32> {
    let experts = bias.len();
    for _attempt in 0..1000 {
        let mut row = rng.vec(experts, -4.0, 4.0);
        nan_at.iter().for_each(|&e| row[e] = f32::NAN);
        let exact: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        let r = reference::moe_route(&exact, Some(bias), 1, experts, p);
        let nan_count = (0..experts)
            .filter(|&e| exact[e].is_nan() || bias[e].is_nan())
            .count();
        if r.margin[0] >= MIN_MARGIN || (p.n_group == 1 && p.top_k > experts - nan_count) {
            return row;
        }
    }
    panic!("no routing row without near ties found ({p:?})");
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

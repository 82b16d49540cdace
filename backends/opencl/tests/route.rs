//! moe_route on the OpenCL device against a plain f64 reference.

mod common;

use common::{assert_close, backend, float_tensor, read_f32, read_i32, route_reference};
use moemla_core::{ops, DType, GroupSelect, RouteParams, ScoreFunc};

fn check(seed: u64, t: usize, e: usize, with_bias: bool, p: &RouteParams, dtype: DType) {
    let Some(be) = backend() else { return };
    let raw = common::uniform(seed, t * e, -4.0, 4.0);
    let (logits, logits64) = float_tensor(&*be, &[t, e], &raw, dtype);
    let bias_raw = common::uniform(seed + 1, e, -0.5, 0.5);
    let (bias, bias64) = float_tensor(&*be, &[e], &bias_raw, DType::F32);
    let bias_arg = with_bias.then_some(&bias);
    let out = ops::moe_route(&*be, &logits, bias_arg, p).unwrap();
    let ids = read_i32(&*be, &out.topk_ids);
    let weights = read_f32(&*be, &out.topk_weights);
    let want = route_reference(&logits64, with_bias.then_some(&bias64[..]), e, p);
    for (tok, row) in want.iter().enumerate() {
        let got_ids = &ids[tok * p.top_k..][..p.top_k];
        let mut got_sorted: Vec<i32> = got_ids.to_vec();
        got_sorted.sort();
        let mut want_sorted: Vec<i32> = row.iter().map(|&(i, _)| i as i32).collect();
        want_sorted.sort();
        assert_eq!(got_sorted, want_sorted, "token {tok}: ids");
        for (j, &id) in got_ids.iter().enumerate() {
            let w = row.iter().find(|&&(i, _)| i as i32 == id).unwrap().1;
            assert_close(
                &format!("token {tok} weight of {id}"),
                &[weights[tok * p.top_k + j]],
                &[w],
                1e-5,
            );
        }
    }
}

#[test]
fn deepseek_v3_style_sigmoid_bias_groups_top2_sum() {
    let p = RouteParams {
        top_k: 4,
        n_group: 4,
        topk_group: 2,
        ..RouteParams::deepseek_v3()
    };
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        check(11, 7, 32, true, &p, dtype);
    }
}

#[test]
fn deepseek_v2_style_softmax_max_groups_unnormalised() {
    let p = RouteParams {
        top_k: 3,
        n_group: 4,
        topk_group: 2,
        ..RouteParams::deepseek_v2()
    };
    check(21, 5, 24, false, &p, DType::F32);
}

#[test]
fn softmax_without_groups_over_many_experts() {
    check(
        31,
        3,
        300,
        false,
        &RouteParams::deepseek_v2_lite(),
        DType::BF16,
    );
}

#[test]
fn descending_order_and_ties_go_to_the_lower_id() {
    let Some(be) = backend() else { return };
    // Experts 1 and 3 tie for first, 0 and 2 tie for second.
    let (logits, _) = float_tensor(&*be, &[1, 4], &[0.5, 2.0, 0.5, 2.0], DType::F32);
    let p = RouteParams {
        top_k: 3,
        ..RouteParams::deepseek_v2_lite()
    };
    let out = ops::moe_route(&*be, &logits, None, &p).unwrap();
    assert_eq!(read_i32(&*be, &out.topk_ids), vec![1, 3, 0]);
}

#[test]
fn deepseek_v2_shape_with_fewer_experts_than_work_items() {
    // E = 160 runs in a 256-wide work-group: work-items past E must not touch local memory
    // (PoCL 3.1 once ran them through a strided loop; see FOR_STRIDED in common.cl).
    check(5, 33, 160, false, &RouteParams::deepseek_v2(), DType::F32);
}

#[test]
fn nan_logits_rank_last() {
    let Some(be) = backend() else { return };
    let (logits, _) = float_tensor(&*be, &[1, 4], &[f32::NAN, 1.0, 3.0, 2.0], DType::F32);
    let p = RouteParams {
        score_func: ScoreFunc::Sigmoid,
        top_k: 3,
        ..RouteParams::deepseek_v2_lite()
    };
    let out = ops::moe_route(&*be, &logits, None, &p).unwrap();
    assert_eq!(read_i32(&*be, &out.topk_ids), vec![2, 3, 1]);
}

/// Four groups of two (expert 2g, 2g + 1), sigmoid scores, renormalised; bias NaN on
/// experts 1, 2 and 3 (group 1 is all NaN). Returns (ids, weights) of one token.
fn route_with_nan_bias(p: &RouteParams) -> (Vec<i32>, Vec<f32>) {
    let be = backend().unwrap();
    let raw = [1.0, 0.5, 3.0, 2.5, 2.0, -1.0, 0.0, -2.0];
    let (logits, _) = float_tensor(&*be, &[1, 8], &raw, DType::F32);
    let nan = f32::NAN;
    let (bias, _) = float_tensor(
        &*be,
        &[8],
        &[0.0, nan, nan, nan, 0.0, 0.0, 0.0, 0.0],
        DType::F32,
    );
    let out = ops::moe_route(&*be, &logits, Some(&bias), p).unwrap();
    (
        read_i32(&*be, &out.topk_ids),
        read_f32(&*be, &out.topk_weights),
    )
}

#[test]
fn nan_bias_ranks_last_in_groups_and_experts() {
    if backend().is_none() {
        return;
    }
    let s = |x: f64| 1.0 / (1.0 + (-x).exp());
    let logit = [1.0, 0.5, 3.0, 2.5, 2.0, -1.0, 0.0, -2.0];
    let p = |top_k, topk_group, group_select| RouteParams {
        score_func: ScoreFunc::Sigmoid,
        top_k,
        n_group: 4,
        topk_group,
        group_select,
        renormalize: true,
        routed_scaling_factor: 1.0,
    };
    // (params, ids). Max: group 1 scores -inf (all NaN), group 0 s(1.0) (its NaN ignored):
    // keep groups 2 and 0; expert 1 (NaN) comes last, after the finite expert 5.
    // Top2Sum: group 0 scores s(1.0) + -inf = -inf as group 1 does; keep 2 and 3, then
    // (third group) the lower of the two -inf groups, group 0.
    for (p, want) in [
        (p(4, 2, GroupSelect::Max), vec![4, 0, 5, 1]),
        (p(4, 2, GroupSelect::Top2Sum), vec![4, 6, 5, 7]),
        (p(5, 3, GroupSelect::Top2Sum), vec![4, 0, 6, 5, 7]),
    ] {
        let (ids, weights) = route_with_nan_bias(&p);
        assert_eq!(ids, want, "{p:?}");
        // Weights are the unbiased scores (finite even for the NaN-biased expert 1).
        let total: f64 = want.iter().map(|&i| s(logit[i as usize])).sum();
        let w: Vec<f64> = want.iter().map(|&i| s(logit[i as usize]) / total).collect();
        assert_close(&format!("{p:?} weights"), &weights, &w, 1e-6);
    }
}

#[test]
fn renormalising_all_zero_scores_gives_zero_weights() {
    let Some(be) = backend() else { return };
    // sigmoid(-1000) = 0 in f32: the sum is 0, the denominator max(0, 1e-20), weights 0
    // (they were 0 / 0 = NaN). Ties: the lowest ids, in order.
    let (logits, _) = float_tensor(&*be, &[2, 6], &[-1000.0; 12], DType::F32);
    let p = RouteParams {
        score_func: ScoreFunc::Sigmoid,
        top_k: 3,
        renormalize: true,
        routed_scaling_factor: 1e30,
        ..RouteParams::deepseek_v2_lite()
    };
    let out = ops::moe_route(&*be, &logits, None, &p).unwrap();
    assert_eq!(read_i32(&*be, &out.topk_ids), vec![0, 1, 2, 0, 1, 2]);
    assert_eq!(read_f32(&*be, &out.topk_weights), vec![0.0; 6]);
}
